"""Synthetic speech corpora in the exact layouts of real ones (espeak-ng voices).

The recipes' data stages (Lhotse manifests, fbank, tokens, ...) run unchanged on these trees, so
a demo or a test exercises the real code path without downloading 60 GB. Each registered corpus
(:mod:`icefall_cif.corpora`) brings its layout:

* LibriSpeech: ``OUT_DIR/LibriSpeech/{train-clean-100,dev-clean,test-clean}/<spk>/<chapter>/
  <spk>-<chapter>-<utt:04d>.flac`` with one ``<spk>-<chapter>.trans.txt`` per chapter and a
  ``SPEAKERS.TXT``; pass ``OUT_DIR/LibriSpeech`` to ``lhotse.recipes.prepare_librispeech``.
* AISHELL-1: ``OUT_DIR/data_aishell/wav/{train,dev,test}/<spk>/BAC009<spk>W<nnnn>.wav`` and
  ``OUT_DIR/data_aishell/transcript/aishell_transcript_v0.8.txt``; pass ``OUT_DIR`` to
  ``lhotse.recipes.prepare_aishell``.

Audio is 16 kHz mono 16-bit. A *speaker* is a fixed espeak-ng voice + variant + rate + pitch.
dev and test hold out both sentences (a sentence's hash decides which split may use it, so no
split ever repeats another's sentence) and voices (the voice/variant pairs are partitioned
between train, dev and test), so their WER measures generalisation. Every random choice is
drawn from a generator seeded by (seed, what, split, index), which makes the corpus identical
for a seed whatever the number of worker processes.

The modules, one job each: `espeak` (the voices), `wav` and `resample` (audio), `text`
(sentences), `render` (one utterance), `planner` (speakers and utterances of each split),
`executor` (worker processes), `markers` (what a directory holds), `synthesize` (a corpus),
`config` (options and summary), `cli` (the command line).

Command line::

    python -m icefall_cif.synth librispeech download --hours 1
    python -m icefall_cif.synth aishell download --num-train-utts 200 --num-dev-utts 20 \\
        --num-test-utts 20 --noise-snr-db none
"""
from icefall_cif.synth.cli import get_parser, main
from icefall_cif.synth.config import SPLITS, SplitSummary, SynthConfig, SynthSummary
from icefall_cif.synth.espeak import (
    DEFAULT_VOICES,
    ENGLISH_VOICES,
    MANDARIN_VOICES,
    VARIANTS,
    espeak_variants,
    espeak_version,
    espeak_voices,
    find_espeak,
    run_espeak,
    validate_voices,
)
from icefall_cif.synth.executor import default_num_jobs
from icefall_cif.synth.markers import MARKER_NAME
from icefall_cif.synth.planner import Planner, Speaker, partition_voices
from icefall_cif.synth.render import SAMPLE_RATE, render_utterance
from icefall_cif.synth.resample import PolyphaseResampler, resample
from icefall_cif.synth.synthesize import synthesize, synthesize_aishell, synthesize_librispeech
from icefall_cif.synth.text import BigramChain, SentenceSampler, sentence_split
from icefall_cif.synth.wav import to_pcm16

__all__ = [
    "DEFAULT_VOICES",
    "ENGLISH_VOICES",
    "MANDARIN_VOICES",
    "MARKER_NAME",
    "SAMPLE_RATE",
    "SPLITS",
    "VARIANTS",
    "Planner",
    "PolyphaseResampler",
    "BigramChain",
    "SentenceSampler",
    "Speaker",
    "SplitSummary",
    "SynthConfig",
    "SynthSummary",
    "default_num_jobs",
    "espeak_variants",
    "espeak_version",
    "espeak_voices",
    "find_espeak",
    "get_parser",
    "main",
    "partition_voices",
    "render_utterance",
    "resample",
    "run_espeak",
    "sentence_split",
    "synthesize",
    "synthesize_aishell",
    "synthesize_librispeech",
    "to_pcm16",
    "validate_voices",
]
