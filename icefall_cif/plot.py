"""Pictures of what CIF does: weights over time, where it fires, and the tokens decoded there.

Token labels need a font with their glyphs: Chinese characters (AISHELL) are drawn with the first
installed CJK font of :data:`CJK_FONTS` (e.g. `apt-get install fonts-noto-cjk`); without one, tokens
the fonts cannot draw are labelled with their ids instead of empty boxes.
"""
import functools
import logging
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

import torch
from torch import nn

from icefall_cif.decode.greedy import greedy_search
from icefall_cif.tokenizer import Tokenizer

CJK_FONTS = (
    "Noto Sans CJK SC", "Noto Sans CJK JP", "Source Han Sans SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
    "AR PL UMing CN", "SimHei", "Microsoft YaHei",
)


@functools.lru_cache(maxsize=1)
def _fonts() -> Tuple[List[str], Callable[[str], bool]]:
    """The font families to draw with (DejaVu Sans, then installed CJK fonts) and a test of
    whether they can draw every character of a string."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    installed = {f.name for f in font_manager.fontManager.ttflist}
    if not installed.intersection(CJK_FONTS):
        # matplotlib's font cache predates a font installed after its first run (`make` installs
        # one): register the system's font files it has not seen.
        known = {f.fname for f in font_manager.fontManager.ttflist}
        for path in font_manager.findSystemFonts():
            if path not in known:
                try:
                    font_manager.fontManager.addfont(path)
                except (OSError, RuntimeError, ValueError):
                    continue
        installed = {f.name for f in font_manager.fontManager.ttflist}
    families = ["DejaVu Sans"] + [name for name in CJK_FONTS if name in installed]
    faces = [FT2Font(font_manager.findfont(font_manager.FontProperties(family=name))) for name in families]

    def drawable(text: str) -> bool:
        return all(ch.isspace() or any(face.get_char_index(ord(ch)) for face in faces) for ch in text)

    return families, drawable


def plot_cif_weights(
    alpha: Sequence[float],
    frame_shift: float,
    fire_frames: Sequence[int],
    tokens: Sequence[str],
    token_frames: Sequence[int],
    title: str,
    filename: Path,
) -> None:
    """One PNG: CIF weights alpha_t as bars, their running sum, fire positions, decoded tokens.

    Args:
      alpha: (T,) weights of one utterance at the CIF frame rate.
      frame_shift: seconds per CIF frame.
      fire_frames: (U,) CIF frame at which each integrated vector fired.
      tokens: decoded tokens; `token_frames` gives the CIF frame of each.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families, _ = _fonts()

    times = [t * frame_shift for t in range(len(alpha))]
    cumulative, acc = [], 0.0
    for a in alpha:
        acc += a
        cumulative.append(acc)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.25 * len(alpha)), 3.6))
    ax.bar(times, alpha, width=frame_shift * 0.8, color="#4c72b0", label="CIF weight $\\alpha_t$")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("weight")
    ax.set_ylim(0, 1.05)
    ax2 = ax.twinx()
    ax2.plot(times, cumulative, color="#dd8452", label="$\\sum \\alpha$ (tokens so far)")
    ax2.set_ylabel("accumulated weight")
    for f in fire_frames:
        ax.axvline(f * frame_shift, color="#55a868", linestyle="--", linewidth=0.8)
    for tok, f in zip(tokens, token_frames):
        ax.text(f * frame_shift, 1.0, tok, rotation=60, fontsize=8, ha="left", va="bottom", family=families)
    ax.set_title(title, fontsize=9, pad=28, family=families)
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left", fontsize=7)
    fig.tight_layout()
    filename.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(filename, dpi=110)
    plt.close(fig)


@torch.no_grad()
def plot_cif_batch(
    model: nn.Module,
    tokenizer: Tokenizer,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    cut_ids: List[str],
    out_dir: Path,
    max_plots: int,
) -> List[Path]:
    """Plot up to `max_plots` utterances of a batch; return the PNG paths.

    Args:
      encoder_out: (N, T', C) from `model.forward_encoder`; encoder_out_lens: (N,).
    """
    cif_out = model.forward_cif(encoder_out, encoder_out_lens)
    result = greedy_search(model, encoder_out, encoder_out_lens, return_timestamps=True)
    factor = model.cif_downsample_factor
    # Zipformer's output runs at 25 Hz; CIF integrates over frames `factor` times longer.
    frame_shift = 0.04 * factor
    cif_frames = ((encoder_out_lens + factor - 1) // factor).tolist()
    _, drawable = _fonts()
    written = []
    undrawable = False
    for i in range(min(max_plots, len(cut_ids))):
        alpha = cif_out.alpha[i, : cif_frames[i]].float().tolist()
        fires = [int(f) for f in cif_out.fire_frames[i, : int(cif_out.cif_lens[i])].tolist()]
        hyp = result.hyps[i]
        tokens = [tokenizer.id2token[t] if drawable(tokenizer.id2token[t]) else f"#{t}" for t in hyp]
        text = tokenizer.decode(hyp)
        if not drawable(text):
            undrawable = True
            text = " ".join(tokens)
        token_frames = [ts // factor for ts in result.timestamps[i]]
        filename = out_dir / f"{cut_ids[i].replace('/', '_')}.png"
        plot_cif_weights(alpha, frame_shift, fires, tokens, token_frames, f"{cut_ids[i]}: {text}", filename)
        written.append(filename)
    if undrawable:
        logging.warning("No installed font draws some of the tokens; they are labelled #<token id> in the plots. "
                        f"Install a CJK font (one of {', '.join(CJK_FONTS[:2])}: apt-get install fonts-noto-cjk)")
    if written:
        logging.info(f"Wrote {len(written)} CIF plots to {out_dir}")
    return written
