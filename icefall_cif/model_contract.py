"""The contract between a recipe's model and the shared train, validate and decode loops.

The loops use a model only through :class:`CifModel` and its decoder head, a
:class:`DecoderHead`; they never reach into submodules by name. A recipe's model provides:

    fbank (N, T, 80) --forward_encoder--> encoder_out (N, T', C), encoder_out_lens (N,)
          encoder_out --ctc_log_probs--> (N, T', V)
          encoder_out --forward_cif--> CifPredictorOutput: cif (N, U, C), cif_lens, alpha, fire_frames
          cif vectors --head--> loss terms, greedy tokens, beam hypotheses

and one head class per `--decoder-type`: the transducer, AR CE, NAR CE and Mask-CTC heads of
`egs/librispeech/ASR/zipformer_cif/`. The decoding methods a model offers follow from its head
(:func:`decoding_methods`). A head that decodes from the CTC head's output (Mask-CTC) sets
:attr:`DecoderHead.reads_ctc`; the searches then get `model.ctc_log_probs(encoder_out)` from the
decode dispatch as the keyword argument `ctc_log_probs`.

Example (the loops' view of one batch)::

    losses = model(x, x_lens, token_ids, loss_config)                 # unweighted
    losses = model(x, x_lens, token_ids, loss_config, teacher=teacher)  # + ACD/LRD (icefall_cif.distill)
    losses = model(x, x_lens, token_ids, loss_config, kd=kd_targets)  # + frame/sequence KD (icefall_cif.kd)
    loss = weighted_loss(model, losses, loss_config, batch_idx_train)  # ctc, quantity + the head's
    encoder_out, lens = model.forward_encoder(x, x_lens)
    cif_out = model.forward_cif(encoder_out, lens)
    tokens, cif_index = model.head.greedy_search(cif_out.cif, cif_out.cif_lens, encoder_out, lens, 3,
                                                 **cif_out.head_inputs())

`cif_out.head_inputs()` is empty except for a CE head with a CTC prior (`--ce-ctc-prior-scale`),
whose searches take `token_prior`, the CTC log-probs at the vectors' spikes.
"""
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Dict, List, Optional, Protocol, Tuple, runtime_checkable

import torch
from torch import nn

from icefall_cif.cif import CifPredictorOutput
from icefall_cif.config import LossConfig
from icefall_cif.decode.mask_predict import MaskPredictOptions
from icefall_cif.distill import TeacherFeatures
from icefall_cif.utils import make_pad_mask

if TYPE_CHECKING:  # icefall_cif.kd builds on this module
    from icefall_cif.kd import KdTargets

#: The CTC head's methods: every model has the auxiliary CTC head.
CTC_METHODS: Tuple[str, ...] = ("ctc_greedy_search", "ctc_prefix_beam_search")
#: The head's beam n-best rescored with the CTC head's log-likelihood (`--ctc-weight`).
JOINT_BEAM_METHOD = "joint_beam_search"
#: The CTC head's prefix-beam n-best rescored by the CIF decoder (models whose decoder scores any
#: hypothesis: the transducer, or a CE head over CTC-cut vectors).
CIF_RESCORING_METHOD = "cif_rescoring"


class DecoderHead(nn.Module, ABC):
    """A decoder over CIF vectors: its loss, its greedy search and its beam search.

    Subclasses set :attr:`name` (the `--decoder-type` value), :attr:`beam_methods` (the
    `--decoding-method` names its :meth:`beam_search` serves; a name ending in
    `_lm_shallow_fusion` is the same search with an LM) and :attr:`loss_names`; heads with
    mask-predict searches also :attr:`mask_predict_methods`.
    """

    name: ClassVar[str]
    beam_methods: ClassVar[Tuple[str, ...]]
    loss_names: ClassVar[Tuple[str, ...]]
    #: The `--decoding-method` names :meth:`mask_predict_search` serves (its unsure tokens
    #: re-predicted, icefall_cif.decode.mask_predict); a name containing `beam_search` keeps an n-best.
    mask_predict_methods: ClassVar[Tuple[str, ...]] = ()
    #: The threshold and rounds of those searches when decode.py is given no `--mask-threshold` /
    #: `--mask-iterations` (each head's were chosen on the demo's dev sets; ESPnet's 0.999 / 10
    #: mask most tokens of a demo-sized model).
    mask_predict_defaults: ClassVar[MaskPredictOptions] = MaskPredictOptions()
    #: The mask-predict method that `greedy_search` stands for, so that it reads the same options
    #: (Mask-CTC has no search over CIF vectors); None: :meth:`greedy_search` itself.
    greedy_mask_predict_method: ClassVar[Optional[str]] = None
    #: Whether the searches read the CTC head's output. If so, the decode dispatch passes
    #: `ctc_log_probs=model.ctc_log_probs(encoder_out)`, (N, T', V), to :meth:`greedy_search` and
    #: :meth:`mask_predict_search`, and the index :meth:`greedy_search` returns is each token's
    #: encoder frame instead of its CIF vector.
    reads_ctc: ClassVar[bool] = False
    blank_id: int
    vocab_size: int
    #: Width of the states :meth:`loss_and_token_states` returns (what LRD projects from).
    token_state_dim: int
    #: Whether :meth:`sequence_log_probs` scores token sequences of any length over the same CIF
    #: vectors (a transducer can; a CE head emits exactly one token per vector).
    scores_any_length: ClassVar[bool] = False
    #: Whether :meth:`aligned_log_probs` scores a token sequence on exactly one vector per token,
    #: cut for that sequence (the CE heads; with CTC-cut vectors this makes cif_rescoring apply).
    scores_aligned_tokens: ClassVar[bool] = False

    def aligned_log_probs(
        self,
        cif_out: CifPredictorOutput,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
    ) -> torch.Tensor:
        """(N,) sum over u < y_lens[i] of log p(y_iu | vectors, ...), for heads with
        :attr:`scores_aligned_tokens`; `cif_out` has exactly y_lens[i] vectors per row."""
        raise NotImplementedError(f"the {self.name} head does not score one token per vector")

    def sequence_log_probs(
        self, cif: torch.Tensor, cif_lens: torch.Tensor, y_padded: torch.Tensor, y_lens: torch.Tensor
    ) -> torch.Tensor:
        """(N,) log p(y_i | CIF vectors of utterance i), for heads with :attr:`scores_any_length`.

        Args:
          cif: (N, U', C) CIF vectors at inference; cif_lens (N,).
          y_padded: (N, U) token ids padded with blank; y_lens (N,).
        """
        raise NotImplementedError(f"the {self.name} head does not score sequences of any length")

    @abstractmethod
    def loss(
        self,
        cif_out: CifPredictorOutput,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
        config: LossConfig,
    ) -> Dict[str, torch.Tensor]:
        """Unweighted loss terms, each summed over the batch.

        Args:
          cif_out: the CIF layer's output with exactly y_lens[i] vectors per utterance.
          encoder_out: (N, T', C) encoder frames; encoder_out_lens (N,).
          y_padded: (N, U) target ids padded with blank; y_lens (N,).
          config: the training-only loss settings.
        Returns:
          {name: scalar}, names among :attr:`loss_names` (optional terms only when enabled).
        """

    def loss_and_token_states(
        self,
        cif_out: CifPredictorOutput,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
        config: LossConfig,
    ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        """:meth:`loss`, and at each target position the state that enters the head's vocabulary
        projection (linguistic regression distillation, icefall_cif.distill, regresses it).

        Returns:
          the losses of :meth:`loss`, and (N, U, :attr:`token_state_dim`) states, teacher-forced
          with token u-1 and CIF vector u at position u (rows u >= y_lens[i] are padding).
        """
        raise NotImplementedError(f"the {self.name} head does not expose its token states")

    @staticmethod
    @abstractmethod
    def loss_weights(config: LossConfig, batch_idx_train: int) -> Dict[str, float]:
        """{loss name: weight} at global batch `batch_idx_train` (warm-up schedules live here)."""

    @abstractmethod
    def greedy_search(
        self,
        cif: torch.Tensor,
        cif_lens: torch.Tensor,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        max_sym_per_frame: int,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Batched greedy search.

        Args:
          cif: (N, U, C) CIF vectors; cif_lens (N,).
          encoder_out: (N, T', C) frames (for heads that attend to them); encoder_out_lens (N,).
          max_sym_per_frame: the most tokens one CIF vector may emit (heads that emit exactly
            one token per vector ignore it).
        Returns:
          tokens (N, L) and the CIF vector each token came from (N, L), -1 (and any token id)
          where no token was emitted. A head with :attr:`reads_ctc` takes the keyword argument
          `ctc_log_probs` (N, T', V) and returns the encoder frame of each token instead of
          its CIF vector.
        """

    @abstractmethod
    def beam_search(
        self,
        cif: torch.Tensor,
        cif_lens: torch.Tensor,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        beam_size: int,
        lm: Optional[Any],
        lm_scale: float,
        max_sym_per_frame: int,
    ) -> List[List[Any]]:
        """Batched beam search, with LM shallow fusion when `lm` is given.

        Returns:
          per utterance, its hypotheses (`icefall_cif.decode.beam_search.Hypothesis`), best first.
        """

    def token_logits(
        self,
        cif_out: CifPredictorOutput,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
    ) -> torch.Tensor:
        """(N, U, V) logits of reference token u at each target position u, teacher-forced (CIF
        vector u and the tokens before u): what a knowledge-transfer teacher gives (icefall_cif.kd).

        Args: as :meth:`loss`, with exactly y_lens[i] CIF vectors per utterance.
        """
        raise NotImplementedError(f"the {self.name} head cannot be a sequence-level teacher (it has no token_logits)")

    def loss_and_token_logits(
        self,
        cif_out: CifPredictorOutput,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
        config: LossConfig,
    ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """:meth:`loss`, the (N, U, V) logits the head predicted the reference tokens with, and the
        (N, U) bool positions it predicted (a knowledge-transfer student's side, icefall_cif.kd).

        This default runs :meth:`token_logits` after the loss and counts every valid position; a
        head whose loss already computes these logits returns those (the CE heads, and Mask-CTC at
        its masked positions).
        """
        losses = self.loss(cif_out, encoder_out, encoder_out_lens, y_padded, y_lens, config)
        logits = self.token_logits(cif_out, encoder_out, encoder_out_lens, y_padded, y_lens)
        return losses, logits, ~make_pad_mask(y_lens, y_padded.size(1))

    def mask_predict_search(
        self,
        method: str,
        cif: torch.Tensor,
        cif_lens: torch.Tensor,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        options: MaskPredictOptions,
        ctc_log_probs: Optional[torch.Tensor] = None,
    ) -> List[List[Any]]:
        """A mask-predict search, one of :attr:`mask_predict_methods`: a first guess, its tokens
        with a confidence below `options.threshold` re-predicted in at most `options.iterations`
        rounds (greedy, or with a beam of `options.beam_size` when `method` contains `beam_search`).

        Args:
          method: the `--decoding-method` name.
          cif: (N, U, C) CIF vectors; cif_lens (N,).
          encoder_out: (N, T', C) frames; encoder_out_lens (N,).
          ctc_log_probs: (N, T', V), given to heads with :attr:`reads_ctc`.
        Returns:
          per utterance, its hypotheses (`Hypothesis`) best first, scored by the summed log-probs
          of the re-predicted tokens (one hypothesis for a greedy method).
        """
        raise NotImplementedError(f"the {self.name} head has no mask-predict search")


@runtime_checkable
class CifModel(Protocol):
    """What the shared loops need of a CIF speech recognizer (see the module docstring).

    Training-only modules (the distillation projections) live under the submodule `distill`
    (state-dict keys `distill.*`, :data:`icefall_cif.distill.TRAINING_ONLY_PREFIX`), built from
    config fields marked `"training_only": True`; decoding never uses them and the exports drop
    them (:func:`icefall_cif.export.inference_model`).

    Attributes:
      head: the :class:`DecoderHead` over the CIF vectors.
      blank_id: CTC/transducer blank and start symbol; vocab_size: tokens, blank included.
      cif_downsample_factor: encoder frames per CIF frame (token timestamps are fire frames
        times this, in encoder frames).
    """

    head: DecoderHead
    blank_id: int
    vocab_size: int
    cif_downsample_factor: int

    def forward(
        self,
        x: torch.Tensor,
        x_lens: torch.Tensor,
        y: List[List[int]],
        loss_config: LossConfig,
        teacher: Optional[TeacherFeatures] = None,
        kd: Optional["KdTargets"] = None,
    ) -> Dict[str, torch.Tensor]:
        """(N, T, F) features, (N,) lengths, N token lists -> unweighted losses summed over the batch.

        `teacher`: the batch's (N, U, D) teacher vectors, one row per token of `y`; needed (and
        only read) when `loss_config` turns distillation on, which adds "acd_loss" / "lrd_loss".
        `kd`: a trained teacher model's outputs on the batch (icefall_cif.kd.KdTargets); needed (and
        only read) when `loss_config` turns knowledge transfer on, which adds "kd_frame_loss" /
        "kd_seq_loss" / "kd_nbest_loss".
        """

    def forward_encoder(self, x: torch.Tensor, x_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(N, T, F), (N,) -> encoder_out (N, T', C), encoder_out_lens (N,)."""

    def forward_cif(
        self,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        target_lengths: Optional[torch.Tensor] = None,
        targets: Optional[torch.Tensor] = None,
        ctc_log_probs: Optional[torch.Tensor] = None,
    ) -> CifPredictorOutput:
        """CIF over the encoder frames; with target_lengths (training) it yields exactly that many
        vectors. targets (N, U): the padded reference, which a model that cuts its vectors at the
        CTC head's forced alignment needs in training. ctc_log_probs (N, T', V): the CTC head's
        output on encoder_out when the caller has it, so that such a model need not recompute it."""

    def ctc_log_probs(self, encoder_out: torch.Tensor) -> torch.Tensor:
        """(N, T', C) -> (N, T', V) CTC log-probs."""

    @property
    def scores_hypotheses(self) -> bool:
        """Whether :meth:`hypothesis_log_probs` (and with it `cif_rescoring`) applies."""

    def hypothesis_log_probs(
        self,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
        utt_index: torch.Tensor,
    ) -> torch.Tensor:
        """(H,) log p_CIF(y_h | utterance utt_index[h]): the CIF decoder's score of hypotheses
        (y_padded (H, U) padded with blank, y_lens (H,)) of the N utterances of encoder_out
        (N, T', C), comparable across hypotheses of different lengths on the same utterance."""

    def num_output_frames(self, num_frames: torch.Tensor) -> torch.Tensor:
        """(N,) feature frames (100 Hz) -> (N,) frames the CIF layer integrates over.

        The exact lengths `forward_cif` sees: cut filtering (a cut needs at least as many of
        these frames as tokens) and the per-frame loss figures use it.
        """

    def set_batch_count(self, batch_count: float) -> None:
        """Where training is, in reference batches (drives the encoder's schedules)."""

    def adaptive_state(self) -> Dict[str, Any]:
        """Module state that adapts during training but is not in `state_dict()` (for exact resume)."""

    def load_adaptive_state(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`adaptive_state` returned."""


def check_model(model: Any) -> None:
    """Raise TypeError naming what is missing when `model` does not fulfil :class:`CifModel`."""
    if not isinstance(model, CifModel):
        members = [*CifModel.__annotations__, *(n for n in vars(CifModel) if callable(getattr(CifModel, n))
                                                and not n.startswith("_"))]
        missing = [name for name in members if not hasattr(model, name)]
        raise TypeError(f"{type(model).__name__} is not a CifModel: it lacks {missing}")
    if not isinstance(model.head, DecoderHead):
        raise TypeError(f"{type(model).__name__}.head is a {type(model.head).__name__}, not a DecoderHead")


def decoding_methods(model: CifModel) -> List[str]:
    """The `--decoding-method` names that apply to `model`: greedy, its head's beams and
    mask-predict searches, the joint CIF + CTC methods (joint_beam_search rescores the head's beam,
    so only a head with beam methods offers it), the CTC head's."""
    head = model.head
    joint = ([JOINT_BEAM_METHOD] if head.beam_methods else []) + ([CIF_RESCORING_METHOD] if model.scores_hypotheses else [])
    return ["greedy_search", *head.beam_methods, *head.mask_predict_methods, *joint, *CTC_METHODS]


def loss_weights(model: CifModel, config: LossConfig, batch_idx_train: int) -> Dict[str, float]:
    """{loss name: weight}: the CTC, quantity (and CIF alignment) losses first, then the head's terms,
    then the knowledge-transfer and distillation terms that are on."""
    weights = {"ctc_loss": config.ctc_loss_scale, "quantity_loss": config.quantity_loss_scale}
    if config.cif_align_loss_scale > 0:
        weights["cif_align_loss"] = config.cif_align_loss_scale
    distill = {}
    if config.kd_frame_scale > 0:
        distill["kd_frame_loss"] = config.kd_frame_scale
    if config.kd_seq_scale > 0:
        distill["kd_seq_loss"] = config.kd_seq_scale
    if config.kd_nbest > 0:
        distill["kd_nbest_loss"] = config.kd_seq_scale
    if config.acd_loss_scale > 0:
        distill["acd_loss"] = config.acd_loss_scale
    if config.lrd_loss_scale > 0:
        distill["lrd_loss"] = config.lrd_loss_scale
    return {**weights, **model.head.loss_weights(config, batch_idx_train), **distill}


def weighted_loss(
    model: CifModel, losses: Dict[str, torch.Tensor], config: LossConfig, batch_idx_train: int
) -> torch.Tensor:
    """The total to back-propagate: each of `model`'s losses times its weight at this batch."""
    weights = loss_weights(model, config, batch_idx_train)
    return sum(weights[name] * losses[name] for name in weights)
