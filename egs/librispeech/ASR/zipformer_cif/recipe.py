"""The LibriSpeech recipe as the shared training and decoding loops see it: the corpus and the
model. This is the only recipe-specific file of zipformer_cif/; the model files are shared."""
from model import ModelConfig, get_model

from icefall_cif.recipe import Recipe

RECIPE = Recipe(corpus_name="librispeech", model_config=ModelConfig, get_model=get_model)
