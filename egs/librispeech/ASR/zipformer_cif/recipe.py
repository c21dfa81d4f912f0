"""The LibriSpeech (BPE tokens, WER) recipe as the shared training and decoding loops see it.

This is the only recipe-specific file of zipformer_cif/; the model files are shared.
"""
from model import add_model_arguments, get_model

from icefall_cif.recipe import Recipe

RECIPE = Recipe(
    name="librispeech",
    default_lang_dir="data/lang_bpe_500",
    test_sets=("test-clean", "dev-clean"),
    add_model_arguments=add_model_arguments,
    get_model=get_model,
)
