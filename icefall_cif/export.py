"""`export.py`: the averaged model of a training run as one self-contained `pretrained.pt`.

    ./zipformer_cif/export.py --exp-dir zipformer_cif/exp --epoch 30 --avg 9 --use-averaged-model 1 \
      --tokens data/lang_bpe_500/tokens.txt

`pretrained.pt` holds plain data only (it opens with `torch.load(..., weights_only=True)`):
`model` (the averaged weights), `model_config` (the architecture, as the training checkpoints
store it) and `token_table` (the symbols in id order). Nothing for training: no optimizer,
scheduler, sampler or generator states, and no training-only modules (the distillation
projections: :func:`inference_model`). pretrained.py and decode-style tools rebuild the model
from it alone.
"""
import argparse
import logging
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from torch import nn

from icefall_cif.checkpoint import atomic_save
from icefall_cif.config import config_to_dict, inference_config
from icefall_cif.decode.loop import (
    add_model_selection_arguments,
    load_weights,
    model_config_for_decoding,
    select_model_weights,
)
from icefall_cif.distill import TRAINING_ONLY_PREFIX
from icefall_cif.model_contract import check_model
from icefall_cif.recipe import Recipe
from icefall_cif.tokenizer import Tokenizer, check_token_table, read_tokens_txt, token_table
from icefall_cif.utils import AttributeDict


def get_parser(recipe: Recipe, description: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_selection_arguments(parser)
    parser.add_argument("--tokens", type=Path, default=Path(recipe.default_lang_dir) / "tokens.txt",
                        help="The tokens.txt the model was trained with (checked against the checkpoint).")
    parser.add_argument("--output", type=Path, default=None, help="Where to write; default <exp-dir>/pretrained.pt.")
    return parser


def inference_model(
    recipe: Recipe, config: Any, state: Dict[str, torch.Tensor], params: AttributeDict
) -> Tuple[nn.Module, Any]:
    """The model of `config` without its training-only modules, with the weights of `state`.

    The config's training-only fields are reset (:func:`icefall_cif.config.inference_config`) and
    the weights under `distill.` dropped; every other weight must fit exactly.

    Returns:
      (model, the config it was built from).
    """
    config = inference_config(config)
    model = recipe.get_model(config)
    check_model(model)
    load_weights(model, {k: v for k, v in state.items() if not k.startswith(TRAINING_ONLY_PREFIX)}, params)
    return model, config


def export(args: argparse.Namespace, recipe: Recipe) -> Path:
    """Average the selected checkpoints and write `pretrained.pt`; return its path."""
    params = AttributeDict(vars(args))
    if not params.tokens.is_file():
        raise FileNotFoundError(f"--tokens {params.tokens}: no such file (prepare.sh stage 3 writes it)")
    tokenizer = Tokenizer(read_tokens_txt(params.tokens))
    state, suffix, trained = select_model_weights(params)
    check_token_table(trained, tokenizer, f"The model in {params.exp_dir}",
                      "pass the --tokens it was trained with")
    config = model_config_for_decoding(recipe, params, trained, tokenizer)
    model, config = inference_model(recipe, config, state, params)
    output = params.output or params.exp_dir / "pretrained.pt"
    atomic_save(
        {"model": model.state_dict(), "model_config": config_to_dict(config), "token_table": token_table(tokenizer)},
        output,
    )
    num_params = sum(p.numel() for p in model.parameters())
    logging.info(f"Wrote {output}: {suffix}, {num_params} parameters, decoder type {model.head.name}")
    return output


def main(recipe: Recipe, description: str = "") -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    export(get_parser(recipe, description).parse_args(), recipe)
