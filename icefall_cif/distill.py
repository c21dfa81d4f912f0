"""HieraDist: knowledge distillation from a pre-trained language model (PLM) into the CIF model.

Han et al., "Knowledge Transfer from Pre-trained Language Models to Cif-based Speech Recognizers
via Hierarchical Distillation" (Interspeech 2023); docs/distillation.md has the details.

    teacher: one (U, D) PLM vector per token of each training cut (local/extract_plm_feats.py,
             stored by Lhotse in the cut field `plm_feats`; icefall_cif/plm_feats.py)
    ACD  (acoustic contrastive):  Linear(C -> D)(integrated CIF vector u)  vs  teacher row u
    LRD  (linguistic regression): Linear(H -> D)(head's state entering its vocabulary projection
                                  at token u)  vs  teacher row u

Both losses are sums over the valid tokens of the batch (the training loop divides by the
number of tokens, as for the CE losses). The projections (:class:`DistillProjections`, the
model's `distill` submodule) are training-only: decoding never calls them, and export.py /
export-onnx.py build the model without them.
"""
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: The custom cut field that holds a cut's teacher vectors (a Lhotse `Array` of shape (U, D)).
TEACHER_FIELD = "plm_feats"
#: Prefix of the training-only modules' keys in a model's state dict (see :class:`DistillProjections`).
TRAINING_ONLY_PREFIX = "distill."
#: The logit given to a sampled negative that is the anchor itself.
_MASKED_LOGIT = -1e9


class TeacherFeatures(NamedTuple):
    """The teacher vectors of a batch, in the order of its supervisions.

    Attributes:
      feats: (N, U_max, D) float32, zero past each utterance's length.
      lens: (N,) int64, rows per utterance (= its number of our tokens).
    """

    feats: torch.Tensor
    lens: torch.Tensor

    def to(self, device: torch.device) -> "TeacherFeatures":
        return TeacherFeatures(self.feats.to(device), self.lens.to(device))


def acd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    num_negatives: int = 700,
    temperature: float = 0.02,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Acoustic contrastive distillation, summed over the N tokens.

    For every anchor i the positive is its own teacher vector; the negatives are the teacher
    vectors of K tokens drawn uniformly without replacement from the N tokens of the batch, one
    draw shared by all anchors (an (N, K) logit matrix instead of N x K gathered vectors). A
    drawn index equal to the anchor's own gets the logit -1e9; other tokens with the same
    identity stay negatives. All vectors are L2-normalised, logits = cosine / temperature, and
    the loss is the cross-entropy with the positive as class 0.

    Args:
      student: (N, D) projected CIF vectors of the batch's valid tokens.
      teacher: (N, D) their teacher vectors.
      num_negatives: K when N > K; for N <= K, K = int(0.8 N) (as HieraDist). 0: no draw,
        every token of the batch is a negative (the anchor's own index masked).
      temperature: divides the cosine similarities.
      generator: the CPU generator of the draw; None uses torch's global one.
    Returns:
      Scalar float32: the sum over the N tokens (0 for N = 0).
    """
    if student.shape != teacher.shape or student.ndim != 2:
        raise ValueError(f"acd_loss: student and teacher must both be (N, D), got {tuple(student.shape)} "
                         f"and {tuple(teacher.shape)}")
    if num_negatives < 0 or temperature <= 0:
        raise ValueError(f"acd_loss: num_negatives must be >= 0 and temperature > 0, got {num_negatives}, "
                         f"{temperature}")
    n = student.size(0)
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    if num_negatives == 0:
        negatives = torch.arange(n, device=student.device)
    else:
        k = num_negatives if n > num_negatives else int(0.8 * n)
        negatives = torch.randperm(n, generator=generator)[:k].to(student.device)
    positive = (s * t).sum(dim=-1, keepdim=True)  # (N, 1)
    negative = s @ t[negatives].t()  # (N, K)
    own = negatives.unsqueeze(0) == torch.arange(n, device=student.device).unsqueeze(1)
    logits = torch.cat([positive, negative], dim=1) / temperature
    logits = logits.masked_fill(F.pad(own, (1, 0), value=False), _MASKED_LOGIT)
    targets = torch.zeros(n, dtype=torch.int64, device=student.device)
    return F.cross_entropy(logits, targets, reduction="sum")


def lrd_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Linguistic regression distillation: squared error summed over tokens and dimensions.

    Args:
      student: (N, D) projected decoder states of the batch's valid tokens.
      teacher: (N, D) their teacher vectors.
    Returns:
      Scalar float32 sum_i sum_d (student - teacher)^2 (HieraDist's unscaled MSE).
    """
    if student.shape != teacher.shape or student.ndim != 2:
        raise ValueError(f"lrd_loss: student and teacher must both be (N, D), got {tuple(student.shape)} "
                         f"and {tuple(teacher.shape)}")
    return (student.float() - teacher.float()).pow(2).sum()


class DistillProjections(nn.Module):
    """The training-only projections into the teacher's space (the model's `distill` submodule).

    Attributes:
      acd: Linear(cif_dim -> acd_dim) with bias, or None when ACD is off (acd_dim 0).
      lrd: Linear(state_dim -> lrd_dim) with bias, or None when LRD is off (lrd_dim 0).
    """

    def __init__(self, cif_dim: int, acd_dim: int, state_dim: int, lrd_dim: int):
        super().__init__()
        self.acd = nn.Linear(cif_dim, acd_dim) if acd_dim > 0 else None
        self.lrd = nn.Linear(state_dim, lrd_dim) if lrd_dim > 0 else None


def collate_teacher(cuts: Sequence, field: str = TEACHER_FIELD) -> TeacherFeatures:
    """Load and pad the teacher arrays of a batch's cuts (one supervision each).

    Args:
      cuts: the batch's cuts, in supervision order.
    Returns:
      :class:`TeacherFeatures` (N, U_max, D) float32 and (N,) lengths.
    Raises:
      ValueError naming the first cut without the field, or one of another dimension.
    """
    arrays = []
    for cut in cuts:
        if not cut.has_custom(field):
            raise ValueError(
                f"Cut {cut.id} has no teacher features (custom field '{field}'): train on the manifest "
                f"local/extract_plm_feats.py wrote (--plm-manifest), which holds them for every cut"
            )
        arrays.append(torch.from_numpy(cut.load_custom(field)).float())
    dims = {a.shape[1] for a in arrays}
    if len(dims) > 1:
        raise ValueError(f"The teacher features of cuts {[c.id for c in cuts]} have different dimensions {dims}: "
                         f"they come from different PLMs; extract them again with one --plm-dir")
    lens = torch.tensor([a.shape[0] for a in arrays], dtype=torch.int64)
    feats = torch.nn.utils.rnn.pad_sequence(arrays, batch_first=True)
    return TeacherFeatures(feats, lens)


def teacher_dim(cuts, path, field: str = TEACHER_FIELD) -> int:
    """D of the teacher vectors in a cut manifest, from its first cut's array metadata (nothing loaded).

    Args:
      cuts: the manifest's cuts (lazy); path: its file, for the messages.
    Raises:
      ValueError naming the file and cut when the first cut has no teacher features.
    """
    first = next(iter(cuts), None)
    if first is None:
        raise ValueError(f"{path} holds no cuts")
    if not first.has_custom(field):
        raise ValueError(
            f"{path}: cut {first.id} has no teacher features (custom field '{field}'). --plm-manifest must be a "
            f"manifest written by local/extract_plm_feats.py (prepare.sh stage 7 with --plm-dir)"
        )
    shape = first.custom[field].shape
    if len(shape) != 2:
        raise ValueError(f"{path}: cut {first.id} has teacher features of shape {shape}, expected (U, D)")
    return int(shape[1])
