"""Tests for icefall_cif.synth and icefall_cif.wordlists: synthetic corpora in real layouts."""

import json
import re
import shutil
import subprocess
from itertools import islice
from pathlib import Path
from typing import Dict, List, Set, Tuple

import numpy as np
import pytest
import soundfile as sf
from wordfreq import get_frequency_dict

from icefall_cif import synth
from icefall_cif.corpora.librispeech import LibriSpeechLayout
from icefall_cif.synth.render import EDGE_SILENCE_S
from icefall_cif.wordlists import chinese_words, english_words, zipf_weights

requires_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt-get install espeak-ng)",
)

# Small corpora: 4 utterances per speaker and 3 per chapter give several speakers per split
# and two chapters per train speaker.
SMALL = dict(
    num_train_utts=16,
    num_dev_utts=6,
    num_test_utts=6,
    utts_per_speaker=4,
    eval_utts_per_speaker=3,
    utts_per_chapter=3,
    progress=False,
)
# Both worker counts are exercised; re-synthesizing AISHELL with the other one checks that
# the corpus does not depend on it.
JOBS = {"librispeech": 2, "aishell": 1}
LIBRI_PARTS = {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}
CJK = re.compile(r"[\u4e00-\u9fff]+")


@pytest.fixture(scope="module")
def libri(tmp_path_factory) -> Tuple[Path, synth.SynthSummary]:
    out = tmp_path_factory.mktemp("libri")
    return out, synth.synthesize_librispeech(out, num_jobs=JOBS["librispeech"], **SMALL)


@pytest.fixture(scope="module")
def aishell(tmp_path_factory) -> Tuple[Path, synth.SynthSummary]:
    out = tmp_path_factory.mktemp("aishell")
    return out, synth.synthesize_aishell(out, num_jobs=JOBS["aishell"], **SMALL)


def read_libri_transcripts(corpus_dir: Path, part: str) -> Dict[str, str]:
    out = {}
    for trans in (corpus_dir / part).rglob("*.trans.txt"):
        for line in trans.read_text(encoding="utf-8").splitlines():
            utt_id, text = line.split(" ", 1)
            out[utt_id] = text
    return out


def read_aishell_transcripts(out_dir: Path) -> Dict[str, str]:
    path = out_dir / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt"
    return dict(line.split(" ", 1) for line in path.read_text(encoding="utf-8").splitlines())


def marker_speakers(corpus_dir: Path) -> Dict[str, Dict]:
    return json.loads((corpus_dir / synth.MARKER_NAME).read_text(encoding="utf-8"))["summary"][
        "speakers"
    ]


# --------------------------------------------------------------------------- word lists


def test_english_words_are_ranked_speakable_words():
    words = english_words(1000)
    assert len(words) == len(set(words)) == 1000
    assert all(re.fullmatch(r"[a-z]+('[a-z]+)*", w) for w in words)
    assert all(len(w) > 1 or w in ("a", "i") for w in words)
    assert "the" in words[:3] and "don't" in words
    freqs = get_frequency_dict("en")
    ranks = [freqs[w] for w in words]
    assert all(a >= b for a, b in zip(ranks, ranks[1:])), "not in frequency order"


def test_chinese_words_are_ranked_cjk_words():
    words = chinese_words(1000)
    assert len(words) == len(set(words)) == 1000
    assert all(CJK.fullmatch(w) for w in words)
    freqs = get_frequency_dict("zh")
    ranks = [freqs[w] for w in words]
    assert all(a >= b for a, b in zip(ranks, ranks[1:]))


def test_vocab_size_out_of_range_is_explained():
    with pytest.raises(ValueError, match="--vocab-size between 1 and"):
        english_words(10**7)


def test_zipf_weights_follow_the_frequency_formula():
    words = english_words(50)
    table = get_frequency_dict("en")
    for exponent in (1.0, 0.5):
        expected = np.array([table[w] ** exponent for w in words])
        np.testing.assert_allclose(
            zipf_weights(words, "en", exponent), expected / expected.sum(), rtol=1e-12
        )
    np.testing.assert_allclose(zipf_weights(words, "en", 0.0), np.full(50, 1 / 50))


@requires_espeak
def test_every_chinese_character_is_read_as_mandarin():
    chars = sorted(set("".join(chinese_words(1000))))
    # One clause per character; espeak-ng prints one phoneme line per clause and marks a
    # fallback to another language's rules with "(en)".
    out = subprocess.run(
        ["espeak-ng", "-v", synth.MANDARIN_VOICES[0], "-q", "-x", "-b", "1", "--stdin"],
        input="。".join(chars).encode("utf-8"),
        capture_output=True,
        check=True,
    ).stdout.decode("utf-8")
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == len(chars)
    assert not [c for c, line in zip(chars, lines) if "(" in line]


# --------------------------------------------------------------------------- text sampling


def test_sentence_sampler_lengths_and_word_distribution():
    words = english_words(20)
    weights = zipf_weights(words, "en")
    sampler = synth.SentenceSampler(words, weights, 5, 20, count_chars=False)
    rng = np.random.default_rng(0)
    sentences = [sampler(rng) for _ in range(3000)]
    lengths = np.array([len(s) for s in sentences])
    assert lengths.min() == 5 and lengths.max() == 20
    counts = np.array([sum(s.count(w) for s in sentences) for w in words], dtype=float)
    n = counts.sum()
    # Multinomial counts: within 5 standard deviations of n * p for every word.
    sigma = np.sqrt(n * weights * (1 - weights))
    assert np.all(np.abs(counts - n * weights) < 5 * sigma)


def test_sentence_sampler_counts_characters_for_chinese():
    words = chinese_words(300)
    sampler = synth.SentenceSampler(words, zipf_weights(words, "zh"), 5, 20, count_chars=True)
    rng = np.random.default_rng(1)
    lengths = {len("".join(sampler(rng))) for _ in range(500)}
    assert lengths == set(range(5, 21))
    assert any(len(w) > 1 for w in words)


def test_bigram_chain_sentences_follow_the_successor_table():
    words = english_words(50)
    weights = zipf_weights(words, "en")
    chain = synth.BigramChain(weights, 3, np.random.default_rng(7))
    assert chain.successors.shape == (50, 3)
    assert all(len(set(row)) == 3 for row in chain.successors.tolist())
    np.testing.assert_allclose(chain.probs, np.array([1, 1 / 2, 1 / 3]) / (11 / 6))
    sampler = synth.SentenceSampler(words, weights, 5, 20, count_chars=False, chain=chain)
    rng = np.random.default_rng(0)
    index = {w: i for i, w in enumerate(words)}
    pairs = [(index[a], index[b]) for s in (sampler(rng) for _ in range(2000)) for a, b in zip(s, s[1:])]
    assert all(b in chain.successors[a] for a, b in pairs)
    # The j-th successor is chosen with probability ~ 1 / (j + 1): within 5 sigma over all pairs.
    rank = np.array([list(chain.successors[a]).index(b) for a, b in pairs])
    counts = np.bincount(rank, minlength=3)
    sigma = np.sqrt(len(pairs) * chain.probs * (1 - chain.probs))
    assert np.all(np.abs(counts - len(pairs) * chain.probs) < 5 * sigma)
    # The same seed draws the same language.
    again = synth.BigramChain(weights, 3, np.random.default_rng(7))
    assert np.array_equal(again.successors, chain.successors)
    with pytest.raises(ValueError, match=r"--bigram-successors must lie in \[1, 50\]"):
        synth.BigramChain(weights, 51, np.random.default_rng(0))


def test_bigram_chain_keeps_chinese_lengths_exact():
    words = chinese_words(300)
    weights = zipf_weights(words, "zh")
    chain = synth.BigramChain(weights, 4, np.random.default_rng(2))
    sampler = synth.SentenceSampler(words, weights, 5, 20, count_chars=True, chain=chain)
    rng = np.random.default_rng(3)
    assert {len("".join(sampler(rng))) for _ in range(500)} == set(range(5, 21))


def test_the_planner_uses_one_bigram_language_for_every_split(tmp_path):
    config = synth.SynthConfig(vocab_size=40, min_words=3, max_words=6, bigram_successors=2)
    layout = LibriSpeechLayout(tmp_path, config)
    planner = synth.Planner(layout, config, ["en-us", "en-gb"], "espeak-ng")
    chain = planner.sampler.chain
    index = {w: i for i, w in enumerate(planner.sampler.words)}
    for split in ("train", "dev", "test"):
        stream = planner.sentences(split)
        for _ in range(20):
            s = next(stream)
            assert all(index[b] in chain.successors[index[a]] for a, b in zip(s, s[1:]))
    with pytest.raises(ValueError, match="--bigram-successors must lie in"):
        synth.SynthConfig(vocab_size=40, bigram_successors=41).validate()


def test_held_out_sentences_never_reach_train_even_with_a_tiny_vocabulary(tmp_path):
    # 6 words, 2-3 per sentence: 252 sentences in all, so train and dev would collide often
    # without the hash partition.
    config = synth.SynthConfig(vocab_size=6, min_words=2, max_words=3)
    layout = LibriSpeechLayout(tmp_path, config)
    planner = synth.Planner(layout, config, ["en-us", "en-gb"], "espeak-ng")
    got = {}
    for split, n in (("train", 120), ("dev", 5), ("test", 5)):
        stream = planner.sentences(split)
        got[split] = [" ".join(next(stream)) for _ in range(n)]
        assert len(set(got[split])) == n, f"{split} repeats a sentence"
        assert all(synth.sentence_split(s) == split for s in got[split])
    assert not set(got["train"]) & set(got["dev"])
    assert not set(got["train"]) & set(got["test"])
    assert not set(got["dev"]) & set(got["test"])


def test_running_out_of_sentences_is_explained(tmp_path):
    config = synth.SynthConfig(vocab_size=2, min_words=1, max_words=1)
    planner = synth.Planner(
        LibriSpeechLayout(tmp_path, config), config, ["en-us", "en-gb"], "espeak-ng"
    )
    with pytest.raises(ValueError, match="raise --vocab-size"):
        list(planner.sentences("train"))


def test_voice_partition_is_disjoint_and_complete():
    parts = synth.partition_voices(synth.ENGLISH_VOICES, synth.VARIANTS, None, seed=3)
    all_pairs = {(v, var) for v in synth.ENGLISH_VOICES for var in synth.VARIANTS}
    sets = {k: set(v) for k, v in parts.items()}
    assert sets["train"] | sets["dev"] | sets["test"] == all_pairs
    assert (
        not sets["train"] & sets["dev"]
        and not sets["train"] & sets["test"]
        and not sets["dev"] & sets["test"]
    )
    assert len(sets["dev"]) == len(sets["test"]) == round(0.15 * len(all_pairs))
    with pytest.raises(ValueError, match="cannot hold out"):
        synth.partition_voices(["cmn-latn-pinyin"], ["m1", "m2"], 1, seed=0)


# --------------------------------------------------------------------------- audio


def test_resampler_reproduces_band_limited_sines():
    n_in = 22050
    t_in = np.arange(n_in) / 22050
    resampler = synth.PolyphaseResampler(22050, 16000)
    for freq in (440.0, 1000.0, 3000.0):
        y = resampler(np.sin(2 * np.pi * freq * t_in))
        assert len(y) == int(np.ceil(n_in * 16000 / 22050))
        ref = np.sin(2 * np.pi * freq * np.arange(len(y)) / 16000)
        # Away from the edges, where the filter sees the zero padding.
        assert np.max(np.abs(y - ref)[100:-100]) < 1e-4, freq
    # A 9 kHz tone is above the new Nyquist frequency (8 kHz) and must not alias into it.
    y = resampler(np.sin(2 * np.pi * 9000 * t_in))
    assert np.sqrt(np.mean(y[100:-100] ** 2)) < 1e-3
    np.testing.assert_allclose(resampler(np.ones(5000))[100:-100], 1.0, atol=1e-5)


@requires_espeak
def test_render_utterance_level_silence_and_snr():
    args = ("hello there my friend", "en-gb+f2", 160, 50)
    clean = synth.render_utterance(*args, rng=np.random.default_rng(5))
    noisy = synth.render_utterance(*args, rng=np.random.default_rng(5), noise_snr_db=(20.0, 20.0))
    assert len(clean) == len(noisy)
    peak_db = 20 * np.log10(np.max(np.abs(clean)))
    assert -6.0 - 1e-9 <= peak_db <= -1.0 + 1e-9
    lead = int(EDGE_SILENCE_S[0] * synth.SAMPLE_RATE)
    assert not np.any(clean[:lead]) and not np.any(clean[-lead:])
    noise = noisy - clean
    snr = 10 * np.log10(np.mean(clean**2) / np.mean(noise**2))
    assert abs(snr - 20.0) < 1e-6
    assert np.all(
        synth.to_pcm16(np.array([-2.0, -1.0, 0.5, 1.0])) == [-32768, -32768, 16384, 32767]
    )


# --------------------------------------------------------------------------- LibriSpeech tree


@requires_espeak
def test_librispeech_layout_and_audio_format(libri):
    out, summary = libri
    corpus = out / "LibriSpeech"
    assert summary.lhotse_corpus_dir == str(corpus)
    for split, part in LIBRI_PARTS.items():
        flacs = sorted((corpus / part).rglob("*.flac"))
        assert len(flacs) == summary.splits[split].num_utterances == SMALL[f"num_{split}_utts"]
        trans = read_libri_transcripts(corpus, part)
        assert set(trans) == {f.stem for f in flacs}
        for flac in flacs:
            spk, chapter, utt = flac.stem.split("-")
            assert (
                re.fullmatch(r"\d{2,4}", spk)
                and re.fullmatch(r"\d+", chapter)
                and re.fullmatch(r"\d{4}", utt)
            )
            assert flac.parent == corpus / part / spk / chapter
            assert (flac.parent / f"{spk}-{chapter}.trans.txt").is_file()
            info = sf.info(str(flac))
            assert (info.format, info.subtype, info.samplerate, info.channels) == (
                "FLAC",
                "PCM_16",
                16000,
                1,
            )
        seconds = sum(sf.info(str(f)).duration for f in flacs)
        assert abs(seconds - summary.splits[split].seconds) < 1e-2
    chapters_per_speaker = {}
    for flac in (corpus / "train-clean-100").rglob("*.flac"):
        chapters_per_speaker.setdefault(flac.parent.parent.name, set()).add(flac.parent.name)
    assert all(len(c) == 2 for c in chapters_per_speaker.values()), "4 utterances at 3 per chapter"
    listed = {
        line.split("|")[0].strip(): line.split("|")[2].strip()
        for line in (corpus / "SPEAKERS.TXT").read_text().splitlines()
        if not line.startswith(";")
    }
    expected = {f.parent.parent.name: f.parts[-4] for f in corpus.rglob("*.flac")}
    assert listed == expected


@requires_espeak
def test_librispeech_transcripts_are_vocabulary_sentences(libri):
    out, _ = libri
    vocab = {w.upper() for w in english_words(1000)}
    for part in LIBRI_PARTS.values():
        for text in read_libri_transcripts(out / "LibriSpeech", part).values():
            words = text.split(" ")
            assert 5 <= len(words) <= 20
            assert set(words) <= vocab
            assert text == text.upper()


@requires_espeak
def test_librispeech_with_lhotse(libri, tmp_path):
    from lhotse.recipes import prepare_librispeech

    out, summary = libri
    manifests = prepare_librispeech(
        out / "LibriSpeech", dataset_parts=list(LIBRI_PARTS.values()), output_dir=tmp_path
    )
    for split, part in LIBRI_PARTS.items():
        recordings, supervisions = manifests[part]["recordings"], manifests[part]["supervisions"]
        assert len(recordings) == len(supervisions) == summary.splits[split].num_utterances
        assert {r.sampling_rate for r in recordings} == {16000}
        assert abs(sum(r.duration for r in recordings) - summary.splits[split].seconds) < 1e-2
        trans = read_libri_transcripts(out / "LibriSpeech", part)
        assert {s.id: s.text for s in supervisions} == trans
        assert {s.speaker for s in supervisions} == {i.split("-")[0] for i in trans}
        assert (tmp_path / f"librispeech_supervisions_{part}.jsonl.gz").is_file()


# --------------------------------------------------------------------------- AISHELL tree


@requires_espeak
def test_aishell_layout_and_transcripts(aishell):
    out, summary = aishell
    assert summary.lhotse_corpus_dir == str(out)
    trans = read_aishell_transcripts(out)
    vocab = set(chinese_words(1000))
    first_speaker = {"train": 2, "dev": 724, "test": 764}
    all_wavs = []
    for split in synth.SPLITS:
        wavs = sorted((out / "data_aishell" / "wav" / split).rglob("*.wav"))
        all_wavs += wavs
        assert len(wavs) == summary.splits[split].num_utterances == SMALL[f"num_{split}_utts"]
        for wav in wavs:
            m = re.fullmatch(r"BAC009(S\d{4})W\d{4}", wav.stem)
            assert m and wav.parent.name == m.group(1)
            assert int(m.group(1)[1:]) >= first_speaker[split]
            info = sf.info(str(wav))
            assert (info.format, info.subtype, info.samplerate, info.channels) == (
                "WAV",
                "PCM_16",
                16000,
                1,
            )
    assert set(trans) == {w.stem for w in all_wavs}
    for text in trans.values():
        words = text.split(" ")
        assert set(words) <= vocab
        assert 5 <= len("".join(words)) <= 20


@requires_espeak
def test_aishell_with_lhotse(aishell, tmp_path):
    from lhotse.recipes import prepare_aishell

    out, summary = aishell
    manifests = prepare_aishell(out, tmp_path)
    trans = read_aishell_transcripts(out)
    for split in synth.SPLITS:
        supervisions = manifests[split]["supervisions"]
        assert (
            len(manifests[split]["recordings"])
            == len(supervisions)
            == summary.splits[split].num_utterances
        )
        # Lhotse removes the spaces between words.
        assert {s.id: s.text for s in supervisions} == {
            k: v.replace(" ", "") for k, v in trans.items() if k in {s.id for s in supervisions}
        }
        assert (
            abs(
                sum(r.duration for r in manifests[split]["recordings"])
                - summary.splits[split].seconds
            )
            < 1e-2
        )


# --------------------------------------------------------------------------- held-out data


def _sentences_by_split(out: Path, corpus: str) -> Dict[str, Set[str]]:
    if corpus == "librispeech":
        return {
            s: set(read_libri_transcripts(out / "LibriSpeech", p).values())
            for s, p in LIBRI_PARTS.items()
        }
    trans = read_aishell_transcripts(out)
    by_split: Dict[str, Set[str]] = {s: set() for s in synth.SPLITS}
    for split in synth.SPLITS:
        ids = {w.stem for w in (out / "data_aishell" / "wav" / split).rglob("*.wav")}
        by_split[split] = {trans[i].replace(" ", "") for i in ids}
    return by_split


@requires_espeak
@pytest.mark.parametrize("corpus", ["librispeech", "aishell"])
def test_dev_and_test_hold_out_voices_and_sentences(corpus, libri, aishell):
    out, summary = libri if corpus == "librispeech" else aishell
    corpus_dir = out / ("LibriSpeech" if corpus == "librispeech" else "data_aishell")
    voices: Dict[str, Set[Tuple[str, str]]] = {s: set() for s in synth.SPLITS}
    for info in marker_speakers(corpus_dir).values():
        voices[info["split"]].add((info["voice"], info["variant"]))
    assert voices["train"] and voices["dev"] and voices["test"]
    assert not voices["train"] & voices["dev"]
    assert not voices["train"] & voices["test"]
    sentences = _sentences_by_split(out, corpus)
    assert not sentences["train"] & sentences["dev"]
    assert not sentences["train"] & sentences["test"]
    assert sum(len(s) for s in sentences.values()) == sum(
        s.num_utterances for s in summary.splits.values()
    )


# --------------------------------------------------------------------------- determinism, sizes


def _snapshot(corpus_dir: Path) -> Dict[str, object]:
    """Every file under corpus_dir: transcripts as bytes, audio as samples."""
    out: Dict[str, object] = {}
    for path in sorted(corpus_dir.rglob("*")):
        if path.suffix in (".flac", ".wav"):
            out[str(path.relative_to(corpus_dir))] = sf.read(str(path), dtype="int16")[0].tobytes()
        elif path.is_file() and path.name != synth.MARKER_NAME:
            out[str(path.relative_to(corpus_dir))] = path.read_bytes()
    return out


@requires_espeak
def test_same_seed_same_corpus_whatever_the_number_of_jobs(aishell, tmp_path):
    out, _ = aishell
    synth.synthesize_aishell(tmp_path, num_jobs=3 - JOBS["aishell"], **SMALL)
    first, again = _snapshot(out / "data_aishell"), _snapshot(tmp_path / "data_aishell")
    assert len(first) > sum(SMALL[f"num_{s}_utts"] for s in synth.SPLITS)
    assert first == again


def test_other_seed_other_sentences_and_speakers(tmp_path):
    def plan(seed: int) -> Tuple[List[str], List[Tuple[str, int, int]]]:
        config = synth.SynthConfig(seed=seed)
        planner = synth.Planner(
            LibriSpeechLayout(tmp_path, config), config, synth.ENGLISH_VOICES, "espeak-ng"
        )
        texts = [u.transcript for u in islice(planner.utterances("train"), 10)]
        speakers = [planner.speaker("train", k) for k in range(5)]
        return texts, [(s.espeak_voice, s.rate, s.pitch) for s in speakers]

    texts, speakers = plan(0)
    assert plan(0) == (texts, speakers)
    other_texts, other_speakers = plan(1)
    assert not set(texts) & set(other_texts)
    assert all(a != b for a, b in zip(speakers, other_speakers))


@requires_espeak
def test_hours_target_keeps_the_shortest_prefix(tmp_path):
    target_s = 12.0
    summary = synth.synthesize_aishell(
        tmp_path, hours=target_s / 3600, dev_hours=0.0, test_hours=0.0, num_jobs=2, progress=False
    )
    wav_dir = tmp_path / "data_aishell" / "wav"
    wavs = sorted((wav_dir / "train").rglob("*.wav"))
    durations = {w.stem: sf.info(str(w)).duration for w in wavs}
    assert len(wavs) == summary.splits["train"].num_utterances
    total = sum(durations.values())
    assert total >= target_s
    # The utterances are numbered in order; without the last one the target is not reached.
    last = max(durations)
    assert total - durations[last] < target_s
    assert summary.splits["dev"].num_utterances == 0 and not (wav_dir / "dev").exists()
    # The batch rendered past the target was deleted, with any directory it alone needed.
    assert all(any(d.iterdir()) for d in wav_dir.rglob("*") if d.is_dir())
    assert set(read_aishell_transcripts(tmp_path)) == set(durations)


# --------------------------------------------------------------------------- reruns and errors


TINY = dict(num_train_utts=2, num_dev_utts=1, num_test_utts=1, num_jobs=1, progress=False)


@requires_espeak
def test_rerun_is_free_and_other_corpora_are_protected(tmp_path):
    first = synth.synthesize_librispeech(tmp_path, **TINY)
    marker = tmp_path / "LibriSpeech" / synth.MARKER_NAME
    mtime = marker.stat().st_mtime_ns
    assert synth.synthesize_librispeech(tmp_path, **TINY) == first
    assert marker.stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match=r"differing: seed.*--force"):
        synth.synthesize_librispeech(tmp_path, seed=7, **TINY)
    forced = synth.synthesize_librispeech(tmp_path, seed=7, force=True, **TINY)
    assert forced.splits["train"].num_utterances == 2
    assert json.loads(marker.read_text())["config"]["seed"] == 7

    real = tmp_path / "real"
    (real / "data_aishell" / "wav").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="did not write"):
        synth.synthesize_aishell(real, **TINY)


@requires_espeak
def test_bad_voices_and_options_are_explained(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown espeak-ng voice.*en-klingon"):
        synth.synthesize_librispeech(tmp_path, voices=("en-us", "en-klingon"), **TINY)
    with pytest.raises(ValueError, match=r"Unknown espeak-ng variant.*zz9"):
        synth.synthesize_librispeech(tmp_path, variants=("m1", "zz9"), **TINY)
    with pytest.raises(ValueError, match="min-words"):
        synth.synthesize_librispeech(tmp_path, min_words=9, max_words=3, **TINY)
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng"):
        synth.synthesize_aishell(tmp_path, espeak_bin=str(tmp_path / "no-espeak-ng"), **TINY)
    assert not any(tmp_path.iterdir()), "nothing is written before the options are checked"


@requires_espeak
def test_cli(tmp_path):
    summary = synth.main(
        [
            "librispeech",
            str(tmp_path),
            "--num-train-utts",
            "3",
            "--num-dev-utts",
            "1",
            "--num-test-utts",
            "1",
            "--voices",
            "en-us,en-gb",
            "--noise-snr-db",
            "none",
            "--num-jobs",
            "1",
            "--seed",
            "4",
        ]
    )
    assert [s.num_utterances for s in summary.splits.values()] == [3, 1, 1]
    assert {v["voice"] for v in marker_speakers(tmp_path / "LibriSpeech").values()} <= {
        "en-us",
        "en-gb",
    }
    # Without noise the silence around the speech is digital zero.
    for flac in (tmp_path / "LibriSpeech").rglob("*.flac"):
        samples = sf.read(str(flac), dtype="int16")[0]
        assert samples[0] == 0 and samples[-1] == 0
    with pytest.raises(SystemExit) as exit_info:
        synth.main(["librispeech", str(tmp_path), "--num-train-utts", "3", "--seed", "5"])
    assert exit_info.value.code == 1
    with pytest.raises(SystemExit):
        synth.main(["aishell", str(tmp_path / "x"), "--noise-snr-db", "10"])
    with pytest.raises(SystemExit):
        synth.main(["aishell", str(tmp_path / "x"), "--rate-range", "10", "20"])
