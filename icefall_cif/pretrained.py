"""`pretrained.py`: transcribe sound files with a `pretrained.pt` (written by export.py).

    ./zipformer_cif/pretrained.py --checkpoint zipformer_cif/exp/pretrained.pt \
      --method greedy_search --timestamps 1 a.flac b.wav

Any format soundfile reads (WAV, FLAC, OGG, MP3, ...) at any sample rate: the audio is mixed to
mono and resampled to 16 kHz, then gets the 80-dim fbank of the recipes (Lhotse's, as
`decode.py --on-the-fly-feats 1` computes it). Every `--method` of decode.py that needs no LM
applies. Each file's transcript is printed (and with `--output-file F` written as
`<path>\\t<transcript>` lines); `--timestamps 1` (greedy_search) adds each token's time in
seconds, from the frame its CIF vector fired at. A file that cannot be read, holds no audio or is
longer than `--max-utterance-duration` is reported by name on stderr, the other files are still
decoded, and the exit status is 1.
"""
import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from icefall_cif.checkpoint import load_safely
from icefall_cif.config import config_from_dict
from icefall_cif.corpora.audit import SAMPLE_RATE
from icefall_cif.data_prep import get_fbank_extractor
from icefall_cif.decode.greedy import greedy_search
from icefall_cif.decode.loop import add_search_arguments
from icefall_cif.decode.search import decode_batch
from icefall_cif.model_contract import check_model, decoding_methods
from icefall_cif.recipe import Recipe
from icefall_cif.synth.resample import resample
from icefall_cif.tokenizer import Tokenizer, read_tokens_txt
from icefall_cif.utils import AttributeDict, set_num_threads, str2bool

#: Seconds per encoder output frame (25 Hz), the unit of greedy_search's timestamps.
ENCODER_FRAME_SECONDS = 0.04


class AudioError(ValueError):
    """A sound file that cannot be transcribed: unreadable, or without samples."""


def get_parser(description: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="pretrained.pt written by export.py.")
    parser.add_argument("--tokens", type=Path, default=None,
                        help="tokens.txt; optional, the checkpoint has its token table (checked when given).")
    parser.add_argument("--method", type=str, default="greedy_search",
                        help="A decode.py --decoding-method that needs no LM (greedy_search, modified_beam_search, "
                             "beam_search, joint_beam_search, cif_rescoring, ctc_greedy_search, ...).")
    add_search_arguments(parser)
    parser.add_argument("--timestamps", type=str2bool, default=False,
                        help="Also print each token's time in seconds (greedy_search).")
    parser.add_argument("--output-file", type=Path, default=None, help="Write `<path>\\t<transcript>` lines here.")
    add_duration_limit_argument(parser, default=120.0, why="the encoder's memory grows with the square of the length")
    parser.add_argument("--num-threads", type=int, default=1, help="PyTorch intra-op threads; 0 = all cores.")
    parser.add_argument("files", nargs="+", type=Path, help="Sound files to transcribe.")
    return parser


def add_duration_limit_argument(parser: argparse.ArgumentParser, default: float, why: str) -> None:
    parser.add_argument("--max-utterance-duration", type=float, default=default,
                        help=f"Longest file in seconds ({why}); a longer one is reported, not decoded. "
                             f"Default: {default}.")


def load_pretrained(recipe: Recipe, checkpoint: Path, tokens: Optional[Path] = None) -> Tuple[torch.nn.Module, Tokenizer]:
    """The model (eval mode) and decoding tokenizer of a `pretrained.pt`."""
    saved = load_safely(checkpoint)
    missing = [k for k in ("model", "model_config", "token_table") if k not in saved]
    if missing:
        raise ValueError(f"{checkpoint} lacks {missing}: write it with export.py")
    tokenizer = Tokenizer.from_token_table(saved["token_table"])
    if tokens is not None:
        table = read_tokens_txt(tokens)
        if [table[i] for i in range(len(table))] != saved["token_table"]:
            raise ValueError(f"--tokens {tokens} is not the token table {checkpoint} was trained with")
    model = recipe.get_model(config_from_dict(recipe.model_config, saved["model_config"], str(checkpoint)))
    check_model(model)
    model.load_state_dict(saved["model"], strict=True)
    return model.eval(), tokenizer


def read_audio(path: Path, max_seconds: float = float("inf")) -> np.ndarray:
    """(S,) float32 mono samples at 16 kHz of any file soundfile reads, at most `max_seconds` long."""
    import soundfile as sf

    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for bad files
        raise AudioError(f"{path}: cannot read it as audio ({e})") from None
    if samples.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no audio (0 samples)")
    if samples.shape[0] / rate > max_seconds:
        raise AudioError(
            f"{path}: {samples.shape[0] / rate:.1f} s of audio, more than --max-utterance-duration "
            f"{max_seconds:g} s; split it (e.g. `sox IN OUT trim 0 {max_seconds:g} : newfile : restart`) "
            f"or raise the limit if the machine has the memory"
        )
    mono = samples.mean(axis=1)
    return resample(mono, rate, SAMPLE_RATE).astype(np.float32)


def features_of(
    files: Sequence[Path], max_seconds: float = float("inf")
) -> Tuple[List[Path], List[torch.Tensor], List[str]]:
    """(files read, their (T, 80) fbank, an error message per file that could not be read or
    is longer than `max_seconds`)."""
    extractor = get_fbank_extractor()
    ok, feats, errors = [], [], []
    for path in files:
        try:
            samples = read_audio(path, max_seconds)
        except AudioError as e:
            errors.append(str(e))
            continue
        feats.append(torch.from_numpy(extractor.extract(samples[None, :], SAMPLE_RATE)))
        ok.append(path)
    return ok, feats, errors


@torch.no_grad()
def transcribe(
    model: torch.nn.Module, tokenizer: Tokenizer, feats: List[torch.Tensor], params: AttributeDict
) -> List[Tuple[str, Optional[List[Tuple[str, float]]]]]:
    """(transcript, [(token, seconds)] or None) of each (T, 80) feature matrix, in one batch."""
    lens = torch.tensor([f.size(0) for f in feats])
    x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    encoder_out, encoder_out_lens = model.forward_encoder(x, lens)
    if params.timestamps:
        result = greedy_search(model, encoder_out, encoder_out_lens, params.max_sym_per_frame, return_timestamps=True)
        return [
            (tokenizer.decode(hyp), [(tokenizer.id2token[t], f * ENCODER_FRAME_SECONDS) for t, f in zip(hyp, frames)])
            for hyp, frames in zip(result.hyps, result.timestamps)
        ]
    hyps = decode_batch(params.method, model, encoder_out, encoder_out_lens, params)
    return [(tokenizer.decode(hyp), None) for hyp in hyps]


def run(args: argparse.Namespace, recipe: Recipe) -> int:
    """Transcribe `args.files`; return the exit status (1 when some file could not be read)."""
    params = AttributeDict(vars(args))
    set_num_threads(params.num_threads, processes_on_node=1)
    model, tokenizer = load_pretrained(recipe, params.checkpoint, params.tokens)
    methods = [m for m in decoding_methods(model) if not m.endswith("_lm_shallow_fusion")]
    if params.method not in methods:
        raise ValueError(f"--method {params.method} does not apply to this model ({model.head.name}); use one of {methods}")
    if params.timestamps and params.method != "greedy_search":
        raise ValueError("--timestamps 1 needs --method greedy_search (the beam searches keep no token times)")
    files, feats, errors = features_of(params.files, params.max_utterance_duration)
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    results = transcribe(model, tokenizer, feats, params) if feats else []
    lines = []
    for path, (text, times) in zip(files, results):
        print(f"{path}:\n{text}")
        if times is not None:
            print(" ".join(f"{tok}@{sec:.2f}" for tok, sec in times))
        print()
        lines.append(f"{path}\t{text}\n")
    if params.output_file is not None:
        params.output_file.write_text("".join(lines), encoding="utf-8")
    return 1 if errors else 0


def main(recipe: Recipe, description: str = "") -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    try:
        status = run(get_parser(description).parse_args(), recipe)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"pretrained.py: error: {e}")
    sys.exit(status)
