#!/usr/bin/env python3
"""Parameter counts of the encoder configs (Conv2dSubsampling + Zipformer2), ours vs icefall's.

For each config it prints our count and, with ICEFALL_MIRROR set, the count of icefall's own
modules built with the same config. For small/medium/large it also prints the encoder size
implied by the model sizes icefall publishes in egs/librispeech/ASR/RESULTS.md, minus their
heads, computed here from their shapes (500 BPE tokens, decoder_dim = joiner_dim = 512):
  small  22,118,279  zipformer-small CR-CTC model: encoder + CTC head
  medium 65,549,011  zipformer (2023-05-15): encoder + stateless decoder, joiner, simple projections
  large 148,439,574  zipformer-large (2023-05-16): the same heads as medium

  [ICEFALL_MIRROR=/work/.mirror/k2-fsa+icefall/repo] .venv/bin/python bench/count_params.py
"""
import os
import sys
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_zipformer import import_ours, load_icefall  # noqa: E402

VOCAB, DECODER_DIM, JOINER_DIM = 500, 512, 512
PUBLISHED = {"small": (22_118_279, "ctc"), "medium": (65_549_011, "transducer"), "large": (148_439_574, "transducer")}


def head_params(kind: str, enc_dim: int) -> int:
    """Parameters of icefall's heads on an encoder with output dim enc_dim."""
    if kind == "ctc":
        return (enc_dim + 1) * VOCAB
    decoder = VOCAB * DECODER_DIM + DECODER_DIM * 4 * 2  # embedding; grouped conv (groups of 4, context 2)
    joiner = (enc_dim + 1) * JOINER_DIM + (DECODER_DIM + 1) * JOINER_DIM + (JOINER_DIM + 1) * VOCAB
    simple_proj = (enc_dim + 1) * VOCAB + (DECODER_DIM + 1) * VOCAB
    return decoder + joiner + simple_proj


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    mirror = os.environ.get("ICEFALL_MIRROR")
    ice = load_icefall(mirror) if mirror else None
    encoder_configs = import_ours()
    rows = []
    for name in ("tiny", "small", "medium", "large"):
        cfg = encoder_configs.get_encoder_config(name)
        embed, encoder = encoder_configs.build_encoder(cfg)
        ours = count(embed) + count(encoder)
        theirs: Optional[int] = None
        if ice is not None:
            kwargs = {k: v for k, v in cfg.items() if k not in ("encoder_embed_dim", "mask_padding")}
            theirs = count(ice.subsampling.Conv2dSubsampling(80, cfg["encoder_embed_dim"])) + count(
                ice.zipformer.Zipformer2(**kwargs)
            )
        implied = None
        if name in PUBLISHED:
            total, kind = PUBLISHED[name]
            implied = total - head_params(kind, max(cfg["encoder_dim"]))
        rows.append(dict(name=name, ours=ours, embed=count(embed), icefall=theirs, implied=implied))

    def n(v: Optional[int]) -> str:
        return "n/a" if v is None else f"{v:,}"

    print(f"{'config':7} {'ours (embed+Zipformer2)':>24} {'of which embed':>15} {'icefall modules':>16} {'published - heads':>18}")
    for r in rows:
        print(f"{r['name']:7} {n(r['ours']):>24} {n(r['embed']):>15} {n(r['icefall']):>16} {n(r['implied']):>18}")
    same_modules = "n/a" if ice is None else all(r["icefall"] == r["ours"] for r in rows)
    same_published = all(r["implied"] == r["ours"] for r in rows if r["implied"] is not None)
    sizes = ", ".join(f"{r['name']} {r['ours'] / 1e6:.2f} M" for r in rows)
    print(f"encoder params: {sizes}; equal to icefall's modules: {same_modules}; "
          f"equal to published minus heads: {same_published}")


if __name__ == "__main__":
    main()
