"""Tests for the AR -> NAR knowledge-transfer losses and teacher (icefall_cif/kd.py).

Each loss is checked against the KL written out in float64 loops, at temperature 1 and 2; both
are 0 when the student equals the teacher; padding, unselected positions and the blank column
do not count; and in a model's training step the gradient reaches the student only.
"""
import copy
import json
import math
from pathlib import Path

import pytest
import torch
from model import ModelConfig, get_model

from icefall_cif.config import LossConfig
from icefall_cif.kd import KdTeacher, frame_kd_loss, soft_kl, token_kd_loss, without_blank
from icefall_cif.utils import pad_token_ids

pytest.register_assert_rewrite("recipe_fixtures")
from recipe_fixtures import Corpus, TrainedModel, copy_exp_dir, run_script, train_in_process  # noqa: E402

pytest_plugins = ["recipe_fixtures"]


def naive_kl(student_log_probs, teacher_log_probs, tau):
    """tau^2 sum_v p_T(v) (log p_T(v) - log p_S(v)), p = softmax(log-probs / tau), in float64 loops."""
    def softmax(row):
        z = [x / tau for x in row]
        m = max(z)
        total = sum(math.exp(x - m) for x in z)
        return [math.exp(x - m) / total for x in z]

    p_s, p_t = softmax(student_log_probs), softmax(teacher_log_probs)
    return tau ** 2 * sum(t * (math.log(t) - math.log(s)) for s, t in zip(p_s, p_t))


def random_log_probs(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).mul(2).log_softmax(-1)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_frame_loss_is_the_kl_summed_over_valid_frames(tau):
    student, teacher = random_log_probs(2, 5, 7, seed=1), random_log_probs(2, 5, 7, seed=2)
    lens = torch.tensor([5, 3])
    expected = sum(naive_kl(student[n, t].tolist(), teacher[n, t].tolist(), tau)
                   for n in range(2) for t in range(int(lens[n])))
    assert frame_kd_loss(student, teacher, lens, tau).item() == pytest.approx(expected, rel=1e-5)


def test_frame_loss_is_zero_for_an_equal_student_and_ignores_padding():
    teacher = random_log_probs(2, 6, 9, seed=3)
    lens = torch.tensor([6, 2])
    assert frame_kd_loss(teacher.clone(), teacher, lens).item() == pytest.approx(0.0, abs=1e-6)
    student = random_log_probs(2, 6, 9, seed=4)
    changed = student.clone()
    changed[1, 2:] = random_log_probs(4, 9, seed=5)
    assert frame_kd_loss(changed, teacher, lens).item() == pytest.approx(frame_kd_loss(student, teacher, lens).item())


def test_frame_loss_of_a_uniform_student_against_a_sure_teacher_is_log_v():
    V, T = 11, 4
    teacher = torch.full((1, T, V), -1e4)
    teacher[0, torch.arange(T), torch.tensor([1, 5, 0, 7])] = 0.0
    student = torch.full((1, T, V), -math.log(V))
    assert frame_kd_loss(student, teacher.log_softmax(-1), torch.tensor([T])).item() == pytest.approx(T * math.log(V))


def test_token_loss_excludes_blank_and_counts_only_the_given_positions():
    student, teacher = random_log_probs(2, 4, 6, seed=6), random_log_probs(2, 4, 6, seed=7)
    positions = torch.tensor([[True, False, True, True], [False, True, False, False]])
    blank = 0
    expected = sum(naive_kl(student[n, u, 1:].log_softmax(-1).tolist(), teacher[n, u, 1:].log_softmax(-1).tolist(), 1.5)
                   for n in range(2) for u in range(4) if positions[n, u])
    loss = token_kd_loss(student, teacher, positions, blank, temperature=1.5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # The blank column of either side does not matter (a transducer teacher's blank mass).
    moved = teacher.clone()
    moved[..., blank] += 3.0
    assert token_kd_loss(student, moved.log_softmax(-1), positions, blank, 1.5).item() == pytest.approx(
        expected, rel=1e-5)
    assert token_kd_loss(teacher, teacher, positions, blank).item() == pytest.approx(0.0, abs=1e-6)


def test_soft_kl_of_logits_equals_that_of_their_log_probs():
    logits = torch.randn(3, 8, generator=torch.Generator().manual_seed(8)) * 3
    teacher = random_log_probs(3, 8, seed=9)
    torch.testing.assert_close(soft_kl(logits, teacher, 2.0), soft_kl(logits.log_softmax(-1), teacher, 2.0))
    torch.testing.assert_close(without_blank(logits, 2), torch.cat([logits[:, :2], logits[:, 3:]], 1).log_softmax(-1))


def test_bad_shapes_and_temperature_are_errors_that_say_why():
    a, b = random_log_probs(1, 3, 5), random_log_probs(1, 4, 5)
    with pytest.raises(ValueError, match="same frame rate"):
        frame_kd_loss(a, b, torch.tensor([3]))
    with pytest.raises(ValueError, match="same token table"):
        token_kd_loss(a, b, torch.ones(1, 3, dtype=torch.bool), 0)
    with pytest.raises(ValueError, match="--kd-temperature must be > 0"):
        soft_kl(a, a, 0.0)


# ------------------------------------------------------------------ in the model and train.py
VOCAB = 20


def tiny_config(decoder_type: str, encoder_dim: str = "48,48", cif_segmentation: str = "fire") -> ModelConfig:
    return ModelConfig(
        vocab_size=VOCAB, encoder_config="tiny", num_encoder_layers="1,1", downsampling_factor="1,2",
        encoder_dim=encoder_dim, feedforward_dim="96,96", encoder_unmasked_dim="32,32", cnn_module_kernel="7,7",
        num_heads="2", decoder_type=decoder_type, decoder_dim=32, joiner_dim=32, ce_decoder_dim=32,
        ce_decoder_layers=1, ce_decoder_heads=2, cif_hidden_dim=32, cif_segmentation=cif_segmentation,
    )


def tiny_batch():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 120, 80, generator=gen)
    x_lens = torch.tensor([120, 90])
    ys = [[3, 5, 7, 2, 9], [4, 4, 11]]
    y_lens = torch.tensor([len(y) for y in ys])
    return x, x_lens, ys, pad_token_ids(ys, 0, torch.device("cpu")), y_lens


KD = LossConfig(kd_frame_scale=0.5, kd_seq_scale=1.0, kd_temperature=2.0)


@pytest.mark.parametrize("student_type", ["cif_ce_nar", "mask_ctc"])
def test_model_kd_losses_are_the_formulas_on_the_students_own_pass(student_type, monkeypatch):
    import mask_ctc_head

    # Mask-CTC's random training mask, fixed: positions 1 and 3 of the first utterance, 0 of the second.
    fixed = torch.tensor([[False, True, False, True, False], [True, False, False, False, False]])
    monkeypatch.setattr(mask_ctc_head, "sample_cmlm_mask", lambda y_lens, max_len: fixed[:, :max_len])
    teacher = KdTeacher(get_model(tiny_config("cif_transducer")))
    student = get_model(tiny_config(student_type, encoder_dim="32,32")).eval()
    x, x_lens, ys, y_padded, y_lens = tiny_batch()
    targets = teacher.targets(x, x_lens, y_padded, y_lens, token_level=True)
    assert targets.token_log_probs.shape == (2, 5, VOCAB)

    losses = student(x, x_lens, ys, KD, kd=targets)
    enc, enc_lens = student.forward_encoder(x, x_lens)
    expected_frame = frame_kd_loss(student.ctc_log_probs(enc), targets.ctc_log_probs, enc_lens, 2.0)
    torch.testing.assert_close(losses["kd_frame_loss"], expected_frame)
    cif_out = student.forward_cif(enc, enc_lens, target_lengths=y_lens)
    _, logits, positions = student.head.loss_and_token_logits(cif_out, enc, enc_lens, y_padded, y_lens, KD)
    assert positions.tolist() == (fixed if student_type == "mask_ctc" else y_padded > 0).tolist()
    expected_seq = token_kd_loss(logits, targets.token_log_probs, positions, 0, 2.0)
    torch.testing.assert_close(losses["kd_seq_loss"], expected_seq)
    assert expected_frame > 0 and expected_seq > 0


def test_a_teacher_that_cuts_at_the_ctc_spikes_scores_the_reference_it_is_given():
    # Such a teacher aligns the reference to place its vectors; the token posteriors are those
    # of its head on exactly those vectors.
    teacher = KdTeacher(get_model(tiny_config("cif_ce_nar", cif_segmentation="ctc")))
    x, x_lens, ys, y_padded, y_lens = tiny_batch()
    targets = teacher.targets(x, x_lens, y_padded, y_lens, token_level=True)
    model = teacher.model
    with torch.no_grad():
        enc, enc_lens = model.forward_encoder(x, x_lens)
        cif_out = model.forward_cif(enc, enc_lens, target_lengths=y_lens, targets=y_padded)
        logits = model.head.token_logits(cif_out, enc, enc_lens, y_padded, y_lens)
    torch.testing.assert_close(targets.token_log_probs, logits.log_softmax(dim=-1))


def test_model_kd_losses_vanish_for_a_student_equal_to_its_teacher():
    model = get_model(tiny_config("cif_ce_ar"))
    teacher = KdTeacher(copy.deepcopy(model))
    x, x_lens, ys, y_padded, y_lens = tiny_batch()
    losses = model.eval()(x, x_lens, ys, KD, kd=teacher.targets(x, x_lens, y_padded, y_lens, token_level=True))
    assert losses["kd_frame_loss"].item() == pytest.approx(0.0, abs=1e-5)
    assert losses["kd_seq_loss"].item() == pytest.approx(0.0, abs=1e-5)


def test_kd_gradients_reach_the_student_only():
    teacher = KdTeacher(get_model(tiny_config("cif_transducer")))
    student = get_model(tiny_config("cif_ce_nar")).train()
    x, x_lens, ys, y_padded, y_lens = tiny_batch()
    targets = teacher.targets(x, x_lens, y_padded, y_lens, token_level=True)
    assert not targets.ctc_log_probs.requires_grad and not targets.token_log_probs.requires_grad
    only_kd = LossConfig(ctc_loss_scale=0.0, quantity_loss_scale=0.0, kd_frame_scale=1.0, kd_seq_scale=1.0)
    losses = student(x, x_lens, ys, only_kd, kd=targets)
    (losses["kd_frame_loss"] + losses["kd_seq_loss"]).backward()
    assert all(p.grad is None for p in teacher.model.parameters())
    assert not teacher.model.training
    assert student.ctc_output[1].weight.grad.abs().sum() > 0
    assert student.head.ce_decoder.output_linear.weight.grad.abs().sum() > 0


def test_model_kd_needs_targets_of_the_same_frame_rate():
    student = get_model(tiny_config("cif_ce_nar"))
    x, x_lens, ys, y_padded, y_lens = tiny_batch()
    with pytest.raises(ValueError, match="need the teacher's outputs"):
        student(x, x_lens, ys, KD)
    targets = KdTeacher(get_model(tiny_config("cif_ce_ar"))).targets(x[:, :100], torch.tensor([100, 90]),
                                                                      y_padded, y_lens, token_level=True)
    with pytest.raises(ValueError, match="same frame rate"):
        student(x, x_lens, ys, KD, kd=targets)


NAR_STUDENT = [
    "--encoder-config", "tiny", "--num-encoder-layers", "1,1", "--downsampling-factor", "1,2",
    "--encoder-dim", "32,32", "--feedforward-dim", "64,64", "--num-heads", "2,2", "--encoder-unmasked-dim", "32,32",
    "--cnn-module-kernel", "15,15", "--cif-hidden-dim", "32", "--decoder-type", "cif_ce_nar",
    "--ce-decoder-dim", "32", "--ce-decoder-layers", "1", "--ce-decoder-heads", "2",
]


@pytest.fixture(scope="module")
def teacher_checkpoint(tiny_model: TrainedModel, tmp_path_factory) -> Path:
    """export.py's pretrained.pt of the tiny cif_ce_ar model: the AR teacher."""
    exp = copy_exp_dir(tiny_model, tmp_path_factory.mktemp("kd_teacher") / "exp", ["epoch-1.pt", "epoch-2.pt"])
    run_script("export.py", ["--exp-dir", str(exp), "--epoch", "2", "--avg", "1", "--use-averaged-model", "1",
                             "--tokens", str(tiny_model.corpus.lang_dir / "tokens.txt")], cwd=tiny_model.corpus.root)
    return exp / "pretrained.pt"


def test_training_a_nar_student_from_an_ar_teacher(tiny_corpus: Corpus, teacher_checkpoint: Path, tmp_path):
    exp = tmp_path / "exp"
    options = NAR_STUDENT + tiny_corpus.data_options() + [
        "--exp-dir", str(exp), "--num-epochs", "1", "--log-interval", "1", "--kd-teacher-checkpoint",
        str(teacher_checkpoint), "--kd-frame-scale", "0.5", "--kd-seq-scale", "1.0", "--kd-temperature", "2",
        "--kd-nbest", "2",
    ]
    train_in_process(options, tiny_corpus)
    records = [json.loads(line) for line in (exp / "log" / "records-train.jsonl").read_text().splitlines()]
    batches = [r["loss"] for r in records if r["event"] == "batch"]
    assert batches and all(r["kd_frame_loss"] > 0 and r["kd_seq_loss"] > 0 and r["kd_nbest_loss"] > 0 for r in batches)
    valid = [r for r in records if r["event"] == "valid"][-1]["loss"]
    assert not {"kd_frame_loss", "kd_seq_loss", "kd_nbest_loss"} & set(valid)  # validation leaves them out
    saved = torch.load(exp / "epoch-1.pt", weights_only=False)
    # Nothing of the teacher is saved with the student.
    assert saved["model_config"]["decoder_type"] == "cif_ce_nar"
    assert not any(k.startswith("head.ce_decoder.embedding") for k in saved["model"])


def test_kd_options_errors_name_the_problem(tiny_corpus: Corpus, teacher_checkpoint: Path, tmp_path):
    base = NAR_STUDENT + tiny_corpus.data_options() + ["--exp-dir", str(tmp_path / "exp"), "--num-epochs", "1"]
    with pytest.raises(ValueError, match="pass --kd-teacher-checkpoint"):
        train_in_process(base + ["--kd-frame-scale", "1"], tiny_corpus)
    with pytest.raises(ValueError, match="--kd-frame-scale and --kd-seq-scale are 0"):
        train_in_process(base + ["--kd-teacher-checkpoint", str(teacher_checkpoint)], tiny_corpus)
    with pytest.raises(FileNotFoundError, match="no such file"):
        train_in_process(base + ["--kd-frame-scale", "1", "--kd-teacher-checkpoint", str(tmp_path / "none.pt")],
                         tiny_corpus)
    other = base + ["--lang-dir", str(tiny_corpus.other_lang_dir), "--kd-frame-scale", "1",
                    "--kd-teacher-checkpoint", str(teacher_checkpoint)]
    with pytest.raises(ValueError, match=r"--kd-teacher-checkpoint .*pretrained.pt .*the same tokens"):
        train_in_process(other, tiny_corpus)


def test_nbest_targets_repeat_short_lists_and_replace_empty_hypotheses():
    from icefall_cif.decode.beam_search import Hypothesis
    from icefall_cif.kd import nbest_targets

    searched = [[Hypothesis([1, 2], -1.0), Hypothesis([1], -2.0)], [Hypothesis([3], -0.5)], [Hypothesis([], -0.1)]]
    refs = [[9], [8], [7, 7]]
    assert nbest_targets(searched, refs, 2) == [[[1, 2], [3], [7, 7]], [[1], [3], [7, 7]]]


def test_nbest_loss_is_the_heads_loss_averaged_over_the_teachers_hypotheses():
    teacher = KdTeacher(get_model(tiny_config("cif_transducer")))
    student = get_model(tiny_config("cif_ce_nar")).eval()
    x, x_lens, ys, y_padded, y_lens = tiny_batch()
    config = LossConfig(kd_seq_scale=1.0, kd_nbest=2)
    targets = teacher.targets(x, x_lens, y_padded, y_lens, token_level=True, nbest=2)
    assert len(targets.nbest) == 2 and all(len(row) == 2 for row in targets.nbest)
    losses = student(x, x_lens, ys, config, kd=targets)
    expected = 0.0
    frames = student.num_output_frames(x_lens).tolist()
    for hyps in targets.nbest:
        hyps = [h if len(h) <= f else ref for h, ref, f in zip(hyps, ys, frames)]
        expected += student(x, x_lens, hyps, LossConfig())["ce_loss"] / 2
    torch.testing.assert_close(losses["kd_nbest_loss"], expected)
    with pytest.raises(ValueError, match="--kd-nbest .* needs --kd-seq-scale > 0"):
        LossConfig(kd_nbest=2)
    transducer_student = get_model(tiny_config("cif_transducer"))
    with pytest.raises(ValueError, match="needs a head with one loss term"):
        transducer_student(x, x_lens, ys, config, kd=targets)
