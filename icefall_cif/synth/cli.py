"""`python -m icefall_cif.synth CORPUS OUT_DIR [options]`: the synthesizer's command line."""
import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from icefall_cif.corpora import CORPORA
from icefall_cif.synth.config import SPLITS, SynthConfig, SynthSummary
from icefall_cif.synth.espeak import DEFAULT_VOICES
from icefall_cif.synth.synthesize import synthesize

logger = logging.getLogger(__name__)


def _comma_list(value: str) -> Tuple[str, ...]:
    """argparse type of a comma-separated list."""
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def get_parser() -> argparse.ArgumentParser:
    """The options of every registered corpus; their defaults are SynthConfig's."""
    d = SynthConfig()
    parser = argparse.ArgumentParser(
        prog="python -m icefall_cif.synth",
        description="Synthesize a small corpus in the layout of a real one with espeak-ng.",
    )
    parser.add_argument("corpus", choices=sorted(CORPORA), help="which corpus layout to write")
    subdirs = " or ".join(f"{c.synth_layout.subdir}/" for c in CORPORA.values())
    parser.add_argument("out_dir", type=Path, help=f"{subdirs} goes in here")
    size = parser.add_argument_group("size (per split: utterance count if given, else hours)")
    size.add_argument("--hours", type=float, default=d.hours, help="train audio; %(default)s")
    size.add_argument("--dev-hours", type=float, default=d.dev_hours, help="%(default)s")
    size.add_argument("--test-hours", type=float, default=d.test_hours, help="%(default)s")
    for split in SPLITS:
        size.add_argument(f"--num-{split}-utts", type=int, help=f"exact {split} utterance count")
    text = parser.add_argument_group("text")
    text.add_argument(
        "--vocab-size",
        type=int,
        default=d.vocab_size,
        help="the most frequent wordfreq words; %(default)s",
    )
    text.add_argument(
        "--min-words",
        type=int,
        default=d.min_words,
        help="shortest sentence, in words (AISHELL: characters); %(default)s",
    )
    text.add_argument("--max-words", type=int, default=d.max_words, help="%(default)s")
    text.add_argument(
        "--zipf-exponent",
        type=float,
        default=d.zipf_exponent,
        help="word probability ~ frequency**exponent (0: uniform); %(default)s",
    )
    text.add_argument(
        "--bigram-successors",
        type=int,
        default=d.bigram_successors,
        help="K > 0: a random bigram language, each word followed by one of K fixed words, so that "
        "a decoder's label context has something to learn; 0: independent words; %(default)s",
    )
    voice = parser.add_argument_group("voices")
    defaults = ", ".join(
        f"{','.join(DEFAULT_VOICES[c.synth_layout.lang])} ({name})" for name, c in CORPORA.items()
    )
    voice.add_argument(
        "--voices",
        type=_comma_list,
        help=f"comma-separated espeak-ng voices; default: {defaults}",
    )
    voice.add_argument(
        "--variants",
        type=_comma_list,
        default=",".join(d.variants),
        help="comma-separated espeak-ng variants, 'default' for none; %(default)s",
    )
    voice.add_argument(
        "--held-out-voices",
        type=int,
        help="voice/variant pairs reserved for each of dev and test; default: 15%% of them",
    )
    voice.add_argument(
        "--rate-range",
        type=int,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=d.rate_range,
        help="speaking rate per speaker, words/min; %(default)s",
    )
    voice.add_argument(
        "--pitch-range",
        type=int,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=d.pitch_range,
        help="espeak-ng pitch per speaker, 0-99; %(default)s",
    )
    voice.add_argument(
        "--utts-per-speaker", type=int, default=d.utts_per_speaker, help="train; %(default)s"
    )
    voice.add_argument(
        "--eval-utts-per-speaker",
        type=int,
        default=d.eval_utts_per_speaker,
        help="dev and test; %(default)s",
    )
    voice.add_argument(
        "--utts-per-chapter",
        type=int,
        default=d.utts_per_chapter,
        help="LibriSpeech; %(default)s",
    )
    parser.add_argument(
        "--noise-snr-db",
        nargs="+",
        default=[f"{x:g}" for x in d.noise_snr_db],
        metavar="DB",
        help="LOW HIGH: white or pink noise at an SNR drawn in [LOW, HIGH] dB; 'none': clean "
        f"audio; default: {d.noise_snr_db[0]:g} {d.noise_snr_db[1]:g}",
    )
    parser.add_argument("--seed", type=int, default=d.seed, help="%(default)s")
    parser.add_argument("--num-jobs", type=int, help="worker processes; default: all cores")
    parser.add_argument(
        "--force", action="store_true", help="replace a different corpus already in OUT_DIR"
    )
    parser.add_argument("--espeak-ng", default="espeak-ng", help="executable; %(default)s")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    return parser


def _parse_snr(parser: argparse.ArgumentParser, values: List[str]) -> Optional[Tuple[float, float]]:
    """--noise-snr-db's (LOW, HIGH), or None for 'none'; exits with a usage error otherwise."""
    if len(values) == 1 and values[0].lower() == "none":
        return None
    try:
        low, high = (float(v) for v in values)
    except ValueError:
        parser.error(f"--noise-snr-db takes LOW HIGH (dB) or 'none', got {' '.join(values)}")
    return (low, high)


def main(argv: Optional[Sequence[str]] = None) -> SynthSummary:
    """Command-line entry point; see `python -m icefall_cif.synth --help`."""
    parser = get_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s",
    )
    config = SynthConfig(
        hours=args.hours,
        dev_hours=args.dev_hours,
        test_hours=args.test_hours,
        num_train_utts=args.num_train_utts,
        num_dev_utts=args.num_dev_utts,
        num_test_utts=args.num_test_utts,
        vocab_size=args.vocab_size,
        min_words=args.min_words,
        max_words=args.max_words,
        zipf_exponent=args.zipf_exponent,
        bigram_successors=args.bigram_successors,
        seed=args.seed,
        noise_snr_db=_parse_snr(parser, args.noise_snr_db),
        voices=args.voices,
        variants=tuple(args.variants),
        held_out_voices=args.held_out_voices,
        rate_range=tuple(args.rate_range),
        pitch_range=tuple(args.pitch_range),
        utts_per_speaker=args.utts_per_speaker,
        eval_utts_per_speaker=args.eval_utts_per_speaker,
        utts_per_chapter=args.utts_per_chapter,
    )
    try:
        config.validate()
    except ValueError as e:
        parser.error(str(e))
    try:
        return synthesize(
            args.corpus,
            args.out_dir,
            config,
            num_jobs=args.num_jobs,
            force=args.force,
            espeak_bin=args.espeak_ng,
        )
    except (FileExistsError, ValueError, RuntimeError) as e:
        # These carry a message saying what to do; a traceback would bury it.
        logger.debug("traceback", exc_info=True)
        logger.error(str(e))
        sys.exit(1)
