"""HieraDist distillation (icefall_cif/distill.py, icefall_cif/plm_feats.py, docs/distillation.md).

- ACD and LRD against direct implementations of their formulas (every token a negative; a
  seeded draw, with N > K and N <= K);
- the BPE span alignment on hand-checked examples, and extraction with a tiny random BERT
  (`transformers.BertConfig`, saved to a temporary directory) over the tiny synthetic corpus;
- a few optimisation steps with both losses on an overfit batch, for every decoder type;
- train.py with both losses, then decode.py and export.py without teacher features;
- the start-up errors when teacher features are missing, and the default model unchanged.
"""
import math
from pathlib import Path
from types import SimpleNamespace
from typing import List

import pytest
import torch

from icefall_cif.config import LossConfig
from icefall_cif.distill import TEACHER_FIELD, TeacherFeatures, acd_loss, lrd_loss
from icefall_cif.model_contract import weighted_loss

pytest.register_assert_rewrite("recipe_fixtures")
from recipe_fixtures import (  # noqa: E402
    TRANSDUCER_MODEL,
    Corpus,
    decode_in_process,
    run_script,
    train_in_process,
)

pytest_plugins = ["recipe_fixtures"]

TRAIN_CUTS = "librispeech_cuts_train-clean-100.jsonl.gz"
BERT_DIM = 16


# ---------------------------------------------------------------------------------- the formulas
def direct_acd(student: torch.Tensor, teacher: torch.Tensor, negatives: List[int], temperature: float) -> float:
    """sum_i -log softmax([cos(s_i, t_i), cos(s_i, t_j) for j in negatives, j != i] / T)[0], in float64."""
    total = 0.0
    for i in range(student.size(0)):
        s = student[i].double()

        def cos(j):
            t = teacher[j].double()
            return float(s @ t / (s.norm() * t.norm())) / temperature

        logits = [cos(i)] + [cos(j) for j in negatives if j != i]
        top = max(logits)
        total += -(logits[0] - top - math.log(sum(math.exp(v - top) for v in logits)))
    return total


def test_acd_with_every_token_as_negative_matches_the_formula():
    torch.manual_seed(0)
    student, teacher = torch.randn(7, 5), torch.randn(7, 5)
    expected = direct_acd(student, teacher, list(range(7)), 0.5)
    assert acd_loss(student, teacher, num_negatives=0, temperature=0.5).item() == pytest.approx(expected, rel=1e-5)
    # Only the direction counts, and a student pointing at its own teacher vectors scores far better.
    assert acd_loss(teacher * 3.0, teacher, 0).item() < 0.01 * acd_loss(student, teacher, 0).item()


@pytest.mark.parametrize("n, k, expected_k", [(12, 5, 5), (10, 700, 8)])
def test_acd_with_a_seeded_draw_matches_the_formula(n, k, expected_k):
    torch.manual_seed(1)
    student, teacher = torch.randn(n, 6), torch.randn(n, 6)
    # The documented draw: randperm(N) of the generator, first K (K = int(0.8 N) when N <= K).
    drawn = torch.randperm(n, generator=torch.Generator().manual_seed(3))[:expected_k].tolist()
    expected = direct_acd(student, teacher, drawn, 0.02)
    got = acd_loss(student, teacher, num_negatives=k, temperature=0.02, generator=torch.Generator().manual_seed(3))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    other = acd_loss(student, teacher, num_negatives=k, generator=torch.Generator().manual_seed(4))
    assert other.item() != pytest.approx(expected, rel=1e-5)


def test_acd_gradient_reaches_the_student_only():
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    acd_loss(student, teacher, num_negatives=0).backward()
    assert student.grad.abs().sum() > 0 and teacher.grad.abs().sum() > 0  # the caller decides what is frozen
    assert acd_loss(torch.zeros(0, 3), torch.zeros(0, 3)).item() == 0.0


def test_lrd_is_the_squared_error_summed_over_tokens_and_dims():
    torch.manual_seed(2)
    student, teacher = torch.randn(5, 4), torch.randn(5, 4)
    expected = sum(float(student[i, d] - teacher[i, d]) ** 2 for i in range(5) for d in range(4))
    assert lrd_loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        lrd_loss(student, teacher[:3])


# ---------------------------------------------------------------------------------- alignment
class FakeSentencePiece:
    """sentencepiece's proto output (ids, pieces, UTF-8 byte offsets) as the real model gives it."""

    def __init__(self, pieces):
        self.pieces = [SimpleNamespace(piece=p, id=i, begin=b, end=e) for i, (p, b, e) in enumerate(pieces)]

    def encode(self, text, return_type):
        assert return_type == "proto"
        return SimpleNamespace(pieces=self.pieces)


def test_bpe_spans_on_hand_checked_examples():
    from icefall_cif.plm_feats import bpe_token_spans

    # What lang_bpe_500 gives: a lone "▁" before a character without a "▁x" piece, 2-byte letters.
    sp = FakeSentencePiece([("▁", 0, 0), ("É", 0, 2), ("C", 2, 3), ("O", 3, 4), ("LE", 4, 6), ("▁N", 6, 8),
                            ("A", 8, 9), ("Ï", 9, 11), ("VE", 11, 13)])
    ids, spans = bpe_token_spans(sp, "ÉCOLE NAÏVE")
    assert ids == list(range(9))
    assert spans == [(0, 1), (0, 1), (1, 2), (2, 3), (3, 5), (6, 7), (7, 8), (8, 9), (9, 11)]
    sp = FakeSentencePiece([("▁HE", 0, 2), ("LL", 2, 4), ("O", 4, 5), ("▁", 5, 6), ("X", 6, 7)])
    assert bpe_token_spans(sp, "HELLO X")[1] == [(0, 2), (2, 4), (4, 5), (6, 7), (6, 7)]


def test_pooling_is_the_mean_over_overlapping_plm_tokens():
    from icefall_cif.plm_feats import AlignmentError, pool_by_spans

    # "HELLO WORLDS": ours ▁HE LLO ▁WORLD S; the PLM's hello, wor, ##lds.
    ours = [(0, 2), (2, 5), (6, 11), (11, 12)]
    theirs = [(0, 5), (6, 9), (9, 12)]
    vectors = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]])
    expected = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 3.0], [4.0, 4.0]])
    assert torch.equal(pool_by_spans(ours, theirs, vectors), expected)
    with pytest.raises(AlignmentError, match="token 1 .*overlaps no PLM token"):
        pool_by_spans([(0, 2), (5, 6)], [(0, 5), (6, 9)], vectors[:2])


@pytest.fixture(scope="module")
def tiny_bert(tiny_corpus: Corpus, tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT whose WordPiece vocabulary spells every word of the
    corpus letter by letter (plus a few whole words), saved as a Hugging Face model directory."""
    from lhotse import load_manifest
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny_bert")
    words = sorted({w.lower() for c in load_manifest(tiny_corpus.manifest_dir / TRAIN_CUTS)
                    for w in c.supervisions[0].text.split()})
    letters = sorted({ch for w in words for ch in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{ch}" for ch in letters), *words[::3]]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=BERT_DIM, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=256)
    BertModel(config).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def teacher_manifest(tiny_corpus: Corpus, tiny_bert: Path, tmp_path_factory) -> Path:
    from icefall_cif.plm_feats import TeacherExtractor, extract_cuts, output_paths
    from recipe_fixtures import working_dir

    out = tmp_path_factory.mktemp("plm")
    with working_dir(tiny_corpus.root):
        extractor = TeacherExtractor(tiny_bert, tiny_corpus.lang_dir)
        counts = extract_cuts(extractor, tiny_corpus.manifest_dir / TRAIN_CUTS, tiny_corpus.lang_dir, out, 5)
    assert counts == {"cuts": 12, "written": 12, "skipped": 0, "arrays": 12}
    return output_paths(tiny_corpus.manifest_dir / TRAIN_CUTS, tiny_corpus.lang_dir, out)[0]


def test_extraction_stores_one_pooled_plm_vector_per_token(tiny_corpus: Corpus, tiny_bert: Path,
                                                           teacher_manifest: Path):
    import sentencepiece as spm
    from lhotse import load_manifest
    from transformers import AutoModel, AutoTokenizer

    from icefall_cif.tokenizer import Tokenizer
    from recipe_fixtures import working_dir

    tokenizer = Tokenizer.from_lang_dir(tiny_corpus.lang_dir)
    plm_tokenizer, plm = AutoTokenizer.from_pretrained(str(tiny_bert)), AutoModel.from_pretrained(str(tiny_bert))
    with working_dir(tiny_corpus.root):
        cuts = load_manifest(teacher_manifest)
        assert teacher_manifest.name == f"{TRAIN_CUTS[:-len('.jsonl.gz')]}_plm_{tiny_corpus.lang_dir.name}.jsonl.gz"
        originals = {c.id: c for c in load_manifest(tiny_corpus.manifest_dir / TRAIN_CUTS)}
        assert sorted(c.id for c in cuts) == sorted(originals)
        for cut in cuts:
            text = cut.supervisions[0].text
            rows = cut.load_custom(TEACHER_FIELD)
            assert rows.shape == (len(tokenizer.encode([text])[0]), BERT_DIM) and rows.dtype.name == "float32"
            assert cut.features == originals[cut.id].features
        # One cut recomputed by hand: each BPE token's characters, the word pieces covering them.
        cut = cuts[0]
        text, rows = cut.supervisions[0].text, cut.load_custom(TEACHER_FIELD)
        enc = plm_tokenizer(text, return_offsets_mapping=True)
        with torch.no_grad():
            hidden = plm(input_ids=torch.tensor([enc["input_ids"]])).last_hidden_state[0]
        sp = spm.SentencePieceProcessor(model_file=str(tiny_corpus.lang_dir / "bpe.model"))
        sp_pieces = sp.encode(text, out_type=str)
        position, expected = 0, []
        words = iter(text.split(" "))
        for piece in sp_pieces:
            if piece.startswith("\u2581"):
                word_start = text.index(next(words), position)
                position = word_start
            body = piece.lstrip("\u2581")
            span = (position, position + len(body)) if body else None
            if body:
                position += len(body)
            expected.append(span)
        # A lone "▁" takes the next token's span.
        expected = [s if s is not None else expected[j + 1] for j, s in enumerate(expected)]
        for j, (a, b) in enumerate(expected):
            ks = [k for k, (c, d) in enumerate(enc["offset_mapping"]) if d > c and c < b and a < d]
            assert torch.allclose(torch.from_numpy(rows[j]), hidden[ks].mean(dim=0), atol=1e-5), (j, text)


def test_extraction_shares_arrays_of_equal_texts_and_counts_skips(tiny_corpus: Corpus, tiny_bert: Path, tmp_path):
    from lhotse import CutSet, load_manifest

    from icefall_cif.plm_feats import TeacherExtractor, extract_cuts, output_paths
    from recipe_fixtures import working_dir

    cuts = load_manifest(tiny_corpus.manifest_dir / TRAIN_CUTS).subset(first=3)
    copies = CutSet.from_cuts([*cuts, *(c.with_id(c.id + "_sp0.9") for c in cuts)])
    source = tmp_path / "copies_cuts.jsonl.gz"
    copies.to_file(source)
    with working_dir(tiny_corpus.root):
        extractor = TeacherExtractor(tiny_bert, tiny_corpus.lang_dir, layer=0)
        counts = extract_cuts(extractor, source, tiny_corpus.lang_dir, tmp_path / "out", batch_size=4)
        assert counts == {"cuts": 6, "written": 6, "skipped": 0, "arrays": 3}
        manifest, _, skipped = output_paths(source, tiny_corpus.lang_dir, tmp_path / "out")
        written = load_manifest(manifest)
        assert (written[0].load_custom(TEACHER_FIELD) == written[3].load_custom(TEACHER_FIELD)).all()
        # Transcripts longer than the PLM's positions are skipped, counted and listed.
        extractor.max_positions = 3
        with pytest.raises(ValueError, match="no cut could be aligned"):
            extract_cuts(extractor, source, tiny_corpus.lang_dir, tmp_path / "out", batch_size=4)
    lines = skipped.read_text().splitlines()
    assert len(lines) == 7 and "more than the model's 3 positions" in lines[1]


def test_character_tokens_get_their_own_character_row(tmp_path):
    """AISHELL's layout with a small randomly initialised BERT over our characters (not
    bert-base-chinese): one PLM token per character, [CLS] and [SEP] dropped, spaces ignored."""
    from lhotse import CutSet, MonoCut, SupervisionSegment, load_manifest
    from transformers import AutoModel, BertConfig, BertModel, BertTokenizerFast

    from icefall_cif.plm_feats import TeacherExtractor, extract_cuts, output_paths

    chars = list("今天天气很好我们去公园")
    lang = tmp_path / "lang_char"
    lang.mkdir()
    symbols = ["<blk>", "<sos/eos>", "<unk>", *dict.fromkeys(chars)]
    (lang / "tokens.txt").write_text("".join(f"{sym} {i}\n" for i, sym in enumerate(symbols)))
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *symbols[3:]]) + "\n")
    BertTokenizerFast(vocab_file=str(bert / "vocab.txt")).save_pretrained(bert)
    config = BertConfig(vocab_size=len(symbols) + 2, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=64)
    BertModel(config).eval().save_pretrained(bert)
    texts = ["今天天气很好", "我们 去公园"]
    cuts = CutSet.from_cuts(
        MonoCut(f"c{i}", 0.0, 1.0, 0, supervisions=[SupervisionSegment(f"s{i}", f"r{i}", 0.0, 1.0, text=t)])
        for i, t in enumerate(texts)
    )
    cuts.to_file(tmp_path / "aishell_cuts_train.jsonl.gz")
    extract_cuts(TeacherExtractor(bert, lang), tmp_path / "aishell_cuts_train.jsonl.gz", lang, None)
    manifest = output_paths(tmp_path / "aishell_cuts_train.jsonl.gz", lang, None)[0]
    assert manifest == tmp_path / "aishell_cuts_train_plm_lang_char.jsonl.gz"
    plm = AutoModel.from_pretrained(str(bert))
    tokenizer = BertTokenizerFast.from_pretrained(str(bert))
    for cut, text in zip(load_manifest(manifest), texts):
        with torch.no_grad():
            hidden = plm(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
        rows = torch.from_numpy(cut.load_custom(TEACHER_FIELD))
        assert rows.shape == (len(text.replace(" ", "")), 8)
        assert torch.allclose(rows, hidden[1:-1], atol=1e-5)  # positions 1..U: [CLS] and [SEP] dropped


# ---------------------------------------------------------------------------------- the model
def tiny_config(decoder_type: str, acd_dim: int = 0, lrd_dim: int = 0):
    from model import ModelConfig

    return ModelConfig(
        encoder_config="tiny", num_encoder_layers="1,1", downsampling_factor="1,2", encoder_dim="48,48",
        feedforward_dim="96,96", num_heads="2,2", encoder_unmasked_dim="32,32", cnn_module_kernel="15,15",
        cif_hidden_dim=32, decoder_type=decoder_type, decoder_dim=32, joiner_dim=32, ce_decoder_dim=32,
        ce_decoder_layers=1, ce_decoder_heads=2, vocab_size=20, acd_teacher_dim=acd_dim, lrd_teacher_dim=lrd_dim,
    )


def test_projections_come_last_and_only_when_on():
    from model import get_model

    torch.manual_seed(0)
    plain = get_model(tiny_config("cif_ce_ar")).state_dict()
    torch.manual_seed(0)
    distilled = get_model(tiny_config("cif_ce_ar", 8, 8)).state_dict()
    assert not any(k.startswith("distill.") for k in plain)
    assert sorted(set(distilled) - set(plain)) == ["distill.acd.bias", "distill.acd.weight", "distill.lrd.bias",
                                                   "distill.lrd.weight"]
    assert all(torch.equal(plain[k], distilled[k]) for k in plain)
    assert distilled["distill.acd.weight"].shape == (8, 48) and distilled["distill.lrd.weight"].shape == (8, 32)


@pytest.mark.parametrize("decoder_type", ["cif_transducer", "cif_ce_ar", "cif_ce_nar"])
def test_both_losses_fall_on_an_overfit_batch(decoder_type):
    from model import get_model

    torch.manual_seed(0)
    model = get_model(tiny_config(decoder_type, 8, 8))
    x, x_lens = torch.randn(2, 300, 80), torch.tensor([300, 260])
    y = [[3, 4, 5, 6, 7], [8, 9, 10]]
    teacher = TeacherFeatures(torch.randn(2, 5, 8), torch.tensor([5, 3]))
    # LRD at weight 1 (HieraDist: 0.01) so that 25 steps show it falling next to the other terms.
    config = LossConfig(acd_loss_scale=1.0, lrd_loss_scale=1.0, acd_num_negatives=700, warm_step=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(25):
        losses = model(x, x_lens, y, config, teacher=teacher)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        history.append({k: v.item() for k, v in losses.items()})
        optimizer.zero_grad()
        weighted_loss(model, losses, config, 100).backward()
        optimizer.step()
    for name in ("acd_loss", "lrd_loss"):
        assert history[-1][name] < 0.7 * history[0][name], (name, history[0][name], history[-1][name])
    with pytest.raises(ValueError, match="need the batch's teacher features"):
        model(x, x_lens, y, config)
    with pytest.raises(ValueError, match="rows but the utterances"):
        model(x, x_lens, [[3, 4, 5, 6], [8, 9, 10]], config, teacher=teacher)


def test_teacher_rows_that_do_not_match_the_tokens_name_the_cut():
    from icefall_cif.training.loop import check_teacher_rows

    batch = {"supervisions": {"cut": [SimpleNamespace(id="cut-a"), SimpleNamespace(id="cut-b")]}}
    teacher = TeacherFeatures(torch.zeros(2, 3, 4), torch.tensor([3, 2]))
    check_teacher_rows(teacher, [[1, 2, 3], [4, 5]], batch)
    with pytest.raises(ValueError, match=r"cut-b \(2 rows, 3 tokens\).*--lang-dir"):
        check_teacher_rows(teacher, [[1, 2, 3], [4, 5, 6]], batch)


# ---------------------------------------------------------------------------------- train.py
DISTILL = ["--acd-loss-scale", "1.0", "--lrd-loss-scale", "0.01", "--acd-num-negatives", "700"]


def test_training_without_teacher_features_stops_at_start_up(tiny_corpus: Corpus, tmp_path):
    base = TRANSDUCER_MODEL + tiny_corpus.data_options() + ["--exp-dir", str(tmp_path / "exp"), "--num-epochs", "1"]
    with pytest.raises(ValueError, match="need teacher features: pass --plm-manifest"):
        train_in_process(base + DISTILL, tiny_corpus)
    plain = tiny_corpus.manifest_dir / TRAIN_CUTS
    with pytest.raises(ValueError, match=r"cut .* has no teacher features \(custom field 'plm_feats'\)"):
        train_in_process(base + DISTILL + ["--plm-manifest", str(plain)], tiny_corpus)
    with pytest.raises(ValueError, match="--cif-scale-weights 0"):
        train_in_process(base + DISTILL + ["--plm-manifest", str(plain), "--cif-scale-weights", "0"], tiny_corpus)


def test_distilled_training_then_decode_and_export_without_teacher(tiny_corpus: Corpus, teacher_manifest: Path,
                                                                   tmp_path):
    exp = tmp_path / "exp"
    options = TRANSDUCER_MODEL + tiny_corpus.data_options() + DISTILL + [
        "--plm-manifest", str(teacher_manifest), "--exp-dir", str(exp), "--num-epochs", "1", "--log-interval", "1",
        "--warm-step", "2", "--return-cuts", "0",
    ]
    train_in_process(options, tiny_corpus)
    import json

    batches = [json.loads(line) for line in (exp / "log" / "records-train.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in batches if r["event"] == "batch"]
    assert train_losses and all(math.isfinite(r["acd_loss"]) and math.isfinite(r["lrd_loss"]) for r in train_losses)
    valid = [r for r in batches if r["event"] == "valid"][-1]["loss"]
    assert "acd_loss" not in valid and "lrd_loss" not in valid  # validation leaves them out
    checkpoint = torch.load(exp / "epoch-1.pt", weights_only=False)
    assert checkpoint["model_config"]["acd_teacher_dim"] == BERT_DIM == checkpoint["model_config"]["lrd_teacher_dim"]
    assert checkpoint["model"]["distill.lrd.weight"].shape == (BERT_DIM, 32)  # joiner_dim

    decode = ["--exp-dir", str(exp), "--lang-dir", str(tiny_corpus.lang_dir), "--manifest-dir",
              str(tiny_corpus.manifest_dir), "--max-duration", "10", "--num-workers", "0", "--num-threads", "1",
              "--epoch", "1", "--avg", "1", "--use-averaged-model", "0"]
    rates = decode_in_process(decode, tiny_corpus)
    assert rates and all(math.isfinite(r) for r in rates.values())

    run_script("export.py", ["--exp-dir", str(exp), "--epoch", "1", "--avg", "1", "--use-averaged-model", "0",
                             "--tokens", str(tiny_corpus.lang_dir / "tokens.txt")], cwd=tiny_corpus.root)
    saved = torch.load(exp / "pretrained.pt", weights_only=True)
    assert not any(k.startswith("distill.") for k in saved["model"])
    assert saved["model_config"]["acd_teacher_dim"] == 0 == saved["model_config"]["lrd_teacher_dim"]
    assert all(torch.equal(saved["model"][k], checkpoint["model"][k]) for k in saved["model"])
