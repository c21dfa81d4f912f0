"""ONNX export (export-onnx.py, icefall_cif/onnx_export.py, cif_dense.py) and its runtimes.

- the dense CIF fires exactly as `integrate_and_fire` (same counts and fire frames, vectors to
  1e-5), in PyTorch and as an onnxruntime graph, for any batch size and length, several fires
  per frame, no fire at all, with and without tail handling;
- the export-only substitutions (cheaper Swoosh with its constants folded into neighbouring
  biases, channels-last Conv-Embed) compute what the model does, never overflow, and leave the
  model unchanged;
- for each decoder type, the ONNX encoder's outputs equal PyTorch's (max abs difference 1e-4 on
  values of order 1) for several batch sizes and lengths, including an utterance with no fire;
- sherpa-onnx's transcripts (transducer and zipformer2_ctc layouts) and onnx_pretrained.py's
  (all three) equal pretrained.py's greedy_search on the tiny corpus' audio;
- the int8 files are written and decode (their transcripts are not asserted).

Models: the tiny cif_ce_ar of recipe_fixtures (2 epochs) and a tiny cif_transducer and cif_ce_nar
trained here for one epoch on the same corpus.
"""
import copy
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import soundfile as sf
import torch

from icefall_cif.cif import integrate_and_fire
from icefall_cif.cif_dense import dense_integrate_and_fire

pytest.register_assert_rewrite("recipe_fixtures")
from recipe_fixtures import (  # noqa: E402
    LIBRI,
    TINY_ENCODER,
    Corpus,
    TrainedModel,
    copy_exp_dir,
    run_script,
    train_in_process,
)

pytest_plugins = ["recipe_fixtures"]

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

#: Max abs difference allowed between the ONNX encoder and PyTorch (values are O(1)).
ENCODER_ATOL = 1e-4
HEAD_OPTIONS = {
    "cif_transducer": ["--decoder-type", "cif_transducer", "--decoder-dim", "32", "--joiner-dim", "32"],
    "cif_ce_nar": ["--decoder-type", "cif_ce_nar", "--ce-decoder-dim", "32", "--ce-decoder-layers", "1",
                   "--ce-decoder-heads", "2"],
}


# ---------------------------------------------------------------------------------------------
# Dense CIF
# ---------------------------------------------------------------------------------------------
def assert_same_fires(dense, reference) -> None:
    assert torch.equal(dense.cif_lens, reference.cif_lens)
    assert torch.equal(dense.fire_frames, reference.fire_frames)
    assert dense.cif.shape == reference.cif.shape
    torch.testing.assert_close(dense.cif, reference.cif, atol=1e-5, rtol=1e-5)


def random_cif_inputs(gen: torch.Generator, N: int, T: int, scale: float):
    h = torch.randn(N, T, 6, generator=gen)
    alpha = torch.rand(N, T, generator=gen) * scale
    lens = torch.randint(1, T + 1, (N,), generator=gen)
    lens[0] = T
    return h, alpha, lens


@pytest.mark.parametrize("threshold,tail", [(0.99, None), (0.99, 0.5), (1.0, 0.5), (0.9, 0.0)])
def test_dense_cif_equals_integrate_and_fire(threshold, tail):
    gen = torch.Generator().manual_seed(11)
    # scale 1.6: frames with alpha >= 1 fire several tokens; 0.02: most utterances never fire.
    for N, T, scale in [(1, 1, 0.5), (1, 17, 0.7), (3, 40, 1.6), (5, 9, 0.02), (2, 60, 0.3)]:
        for _ in range(5):
            h, alpha, lens = random_cif_inputs(gen, N, T, scale)
            # Padded frames must not matter, whatever they hold.
            alpha = torch.where(torch.arange(T) < lens.unsqueeze(1), alpha, torch.full_like(alpha, 7.0))
            assert_same_fires(dense_integrate_and_fire(h, alpha, lens, threshold, tail),
                              integrate_and_fire(h, alpha, lens, threshold, tail))


def test_dense_cif_without_any_fire_gives_empty_outputs():
    h, lens = torch.randn(2, 5, 4), torch.tensor([5, 3])
    out = dense_integrate_and_fire(h, torch.full((2, 5), 0.05), lens, 0.99, 0.5)
    assert out.cif.shape == (2, 0, 4) and out.cif_lens.tolist() == [0, 0] and out.fire_frames.shape == (2, 0)
    # The tail alone fires: remainder 0.6 > 0.5 gives one token, the mean of the frames.
    out = dense_integrate_and_fire(h, torch.full((2, 5), 0.12), lens, 0.99, 0.5)
    assert out.cif_lens.tolist() == [1, 0] and out.fire_frames.tolist() == [[4], [-1]]
    torch.testing.assert_close(out.cif[0, 0], h[0].mean(dim=0))


class _DenseCif(torch.nn.Module):
    def forward(self, h, alpha, h_lens):
        out = dense_integrate_and_fire(h, alpha, h_lens, 0.99, 0.5)
        return out.cif, out.cif_lens, out.fire_frames


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_dense_cif_onnx_graph_is_dynamic_and_exact(tmp_path):
    gen = torch.Generator().manual_seed(5)
    path = tmp_path / "cif.onnx"
    with torch.no_grad():
        torch.onnx.export(
            _DenseCif(), random_cif_inputs(gen, 2, 30, 0.5), str(path), dynamo=False, opset_version=13,
            input_names=["h", "alpha", "h_lens"], output_names=["cif", "cif_lens", "fire_frames"],
            dynamic_axes={"h": {0: "N", 1: "T"}, "alpha": {0: "N", 1: "T"}, "h_lens": {0: "N"},
                          "cif": {0: "N", 1: "U"}, "cif_lens": {0: "N"}, "fire_frames": {0: "N", 1: "U"}},
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for N, T, scale in [(1, 50, 0.6), (4, 13, 1.6), (3, 200, 0.4), (2, 7, 0.02)]:
        h, alpha, lens = random_cif_inputs(gen, N, T, scale)
        cif, cif_lens, fire_frames = session.run(None, {"h": h.numpy(), "alpha": alpha.numpy(), "h_lens": lens.numpy()})
        reference = integrate_and_fire(h, alpha, lens, 0.99, 0.5)
        assert cif_lens.tolist() == reference.cif_lens.tolist()
        assert fire_frames.tolist() == reference.fire_frames.tolist()
        np.testing.assert_allclose(cif, reference.cif.numpy(), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Export-only substitutions (substitute_for_onnx)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["SwooshL", "SwooshR"])
def test_onnx_swoosh_equals_swoosh_without_overflow(name):
    from scaling import swoosh_forward

    from icefall_cif.onnx_export import SWOOSH_OFFSET, OnnxSwoosh, swoosh_output_constant

    # Far beyond exp's float32 range (88.7) on both sides, and the clamp point 20 + offset.
    x = torch.cat([torch.linspace(-200.0, 200.0, 40001), torch.tensor([-1e30, 1e30, 20.0 + SWOOSH_OFFSET[name]])])
    expected = swoosh_forward(x.double(), name)
    unfolded = OnnxSwoosh(SWOOSH_OFFSET[name], swoosh_output_constant(name))(x)
    # The folded form gets z = x - offset and leaves the constant to the next layer.
    folded = OnnxSwoosh(0.0, 0.0)(x - SWOOSH_OFFSET[name]) - swoosh_output_constant(name)
    for got in (unfolded, folded):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=1e-6)


def test_substituted_model_computes_the_same_and_leaves_the_model_alone():
    """Every Swoosh is replaced (folded where the layers allow it), the Conv-Embed goes
    channels-last, the outputs stay within float32 rounding, and the original is unchanged."""
    from test_model import small_config

    from icefall_cif import onnx_export
    from model import get_model

    torch.manual_seed(0)
    model = get_model(small_config("cif_transducer")).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    substituted = onnx_export.substitute_for_onnx(model)
    kinds = {type(m).__name__ for m in substituted.modules()}
    assert not kinds & {"SwooshL", "SwooshR", "ActivationDropoutAndLinear", "Conv2dSubsampling"}
    assert "ChannelsLastConvEmbed" in kinds
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # [41] and [12]: 17 and 2 Conv-Embed frames, fewer than its time slices (some are empty).
    for lens in ([300, 120], [41], [12]):
        x, x_lens = features(lens, 3), torch.tensor(lens)
        with torch.no_grad():
            expected = model.forward_encoder(x, x_lens)
            got = substituted.forward_encoder(x, x_lens)
        assert torch.equal(got[1], expected[1])
        # The folded biases and channels-last MatMuls round differently from the original ops, by
        # how much depends on the CPU's kernels: 1.7e-5 was seen on an AVX2-only machine.
        torch.testing.assert_close(got[0], expected[0], atol=ENCODER_ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------
# Tiny trained models and their exports
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tiny_corpus: Corpus, tiny_model: TrainedModel, tmp_path_factory) -> Dict[str, Path]:
    """{decoder type: exp dir with epoch-1.pt (transducer, NAR) or epoch-1/2.pt (AR)}."""
    exp_dirs = {"cif_ce_ar": copy_exp_dir(tiny_model, tmp_path_factory.mktemp("ar") / "exp", ["epoch-2.pt"])}
    for decoder_type, options in HEAD_OPTIONS.items():
        exp_dir = tmp_path_factory.mktemp(decoder_type) / "exp"
        train_in_process(TINY_ENCODER + options + tiny_corpus.data_options() + [
            "--exp-dir", str(exp_dir), "--num-epochs", "1", "--seed", "3", "--base-lr", "0.05",
            "--warmup-batches", "2", "--average-period", "1", "--save-every-n", "100", "--log-interval", "100",
        ], tiny_corpus)
        exp_dirs[decoder_type] = exp_dir
    return exp_dirs


def selection(decoder_type: str) -> List[str]:
    epoch = "2" if decoder_type == "cif_ce_ar" else "1"
    return ["--epoch", epoch, "--avg", "1", "--use-averaged-model", "0"]


def load(exp_dir: Path, decoder_type: str, tokens: Path):
    from recipe import RECIPE

    from icefall_cif import onnx_export

    args = onnx_export.get_parser(RECIPE).parse_args(["--exp-dir", str(exp_dir), *selection(decoder_type),
                                                      "--tokens", str(tokens)])
    model, suffix, _ = onnx_export.load_selected_model(args, RECIPE)
    return model, suffix


def corpus_audio(corpus: Corpus) -> List[Path]:
    root = corpus.root / "download" / "LibriSpeech"
    return sorted((root / "test-clean").rglob("*.flac")) + sorted((root / "dev-clean").rglob("*.flac"))


def features(n_frames: List[int], seed: int) -> torch.Tensor:
    """Speech-like fbank: random around the log-energy range of the corpus."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(len(n_frames), max(n_frames), 80, generator=gen) * 2.0 - 5.0


@pytest.mark.parametrize("decoder_type", ["cif_transducer", "cif_ce_ar", "cif_ce_nar"])
def test_onnx_encoder_equals_pytorch(models, tiny_corpus: Corpus, decoder_type, tmp_path):
    from icefall_cif import onnx_export

    model, suffix = load(models[decoder_type], decoder_type, tiny_corpus.lang_dir / "tokens.txt")
    # A copy whose weight predictor rarely fires, for batches where some utterance fires nothing.
    quiet = copy.deepcopy(model)
    quiet.cif_predictor.weight_proj.bias.data -= 6.0
    wrappers = {
        "cif_transducer": lambda m: onnx_export.TransducerEncoder(m, 3),
        "cif_ce_ar": onnx_export.ArEncoder,
        "cif_ce_nar": onnx_export.NarCtcModel,
    }
    saw_no_fire = False
    for variant, m in (("trained", model), ("quiet", quiet)):
        files = onnx_export.export_onnx(m, tmp_path / variant, suffix, max_sym_per_frame=3)
        session = ort.InferenceSession(str(files[0]), providers=["CPUExecutionProvider"])
        wrapper = wrappers[decoder_type](m).eval()
        for seed, lens in enumerate([[160], [350, 37, 240], [23, 23], [900, 120]]):
            x, x_lens = features(lens, seed), torch.tensor(lens)
            with torch.no_grad():
                expected = [t.numpy() for t in wrapper(x, x_lens)]
            got = session.run(None, {"x": x.numpy(), "x_lens": x_lens.numpy()})
            assert len(got) == len(expected)
            for g, e in zip(got, expected):
                assert g.shape == e.shape and g.dtype == e.dtype
                if e.dtype == np.int64:
                    assert g.tolist() == e.tolist()
                else:
                    np.testing.assert_allclose(g, e, atol=ENCODER_ATOL, rtol=0)
            lengths = expected[1]
            saw_no_fire |= bool((lengths == 0).any())
    assert saw_no_fire, "no batch had an utterance without any fire: the quiet model fires too often"


def pytorch_transcripts(exp_dir: Path, decoder_type: str, corpus: Corpus, audio: List[Path]) -> Dict[str, str]:
    """pretrained.py's greedy_search transcripts, by file."""
    from icefall_cif.pretrained import features_of, transcribe
    from icefall_cif.tokenizer import Tokenizer, read_tokens_txt
    from icefall_cif.utils import AttributeDict

    model, _ = load(exp_dir, decoder_type, corpus.lang_dir / "tokens.txt")
    tokenizer = Tokenizer(read_tokens_txt(corpus.lang_dir / "tokens.txt"))
    params = AttributeDict(method="greedy_search", max_sym_per_frame=3, timestamps=False)
    files, feats, _ = features_of(audio)
    # One utterance at a time: the ONNX runtimes below decode one at a time too.
    return {str(f): transcribe(model, tokenizer, [x], params)[0][0] for f, x in zip(files, feats)}


class UnkAsBlankJoiner(torch.nn.Module):
    """The joiner as sherpa-onnx's transducer search sees it: an argmax of <unk> acts as blank
    (nothing emitted, the search moves to the next frame)."""

    def __init__(self, joiner: torch.nn.Module, unk_id: int, blank_id: int):
        super().__init__()
        self.joiner, self.unk_id, self.blank_id = joiner, unk_id, blank_id
        self.encoder_proj, self.decoder_proj = joiner.encoder_proj, joiner.decoder_proj

    def forward(self, encoder_out, decoder_out, project_input: bool = True):
        logits = self.joiner(encoder_out, decoder_out, project_input=project_input)
        is_unk = (logits.argmax(dim=-1) == self.unk_id).unsqueeze(-1)
        blank = torch.nn.functional.one_hot(torch.tensor(self.blank_id), logits.size(-1)).bool()
        return torch.where(is_unk & blank, torch.full_like(logits, float("inf")), logits)


def sherpa_transducer_reference(exp_dir: Path, corpus: Corpus, audio: List[Path]) -> Dict[str, str]:
    """pretrained.py's greedy_search with sherpa-onnx's one difference: <unk> counts as blank."""
    from icefall_cif.decode.greedy import transducer_greedy_search
    from icefall_cif.pretrained import features_of
    from icefall_cif.tokenizer import Tokenizer, read_tokens_txt

    model, _ = load(exp_dir, "cif_transducer", corpus.lang_dir / "tokens.txt")
    tokenizer = Tokenizer(read_tokens_txt(corpus.lang_dir / "tokens.txt"))
    joiner = UnkAsBlankJoiner(model.head.joiner, tokenizer.unk_id, model.blank_id)
    files, feats, _ = features_of(audio)
    out = {}
    with torch.no_grad():
        for f, x in zip(files, feats):
            encoder_out, encoder_out_lens = model.forward_encoder(x.unsqueeze(0), torch.tensor([x.size(0)]))
            cif = model.forward_cif(encoder_out, encoder_out_lens)
            tokens, frames = transducer_greedy_search(model.head.decoder, joiner, cif.cif, cif.cif_lens, 3)
            out[str(f)] = tokenizer.decode(tokens[frames >= 0].tolist())
    return out


def onnx_pretrained(args: List[str], cwd: Path) -> Dict[str, str]:
    out = cwd / "hyps.tsv"
    proc = subprocess.run([sys.executable, str(LIBRI / "zipformer_cif" / "onnx_pretrained.py"), "--output-file", str(out),
                           *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return dict(line.split("\t") for line in out.read_text().splitlines())


def model_options(files: List[Path]) -> List[str]:
    from icefall_cif.onnx_export import model_file_option

    return [arg for f in files for arg in (model_file_option(f.name.split("-", 1)[0]), str(f))]


@pytest.mark.parametrize("decoder_type", ["cif_transducer", "cif_ce_nar", "cif_ce_ar"])
def test_onnx_runtimes_transcribe_like_pretrained(models, tiny_corpus: Corpus, decoder_type, tmp_path):
    tokens = tiny_corpus.lang_dir / "tokens.txt"
    out_dir = tmp_path / "onnx"
    proc = run_script("export-onnx.py", ["--exp-dir", str(models[decoder_type]), *selection(decoder_type),
                                         "--tokens", str(tokens), "--output-dir", str(out_dir),
                                         "--int8", "1"], cwd=tiny_corpus.root)
    names = {"cif_transducer": ["encoder", "decoder", "joiner"], "cif_ce_ar": ["encoder", "decoder"],
             "cif_ce_nar": ["model"]}[decoder_type]
    suffix = "epoch-2-avg-1" if decoder_type == "cif_ce_ar" else "epoch-1-avg-1"
    fp32 = [out_dir / f"{name}-{suffix}.onnx" for name in names]
    int8 = [out_dir / f"{name}-{suffix}.int8.onnx" for name in names]
    assert sorted(out_dir.iterdir()) == sorted(fp32 + int8)
    assert "onnx_pretrained.py" in proc.stdout

    audio = corpus_audio(tiny_corpus)
    expected = pytorch_transcripts(models[decoder_type], decoder_type, tiny_corpus, audio)
    assert any(expected.values()), "the tiny model transcribes nothing: the comparison would be vacuous"
    args = ["--tokens", str(tokens), *model_options(fp32), *map(str, audio)]
    assert onnx_pretrained(args, tmp_path) == expected
    if decoder_type == "cif_transducer":
        # sherpa-onnx treats <unk> as blank; the undertrained tiny model emits it now and then.
        reference = sherpa_transducer_reference(models[decoder_type], tiny_corpus, audio)
        assert any(reference[f] == expected[f] != "" for f in expected)
        assert onnx_pretrained(["--runtime", "sherpa-onnx", *args], tmp_path) == reference
    if decoder_type == "cif_ce_nar":
        assert onnx_pretrained(["--runtime", "sherpa-onnx", *args], tmp_path) == expected
    # int8: decodes every file (its transcripts may differ).
    int8_hyps = onnx_pretrained(["--tokens", str(tokens), *model_options(int8), *map(str, audio)], tmp_path)
    assert sorted(int8_hyps) == sorted(expected)


def test_sherpa_onnx_decodes_an_utterance_without_fire(models, tiny_corpus: Corpus, tmp_path):
    """The quiet transducer fires nothing on a short file: empty text from both runtimes, no crash."""

    from icefall_cif import onnx_export
    from icefall_cif.onnx_pretrained import OnnxCifModel, sherpa_recognizer, sherpa_transcribe

    model, suffix = load(models["cif_transducer"], "cif_transducer", tiny_corpus.lang_dir / "tokens.txt")
    model.cif_predictor.weight_proj.bias.data -= 30.0
    files = onnx_export.export_onnx(model, tmp_path, suffix, max_sym_per_frame=3)
    roles = dict(zip(["encoder", "decoder", "joiner"], files))
    onnx_model = OnnxCifModel(roles)
    samples, rate = sf.read(corpus_audio(tiny_corpus)[0], dtype="float32")
    recognizer = sherpa_recognizer(onnx_model, roles, tiny_corpus.lang_dir / "tokens.txt")
    assert sherpa_transcribe(recognizer, samples[: rate // 2]) == ""
    from icefall_cif.data_prep import get_fbank_extractor

    feats = get_fbank_extractor().extract(samples[None, : rate // 2], rate)
    assert onnx_model.transcribe_ids([feats]) == [[]]


def test_bad_inputs_are_clear_errors(models, tiny_corpus: Corpus, tmp_path):
    tokens = tiny_corpus.lang_dir / "tokens.txt"
    proc = subprocess.run(
        [sys.executable, str(LIBRI / "zipformer_cif" / "export-onnx.py"), "--exp-dir", str(models["cif_transducer"]),
         *selection("cif_transducer"), "--tokens", str(tiny_corpus.other_lang_dir / "tokens.txt")],
        cwd=tiny_corpus.root, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0 and "export-onnx.py: error:" in proc.stderr and "--tokens" in proc.stderr

    from icefall_cif import onnx_export

    model, suffix = load(models["cif_ce_ar"], "cif_ce_ar", tokens)
    encoder, decoder = onnx_export.export_onnx(model, tmp_path, suffix, max_sym_per_frame=3)
    proc = subprocess.run(
        [sys.executable, str(LIBRI / "zipformer_cif" / "onnx_pretrained.py"), "--tokens", str(tokens),
         "--encoder-model-filename", str(encoder), "x.wav"], capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1 and "cif_ce_ar model, which also needs --decoder-model-filename" in proc.stderr
    proc = subprocess.run(
        [sys.executable, str(LIBRI / "zipformer_cif" / "onnx_pretrained.py"), "--tokens", str(tokens), "--runtime",
         "sherpa-onnx", "--encoder-model-filename", str(encoder), "--decoder-model-filename", str(decoder), "x.wav"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1 and "sherpa-onnx has no layout for cif_ce_ar" in proc.stderr
    proc = subprocess.run(
        [sys.executable, str(LIBRI / "zipformer_cif" / "onnx_pretrained.py"), "--tokens", str(tokens),
         "--encoder-model-filename", str(encoder), "--decoder-model-filename", str(decoder),
         "--max-utterance-duration", "60", "x.wav"], capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1 and "the ONNX encoder takes at most 40 s per file" in proc.stderr

    # A file longer than the graph's limit is named, not passed to onnxruntime to fail inside it.
    long_file = tmp_path / "long.wav"
    sf.write(long_file, np.zeros(16000 * 41, dtype="float32"), 16000)
    proc = subprocess.run(
        [sys.executable, str(LIBRI / "zipformer_cif" / "onnx_pretrained.py"), "--tokens", str(tokens),
         "--encoder-model-filename", str(encoder), "--decoder-model-filename", str(decoder), str(long_file)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1 and f"error: {long_file}: 41.0 s of audio, more than --max-utterance-duration 40" \
        in proc.stderr


def test_onnx_encoder_of_a_model_with_the_ctc_input_channel(tmp_path):
    """`--cif-ctc-input 1`: the weight predictor's CTC channel is inside the encoder graph too."""
    from test_model import small_config

    from icefall_cif import onnx_export
    from model import get_model

    torch.manual_seed(0)
    model = get_model(small_config("cif_transducer", cif_ctc_input=True)).eval()
    files = onnx_export.export_onnx(model, tmp_path, "epoch-1-avg-1", max_sym_per_frame=2)
    session = ort.InferenceSession(str(files[0]), providers=["CPUExecutionProvider"])
    wrapper = onnx_export.TransducerEncoder(model, 2).eval()
    lens = [300, 120]
    x, x_lens = features(lens, 7), torch.tensor(lens)
    with torch.no_grad():
        expected = [t.numpy() for t in wrapper(x, x_lens)]
    got = session.run(None, {"x": x.numpy(), "x_lens": x_lens.numpy()})
    assert got[1].tolist() == expected[1].tolist()
    np.testing.assert_allclose(got[0], expected[0], atol=ENCODER_ATOL, rtol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_onnx_encoder_of_a_model_with_ctc_segmentation(tmp_path):
    """`--cif-segmentation ctc`: the CTC greedy spikes and the pooled segments are in the graph,
    with a dynamic number of tokens, and give the vectors of `forward_cif`."""
    from test_model import small_config

    from icefall_cif import onnx_export
    from model import get_model

    torch.manual_seed(0)
    model = get_model(small_config("cif_transducer", cif_segmentation="ctc")).eval()
    files = onnx_export.export_onnx(model, tmp_path, "epoch-1-avg-1", max_sym_per_frame=2)
    session = ort.InferenceSession(str(files[0]), providers=["CPUExecutionProvider"])
    wrapper = onnx_export.TransducerEncoder(model, 2).eval()
    for lens, seed in (([300, 120], 7), ([90], 8), ([160, 250, 40], 9)):
        x, x_lens = features(lens, seed), torch.tensor(lens)
        with torch.no_grad():
            expected = [t.numpy() for t in wrapper(x, x_lens)]
            enc, enc_lens = model.forward_encoder(x, x_lens)
            cif = model.forward_cif(enc, enc_lens)
        assert (expected[1] // 2).tolist() == cif.cif_lens.tolist()
        proj = model.head.joiner.encoder_proj(cif.cif).detach().numpy()
        np.testing.assert_allclose(expected[0][:, ::2], proj, atol=1e-5, rtol=0)
        got = session.run(None, {"x": x.numpy(), "x_lens": x_lens.numpy()})
        assert got[1].tolist() == expected[1].tolist()
        np.testing.assert_allclose(got[0], expected[0], atol=ENCODER_ATOL, rtol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize("decoder_type", ["cif_ce_ar", "cif_ce_nar"])
def test_onnx_of_a_ce_head_with_the_ctc_prior_decodes_like_pytorch(decoder_type, tmp_path):
    """`--ce-ctc-prior-scale`: the scaled prior leaves the encoder graph (cif_ce_ar) or stays in
    the one graph (cif_ce_nar), and the ONNX greedy search equals PyTorch's."""
    from test_ctc_prior import prior_model

    from icefall_cif import onnx_export
    from icefall_cif.decode import greedy_search
    from icefall_cif.onnx_pretrained import OnnxCifModel

    model = prior_model(decoder_type, 0.7).eval()
    files = onnx_export.export_onnx(model, tmp_path, "epoch-1-avg-1", max_sym_per_frame=1)
    roles = ["encoder", "decoder"] if decoder_type == "cif_ce_ar" else ["model"]
    runner = OnnxCifModel(dict(zip(roles, files)))
    lens = [300, 120, 200]
    x = features(lens, 3)
    feats = [x[i, :n].numpy() for i, n in enumerate(lens)]
    expected = []
    with torch.no_grad():
        for f in feats:
            enc, enc_lens = model.forward_encoder(torch.from_numpy(f).unsqueeze(0), torch.tensor([f.shape[0]]))
            expected += greedy_search(model, enc, enc_lens)
    assert sum(map(len, expected)) > 0
    assert runner.transcribe_ids(feats) == expected
    # The same search without the prior is a different one on this model: the prior is in the graph.
    plain = copy.deepcopy(model)
    plain.head.prior_scale = 0.0
    with torch.no_grad():
        enc, enc_lens = plain.forward_encoder(torch.from_numpy(feats[0]).unsqueeze(0), torch.tensor([lens[0]]))
        cif_out = plain.forward_cif(enc, enc_lens)
        tokens, _ = plain.head.greedy_search(cif_out.cif, cif_out.cif_lens, enc, enc_lens, 1)
    assert tokens[0].tolist() != expected[0]
