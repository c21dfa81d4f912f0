"""What distinguishes one recipe from another, for the shared training and decoding loops."""
from dataclasses import dataclass
from typing import Any, Callable, Tuple, Type

from torch import nn

from icefall_cif.corpora import Corpus, get_corpus


@dataclass(frozen=True)
class Recipe:
    """A recipe as the shared loops see it: a corpus and a model.

    Attributes:
      corpus_name: the corpus in `icefall_cif.corpora` (its parts, test sets and token type).
      model_config: the dataclass of the model architecture; its fields are the model options
        of train.py, and the checkpoints save it so that decode.py rebuilds the model from it.
      get_model: builds the model (an `icefall_cif.model_contract.CifModel`) from a
        `model_config` instance.
    """

    corpus_name: str
    model_config: Type[Any]
    get_model: Callable[[Any], nn.Module]

    @property
    def corpus(self) -> Corpus:
        return get_corpus(self.corpus_name)

    @property
    def name(self) -> str:
        """Prefix of the cut files (`data/fbank/<name>_cuts_<part>.jsonl.gz`)."""
        return self.corpus.name

    @property
    def default_lang_dir(self) -> str:
        return self.corpus.default_lang_dir

    @property
    def test_sets(self) -> Tuple[str, ...]:
        """Corpus parts decode.py scores, e.g. ("test-clean", "dev-clean")."""
        return tuple(self.corpus.test_sets)
