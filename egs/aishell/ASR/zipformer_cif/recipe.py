"""The AISHELL-1 recipe (characters, CER) as the shared loops see it: the LibriSpeech recipe's
model files on the AISHELL corpus."""
from model import ModelConfig, get_model

from icefall_cif.recipe import Recipe

RECIPE = Recipe(corpus_name="aishell", model_config=ModelConfig, get_model=get_model)
