"""The AISHELL-1 (characters as tokens, CER) recipe as the shared training and decoding loops see it.

This is the only recipe-specific file of zipformer_cif/; the model files are shared.
"""
from model import add_model_arguments, get_model

from icefall_cif.recipe import Recipe

RECIPE = Recipe(
    name="aishell",
    default_lang_dir="data/lang_char",
    test_sets=("test", "dev"),
    add_model_arguments=add_model_arguments,
    get_model=get_model,
)
