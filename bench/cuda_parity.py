#!/usr/bin/env python3
"""CUDA against CPU for the encoder, CIF and the RNN-T losses; mixed precision on the encoder.

Run on a machine with a GPU, from the repository root (the test suite runs on CPU only):

  python bench/cuda_parity.py            # DEVICE=cpu runs the same code on the CPU, as a smoke test

Prints max |cuda - cpu| for each check; fp32 differences of ~1e-5 in the encoder are kernel
rounding, CIF and the losses are float64 and should agree to ~1e-12.
"""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "egs" / "librispeech" / "ASR" / "zipformer_cif"))
from encoder_configs import build_encoder  # noqa: E402

from icefall_cif import rnnt_loss  # noqa: E402
from icefall_cif.cif import integrate_and_fire  # noqa: E402
from icefall_cif.utils import make_pad_mask  # noqa: E402


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double().cpu() - b.double().cpu()).abs().max())


def check_encoder(config: str, device: torch.device) -> None:
    """Eval forward on both devices, autocast in fp16/bf16, and an fp16 training backward."""
    embed, encoder = build_encoder(config)
    embed.eval()
    encoder.eval()
    x, x_lens = torch.randn(3, 400, 80), torch.tensor([400, 300, 157])

    def run(x, x_lens):
        h, h_lens = embed(x, x_lens)
        out, _ = encoder(h.permute(1, 0, 2), h_lens, make_pad_mask(h_lens, h.size(1)))
        return out

    with torch.no_grad():
        ref = run(x, x_lens)
        embed.to(device)
        encoder.to(device)
        out = run(x.to(device), x_lens.to(device))
        print(f"zipformer {config}: fp32 {device.type} vs cpu max_abs_diff={max_diff(out, ref):.3e}")
        for dtype in (torch.float16, torch.bfloat16):
            with torch.autocast(device.type, dtype=dtype):
                mixed = run(x.to(device), x_lens.to(device))
            rel = float((mixed.float() - out).norm() / out.norm())
            print(f"  autocast {dtype}: finite={bool(torch.isfinite(mixed).all())} rel_err={rel:.3e}")
    embed.train()
    encoder.train()
    with torch.autocast(device.type, dtype=torch.float16):
        out = run(x.to(device), x_lens.to(device))
    out.float().pow(2).mean().backward()
    grads = [p.grad for p in encoder.parameters() if p.grad is not None]
    finite = all(bool(torch.isfinite(g).all()) for g in grads)
    print(f"  fp16 training backward: {len(grads)} gradients, all finite={finite}")


def check_cif(device: torch.device) -> None:
    N, T, C = 4, 300, 64
    h = torch.randn(N, T, C, dtype=torch.float64)
    lens = torch.tensor([300, 250, 100, 37])
    alpha = (torch.rand(N, T, dtype=torch.float64) * 0.6).masked_fill(make_pad_mask(lens, T), 0.0)
    for tail in (None, 0.5):
        ref = integrate_and_fire(h, alpha, lens, 0.99, tail)
        out = integrate_and_fire(h.to(device), alpha.to(device), lens.to(device), 0.99, tail)
        same_lens = bool((ref.cif_lens == out.cif_lens.cpu()).all())
        print(f"cif tail={tail}: max_abs_diff={max_diff(out.cif, ref.cif):.3e} same lengths={same_lens}")
    with torch.autocast(device.type, dtype=torch.float16):
        out = integrate_and_fire(h.float().to(device), alpha.float().to(device), lens.to(device), 0.99, 0.5)
    print(f"cif under fp16 autocast: same lengths={bool((ref.cif_lens == out.cif_lens.cpu()).all())}")


def check_rnnt(device: torch.device) -> None:
    B, T, S, V = 3, 40, 12, 30
    lm, am = torch.randn(B, S + 1, V), torch.randn(B, T, V)
    symbols = torch.randint(1, V, (B, S))
    boundary = torch.tensor([[0, 0, S, T], [0, 0, 9, 31], [0, 0, 4, 20]])
    ref = rnnt_loss.rnnt_loss_simple(lm, am, symbols, 0, boundary=boundary, reduction="none")
    out = rnnt_loss.rnnt_loss_simple(
        lm.to(device), am.to(device), symbols.to(device), 0, boundary=boundary.to(device), reduction="none"
    )
    print(f"rnnt_loss_simple: max_abs_diff={max_diff(out, ref):.3e}")
    logits = torch.randn(B, T, S + 1, V)
    ref = rnnt_loss.rnnt_loss(logits, symbols, 0, boundary=boundary, reduction="none")
    out = rnnt_loss.rnnt_loss(logits.to(device), symbols.to(device), 0, boundary=boundary.to(device), reduction="none")
    print(f"rnnt_loss: max_abs_diff={max_diff(out, ref):.3e}")


def main() -> None:
    device = torch.device(os.environ.get("DEVICE", "cuda"))
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {name}")
    for config in ("tiny", "small"):
        check_encoder(config, device)
    check_cif(device)
    check_rnnt(device)


if __name__ == "__main__":
    main()
