"""Knowledge transfer from an autoregressive teacher to a non-autoregressive student.

Our reading of Gong, Zhou & Qian, "Knowledge Transfer and Distillation from Autoregressive to
Non-Autoregressive Speech Recognition" (Interspeech 2022; only its abstract and introduction are
available to us, docs/distillation.md). The teacher is any trained model of this repository
(`--kd-teacher-checkpoint`, frozen, in eval mode); both models have a CTC head on encoder frames
of the same rate (25 Hz), and both a decoder over CIF vectors.

    frame level (--kd-frame-scale):  sum over the student's valid encoder frames t of
        tau^2 KL( softmax(teacher CTC log-probs_t / tau) || softmax(student CTC log-probs_t / tau) )
    sequence level (--kd-seq-scale): sum over the reference tokens u the student predicts of
        tau^2 KL( teacher's posterior of token u || student's posterior of token u ),
        both teacher-forced on the reference (the teacher sees tokens < u and CIF vector u), over
        the non-blank tokens (blank is never a CE target; a transducer teacher's blank mass is
        renormalised away);
      and with --kd-nbest K also the student's own decoder loss on each of the teacher's K best
        beam hypotheses, averaged over them (Kim & Rush's sequence-level distillation, on the
        n-best), also weighted by --kd-seq-scale.

tau is `--kd-temperature`; the tau^2 factor keeps the gradient scale of the soft targets
independent of tau (Hinton et al., 2015). The losses are sums, like every loss of the model: the
training loop reports the frame loss per CIF frame and the sequence loss per token.

The teacher runs on the fly, on the same features as the student, inside `torch.no_grad`.
"""
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence

import torch

from icefall_cif.decode.beam_search import NBest
from icefall_cif.decode.search import beam_search
from icefall_cif.model_contract import CifModel, check_model
from icefall_cif.pretrained import load_pretrained
from icefall_cif.recipe import Recipe
from icefall_cif.tokenizer import Tokenizer, check_token_table, token_table
from icefall_cif.utils import make_pad_mask


class KdTargets(NamedTuple):
    """The teacher's outputs for one batch.

    Attributes:
      ctc_log_probs: (N, T', V) the teacher's CTC log-probs; ctc_lens (N,) its valid frames.
      token_log_probs: (N, U, V) the teacher's log-posteriors of the reference tokens,
        teacher-forced (None when the sequence-level loss is off).
      nbest: K lists of N token lists, list k holding each utterance's k-th best beam hypothesis
        (--kd-nbest K; empty otherwise). See :func:`nbest_targets` for short n-bests.
    """

    ctc_log_probs: torch.Tensor
    ctc_lens: torch.Tensor
    token_log_probs: Optional[torch.Tensor]
    nbest: Sequence[Sequence[List[int]]] = ()


def soft_kl(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per row tau^2 KL(p_T || p_S) with p = softmax(log-probs / tau).

    Log-probs rather than logits suffice: dividing log-probs by tau differs from dividing the
    logits by tau only by a per-row constant, which the softmax removes.

    Args:
      student_log_probs, teacher_log_probs: (..., V), finite.
    Returns:
      (...) float32, >= 0, 0 where the two rows are equal.
    """
    if temperature <= 0:
        raise ValueError(f"--kd-temperature must be > 0, got {temperature}")
    s = (student_log_probs.float() / temperature).log_softmax(dim=-1)
    t = (teacher_log_probs.float() / temperature).log_softmax(dim=-1)
    return temperature ** 2 * (t.exp() * (t - s)).sum(dim=-1)


def frame_kd_loss(
    student_log_probs: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    lens: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """The frame-level loss: :func:`soft_kl` of the CTC posteriors summed over the valid frames.

    Args:
      student_log_probs: (N, T', V) the student's CTC log-probs; teacher_log_probs the same shape.
      lens: (N,) valid frames.
    Returns:
      scalar.

    Example: a student equal to its teacher gets 0; a uniform student (log 1/V everywhere) against
    a teacher sure of one token per frame gets log V per valid frame (at tau = 1).
    """
    if student_log_probs.shape != teacher_log_probs.shape:
        raise ValueError(
            f"student and teacher CTC outputs differ in shape: {tuple(student_log_probs.shape)} vs "
            f"{tuple(teacher_log_probs.shape)}; the frame-level loss needs the same frame rate and vocabulary"
        )
    valid = ~make_pad_mask(lens, student_log_probs.size(1))
    return soft_kl(student_log_probs, teacher_log_probs, temperature)[valid].sum()


def without_blank(log_probs: torch.Tensor, blank_id: int) -> torch.Tensor:
    """(..., V) log-probs or logits -> (..., V - 1) log-probs renormalised over the non-blank tokens."""
    keep = torch.arange(log_probs.size(-1), device=log_probs.device) != blank_id
    return log_probs[..., keep].float().log_softmax(dim=-1)


def token_kd_loss(
    student_logits: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    positions: torch.Tensor,
    blank_id: int,
    temperature: float = 1.0,
) -> torch.Tensor:
    """The sequence-level loss: :func:`soft_kl` of the token posteriors over non-blank tokens,
    summed over the given positions.

    Args:
      student_logits: (N, U, V) the student's logits (or log-probs) at each reference position.
      teacher_log_probs: (N, U, V) the teacher's, teacher-forced on the same reference.
      positions: (N, U) bool, the positions the student predicted in this pass (its valid
        tokens; for Mask-CTC the masked ones).
    Returns:
      scalar.
    """
    if student_logits.shape != teacher_log_probs.shape:
        raise ValueError(
            f"student and teacher token posteriors differ in shape: {tuple(student_logits.shape)} vs "
            f"{tuple(teacher_log_probs.shape)}; both must be trained on the same token table"
        )
    kl = soft_kl(without_blank(student_logits, blank_id), without_blank(teacher_log_probs, blank_id), temperature)
    return kl[positions].sum()


class KdTeacher:
    """A frozen trained model that gives :class:`KdTargets` for the student's batches.

    Example::

        teacher = KdTeacher.from_checkpoint(recipe, Path("exp-ar/pretrained.pt"), tokenizer, device)
        targets = teacher.targets(x, x_lens, y_padded, y_lens, token_level=True)
        losses = student(x, x_lens, y, loss_config, kd=targets)
    """

    def __init__(self, model: CifModel, name: str = "the teacher"):
        check_model(model)
        self.model = model.eval()
        self.name = name
        for p in self.model.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_checkpoint(
        cls, recipe: Recipe, checkpoint: Path, tokenizer: Tokenizer, device: torch.device
    ) -> "KdTeacher":
        """Load a model of this repository from a `pretrained.pt` (export.py; the averaged model,
        the usual choice) or a training checkpoint (`epoch-N.pt`, its raw weights), rebuilt from
        the architecture saved in it. Its token table must be the student's."""
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"--kd-teacher-checkpoint {checkpoint}: no such file (write one with export.py)")
        # The teacher's initial weights (overwritten by the load) come from a copy of the RNG: the
        # student's run draws the same random numbers as it would without a teacher.
        with torch.random.fork_rng(devices=[]):
            model, teacher_tokenizer = load_pretrained(recipe, checkpoint)
        check_token_table({"token_table": token_table(teacher_tokenizer)}, tokenizer,
                          f"--kd-teacher-checkpoint {checkpoint}",
                          "teacher and student need the same tokens: train the teacher with this --lang-dir")
        return cls(model.to(device), name=str(checkpoint))

    @torch.no_grad()
    def targets(
        self,
        x: torch.Tensor,
        x_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
        token_level: bool,
        nbest: int = 0,
    ) -> KdTargets:
        """The teacher's outputs on a batch.

        Args:
          x: (N, T, F) features; x_lens (N,).
          y_padded: (N, U) reference ids padded with blank; y_lens (N,).
          token_level: also compute the teacher-forced token posteriors (--kd-seq-scale > 0).
          nbest: K > 0: also the teacher's K best hypotheses of its beam search (beam K; up to 3
            tokens per CIF vector for a transducer, decode.py's default).
        """
        encoder_out, encoder_out_lens = self.model.forward_encoder(x, x_lens)
        ctc = self.model.ctc_log_probs(encoder_out)
        tokens = None
        if token_level:
            cif_out = self.model.forward_cif(
                encoder_out, encoder_out_lens, target_lengths=y_lens, targets=y_padded, ctc_log_probs=ctc
            )
            logits = self.model.head.token_logits(cif_out, encoder_out, encoder_out_lens, y_padded, y_lens)
            tokens = logits.float().log_softmax(dim=-1)
        hyps = []
        if nbest > 0:
            searched = beam_search(self.model, encoder_out, encoder_out_lens, beam_size=nbest, max_sym_per_frame=3)
            references = [row[: int(n)].tolist() for row, n in zip(y_padded, y_lens)]
            hyps = nbest_targets(searched, references, nbest)
        return KdTargets(ctc, encoder_out_lens, tokens, hyps)


def nbest_targets(searched: List[NBest], references: List[List[int]], k: int) -> List[List[List[int]]]:
    """K lists of N token lists from N n-best lists: list j holds each utterance's j-th best
    hypothesis. An utterance with fewer than K hypotheses repeats its best one; one whose best
    hypothesis is empty (the teacher heard nothing) gets its reference instead, so that every
    target has a token to integrate CIF towards.

    Example: searched [[a, b], [c]] (hypotheses), k = 2 -> [[a, c], [b, c]].
    """
    out = []
    for j in range(k):
        row = []
        for hyps, reference in zip(searched, references):
            tokens = hyps[j].tokens if j < len(hyps) else (hyps[0].tokens if hyps else [])
            row.append(list(tokens) if tokens else list(reference))
        out.append(row)
    return out
