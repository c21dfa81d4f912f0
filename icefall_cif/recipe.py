"""What distinguishes one recipe from another, for the shared training and decoding loops."""
import argparse
from dataclasses import dataclass
from typing import Callable, Tuple

from torch import nn

from icefall_cif.utils import AttributeDict


@dataclass(frozen=True)
class Recipe:
    """A recipe as the shared loops see it.

    Attributes:
      name: corpus name as in the cut files (`data/fbank/<name>_cuts_<part>.jsonl.gz`).
      default_lang_dir: token files (`data/lang_bpe_500`, `data/lang_char`).
      test_sets: corpus parts decode.py scores, e.g. ("test-clean", "dev-clean").
      add_model_arguments: adds the model's options to a parser.
      get_model: builds the model from params (all options plus `vocab_size`, `blank_id`,
        `feature_dim`).
    """

    name: str
    default_lang_dir: str
    test_sets: Tuple[str, ...]
    add_model_arguments: Callable[[argparse.ArgumentParser], None]
    get_model: Callable[[AttributeDict], nn.Module]
