"""ScaledAdam optimizer and Eden learning-rate schedule, as used by icefall's Zipformer recipes.

ScaledAdam (Yao et al., "Zipformer", ICLR 2024, section 3.5) is Adam without bias correction on
the first moment, whose per-tensor step is multiplied by the tensor's RMS, so that every tensor
changes by a similar *relative* amount.  Alongside, it learns each tensor's scale in log space
(as if `p = p_unit * exp(s)`), subject to RMS limits, and it clips gradients against the median
recent gradient norm.  For the same hyper-parameters and gradients it follows the same parameter
trajectory as icefall's `egs/librispeech/ASR/zipformer/optim.py`, and it keeps its optimizer
state under the same keys, so optimizer states from icefall checkpoints load into it.

Per tensor `p` of a (stacked) shape batch, at step `t` (0-based), with `g` the (clipped) gradient:

    v      = beta2 * v + (1 - beta2) * g^2                       (state "exp_avg_sq")
    d      = -lr * g / (sqrt(v / (1 - beta2^(t+1))) + eps)       (bias correction while < 0.99)
    d      = d * max(rms(p), param_min_rms)                      (non-scalar tensors only)
    d      = d + p * size_step     every size_update_period steps (see `_add_size_step`)
    m      = beta1 * m + (1 - beta1) * d                         (state "delta")
    p      = p + m

Scalars (tensors with one element) use `lr * scalar_lr_scale`, no RMS scaling, and are clamped to
`[-scalar_max, scalar_max]`.

Eden sets, per batch and epoch,

    lr = base_lr * ((batch^2 + lr_batches^2) / lr_batches^2)^-0.25
                 * ((epoch^2 + lr_epochs^2) / lr_epochs^2)^-0.25 * warmup

where `warmup` rises linearly from `warmup_start` to 1 over `warmup_batches` batches.
"""
import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.optim import Optimizer

logger = logging.getLogger(__name__)

# Steps (besides multiples of clipping_update_period) at which the clipping threshold is
# re-estimated, so that clipping starts early in training rather than after a full period.
_EARLY_THRESHOLD_STEPS = (10, 20, 40)


@dataclass
class _ShapeBatch:
    """All parameters of one parameter group that share dtype and shape, stacked.

    Attributes:
      params: the real parameters, each of shape `S`.
      names: their names, for logs.
      stacked: `(B, *S)`, a copy of `params` stacked on a new leading dim.
      grad: `(B, *S)`, their gradients (zeros where a parameter has no gradient).
      state: the optimizer state of the whole batch; it lives in `optimizer.state[params[0]]`
        so that torch's `state_dict()` saves it.
    """

    params: List[Tensor]
    names: List[str]
    stacked: Tensor
    grad: Tensor
    state: Dict[str, Any]

    @property
    def is_scalar(self) -> bool:
        """True when every parameter in the batch has exactly one element."""
        return self.stacked.numel() == self.stacked.shape[0]


def _per_param_sum(x: Tensor) -> Tensor:
    """Sum over all dims but the first: `(B, *S)` -> `(B, 1, ..., 1)` (same ndim)."""
    return x.sum(dim=list(range(1, x.ndim)), keepdim=True)


def _per_param_rms(x: Tensor) -> Tensor:
    """Root-mean-square over all dims but the first: `(B, *S)` -> `(B, 1, ..., 1)`."""
    return (x**2).mean(dim=list(range(1, x.ndim)), keepdim=True).sqrt()


def _adam_direction(group: Dict[str, Any], batch: _ShapeBatch, grad: Tensor, step: int) -> Tensor:
    """Adam step with only the second moment: `-lr * g / (sqrt(v_hat) + eps)`, `(B, *S)`.

    Updates the state's `exp_avg_sq` `(B, *S)` in place.
    """
    lr = group["lr"]
    if batch.is_scalar:
        lr = lr * group["scalar_lr_scale"]
    beta2 = group["betas"][1]
    state = batch.state
    if "exp_avg_sq" not in state:
        state["exp_avg_sq"] = torch.zeros(
            batch.stacked.shape, device=batch.stacked.device, dtype=torch.float
        )
    exp_avg_sq = state["exp_avg_sq"]
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

    # Bias correction is dropped once it is within 1% of 1: it then barely matters, and icefall's
    # trajectory (which we reproduce) does the same.
    bias_correction2 = 1 - beta2 ** (step + 1)
    if bias_correction2 < 0.99:
        exp_avg_sq = exp_avg_sq * (1.0 / bias_correction2)
    denom = exp_avg_sq.sqrt().add_(group["eps"])
    return -lr * grad / denom


def _scale_by_param_rms(
    group: Dict[str, Any], batch: _ShapeBatch, grad: Tensor, step: int, delta: Tensor
) -> Tensor:
    """Multiply the step `delta` `(B, *S)` by each tensor's RMS; periodically learn the RMS.

    The RMS used is refreshed only every `size_update_period` steps (it changes slowly, and the
    reductions are not free); in between, `(p * g)` sums (the gradient w.r.t. a log-scale
    factor on `p`) are collected in `scale_grads` `(size_update_period, B, 1, ..., 1)`.
    """
    state = batch.state
    p = batch.stacked
    period = group["size_update_period"]
    if "param_rms" not in state:
        param_rms = _per_param_rms(p).to(torch.float)
        state["param_rms"] = param_rms
        state["scale_exp_avg_sq"] = torch.zeros_like(param_rms)
        state["scale_grads"] = torch.zeros(
            period, *param_rms.shape, dtype=torch.float, device=p.device
        )
    param_rms = state["param_rms"]

    slot = step % period
    state["scale_grads"][slot] = _per_param_sum(p * grad)
    end_of_period = slot == period - 1
    if end_of_period:
        param_rms.copy_(_per_param_rms(p))

    delta *= param_rms.clamp(min=group["param_min_rms"])
    if end_of_period and step > 0:
        _add_size_step(group, batch, step, delta)
    return delta


def _add_size_step(group: Dict[str, Any], batch: _ShapeBatch, step: int, delta: Tensor) -> None:
    """Add to `delta` `(B, *S)` a step that grows or shrinks each whole tensor.

    The log-scale of each tensor gets an Adam-like step (learning rate `lr * scalar_lr_scale`)
    from the summed `scale_grads` of the last period, clamped to +-0.1 per update, never
    shrinking a tensor whose RMS is below `param_min_rms` nor growing one past `param_max_rms`.
    """
    state = batch.state
    period = group["size_update_period"]
    param_rms = state["param_rms"]
    scale_grads = state["scale_grads"]
    # One moment update per period, so the decay per update is beta2 ** period.
    beta2_period = group["betas"][1] ** period
    state["scale_exp_avg_sq"].mul_(beta2_period).add_(
        (scale_grads**2).mean(dim=0), alpha=1 - beta2_period
    )
    num_size_updates = (step + 1) // period
    bias_correction2 = 1 - beta2_period**num_size_updates
    denom = state["scale_exp_avg_sq"].sqrt() + group["eps"]
    size_lr = group["lr"] * group["scalar_lr_scale"]
    # icefall multiplies by sqrt(bias_correction2) (a slower start) where Adam would divide;
    # kept for an identical trajectory.
    scale_step = -size_lr * (bias_correction2**0.5) * scale_grads.sum(dim=0) / denom
    scale_step.masked_fill_(param_rms < group["param_min_rms"], 0.0)
    scale_step.clamp_(min=-0.1, max=0.1)
    scale_step = torch.minimum(scale_step, (group["param_max_rms"] - param_rms) / param_rms)
    delta.add_(batch.stacked * scale_step)


def _momentum(group: Dict[str, Any], batch: _ShapeBatch, delta: Tensor) -> Tensor:
    """First-moment average of the steps, without bias correction, `(B, *S)`.

    Skipping the correction only slows the first ~10 updates, which helps stability.
    """
    state = batch.state
    if "delta" not in state:
        state["delta"] = torch.zeros(
            batch.stacked.shape, device=batch.stacked.device, dtype=torch.float
        )
    beta1 = group["betas"][0]
    return state["delta"].mul_(beta1).add_(delta, alpha=1 - beta1)


ParamsT = Union[Iterable[Tensor], Iterable[Tuple[str, Tensor]], Iterable[Dict[str, Any]]]


class ScaledAdam(Optimizer):
    """Adam with updates proportional to each tensor's RMS, learned tensor scales and clipping.

    Args:
      params: what to optimize, as any of: an iterable of parameters (`model.parameters()`); an
        iterable of `(name, parameter)` (`model.named_parameters()`: the names appear in the
        clipping logs); a list of parameter-group dicts with `"params"` (parameters or
        `(name, parameter)` pairs) or icefall's `"named_params"`, plus per-group options such as
        `"lr"`.
      lr: learning rate; with Eden, the base learning rate (icefall uses 0.045 for Zipformer).
      clipping_scale: if set (icefall: 2.0), the whole group's gradient, each tensor's gradient
        multiplied by its RMS (scalars: by `scalar_lr_scale`), is scaled down to have norm at
        most `clipping_scale` times the median norm of the last `clipping_update_period` steps.
      betas: `(beta1, beta2)`: momentum and second-moment decay, `0 <= beta1 <= beta2 < 1`.
      scalar_lr_scale: learning-rate factor for scalar parameters and for tensor scales.
      eps: added to the denominators.
      param_min_rms: the RMS used to scale a step is at least this; tensor scales below it
        are not shrunk further.
      param_max_rms: tensor scales are not grown past this RMS.
      scalar_max: scalar parameters are clamped to `[-scalar_max, scalar_max]`.
      size_update_period: steps between updates of each tensor's RMS and scale.
      clipping_update_period: steps between re-estimates of the clipping threshold.

    Parameters that share dtype and shape are stacked and updated together (fewer, larger
    kernels).  Parameters without a gradient are updated as if their gradient were zero (their
    momentum keeps moving them), as in icefall.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 3e-02,
        clipping_scale: Optional[float] = None,
        betas: Tuple[float, float] = (0.9, 0.98),
        scalar_lr_scale: float = 0.1,
        eps: float = 1.0e-08,
        param_min_rms: float = 1.0e-05,
        param_max_rms: float = 3.0,
        scalar_max: float = 10.0,
        size_update_period: int = 4,
        clipping_update_period: int = 100,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"ScaledAdam: lr must be >= 0, got {lr}")
        if not 0.0 <= betas[0] <= betas[1] < 1.0:
            raise ValueError(f"ScaledAdam: betas must satisfy 0 <= beta1 <= beta2 < 1, got {betas}")
        if clipping_scale is not None and clipping_scale <= 0.0:
            raise ValueError(
                f"ScaledAdam: clipping_scale must be > 0 (or None to disable clipping), got {clipping_scale}"
            )
        if size_update_period < 1 or clipping_update_period < 1:
            raise ValueError(
                "ScaledAdam: size_update_period and clipping_update_period must be >= 1, got "
                f"{size_update_period} and {clipping_update_period}"
            )
        defaults = dict(
            lr=lr,
            clipping_scale=clipping_scale,
            betas=betas,
            scalar_lr_scale=scalar_lr_scale,
            eps=eps,
            param_min_rms=param_min_rms,
            param_max_rms=param_max_rms,
            scalar_max=scalar_max,
            size_update_period=size_update_period,
            clipping_update_period=clipping_update_period,
        )
        super().__init__(self._normalize_params(params), defaults)

    @staticmethod
    def _normalize_params(params: ParamsT) -> List[Any]:
        """Accept icefall's `{"named_params": ...}` groups by turning them into torch's form.

        torch's Optimizer itself understands `(name, tensor)` pairs (it keeps the names in each
        group's `"param_names"`), so only the icefall-specific key needs rewriting.
        """
        items = list(params)
        if not items:
            raise ValueError("ScaledAdam got an empty parameter list: pass model.parameters() or "
                             "model.named_parameters() of a model with parameters")
        groups = []
        for item in items:
            if isinstance(item, dict) and "named_params" in item:
                if "params" in item:
                    raise ValueError("a ScaledAdam parameter group has both 'params' and "
                                     "'named_params'; give only one of them")
                group = {k: v for k, v in item.items() if k != "named_params"}
                group["params"] = list(item["named_params"])
                groups.append(group)
            else:
                groups.append(item)
        return groups

    def _stack_by_shape(self, group_index: int, group: Dict[str, Any]) -> List[_ShapeBatch]:
        """Group the parameters of one group by (dtype, shape), in sorted key order.

        The order is fixed (sorted keys) because it decides where each batch's state lives and
        the summation order of the clipping norm, both of which must not depend on how the
        model happens to list its parameters.
        """
        names = group.get("param_names") or [
            f"param_groups[{group_index}][{i}]" for i in range(len(group["params"]))
        ]
        by_key: Dict[Tuple[Any, ...], Tuple[List[Tensor], List[str]]] = {}
        for p, name in zip(group["params"], names):
            if p.grad is not None and p.grad.is_sparse:
                raise RuntimeError(f"ScaledAdam does not support sparse gradients (parameter {name}); "
                                   "use a dense embedding (sparse=False)")
            members, member_names = by_key.setdefault((str(p.dtype), *p.shape), ([], []))
            members.append(p)
            member_names.append(name)
        batches = []
        for key in sorted(by_key):
            members, member_names = by_key[key]
            grad = torch.stack([torch.zeros_like(p) if p.grad is None else p.grad for p in members])
            batches.append(
                _ShapeBatch(
                    params=members,
                    names=member_names,
                    stacked=torch.stack(members),
                    grad=grad,
                    state=self.state[members[0]],
                )
            )
        return batches

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        """Perform one optimization step.

        Args:
          closure: optional; re-evaluates the model and returns the loss.
        Returns:
          the closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group_index, group in enumerate(self.param_groups):
            batches = self._stack_by_shape(group_index, group)
            grad_factor = self._clipping_factor(group, batches)
            for batch in batches:
                self._update_batch(group, batch, grad_factor)
            for batch in batches:
                for p, new_value in zip(batch.params, batch.stacked):
                    p.copy_(new_value)
        return loss

    def _update_batch(self, group: Dict[str, Any], batch: _ShapeBatch, grad_factor: float) -> None:
        """Apply one ScaledAdam step to the stacked parameters of `batch` (in `batch.stacked`)."""
        state = batch.state
        step = state.setdefault("step", 0)
        grad = batch.grad if grad_factor == 1.0 else batch.grad.mul_(grad_factor)
        delta = _adam_direction(group, batch, grad, step)
        if not batch.is_scalar:
            delta = _scale_by_param_rms(group, batch, grad, step, delta)
        batch.stacked += _momentum(group, batch, delta)
        if batch.is_scalar:
            batch.stacked.clamp_(min=-group["scalar_max"], max=group["scalar_max"])
        state["step"] = step + 1

    def _clipping_factor(self, group: Dict[str, Any], batches: List[_ShapeBatch]) -> float:
        """The factor in [0, 1] by which to scale this group's gradients before the update.

        The norm of each step is recorded in the state of the first batch ("model_norms"); the
        threshold ("model_norm_threshold") is `clipping_scale` times their median, re-estimated
        every `clipping_update_period` steps and, with a doubled threshold on the still-short
        history, at steps 10, 20 and 40.  Before the first estimate there is no clipping.
        """
        clipping_scale = group["clipping_scale"]
        head = batches[0].state
        step = head.get("step", 0)
        # Step 0: the other batches have no "param_rms" yet, and there is no history anyway.
        if clipping_scale is None or step == 0:
            return 1.0

        scalar_lr_scale = group["scalar_lr_scale"]
        tot_sumsq = torch.tensor(0.0, device=batches[0].stacked.device)
        for batch in batches:
            if batch.is_scalar:
                tot_sumsq += (batch.grad**2).sum() * (scalar_lr_scale**2)
            else:
                tot_sumsq += ((batch.grad * batch.state["param_rms"]) ** 2).sum()
        tot_norm = tot_sumsq.sqrt()

        period = group["clipping_update_period"]
        if "model_norms" not in head:
            head["model_norms"] = torch.zeros(period, device=tot_norm.device)
        head["model_norms"][step % period] = tot_norm
        early_steps = [s for s in _EARLY_THRESHOLD_STEPS if s < period]
        if step % period == 0 or step in early_steps:
            self._estimate_threshold(clipping_scale, head, step, early=step in early_steps)

        if "model_norm_threshold" not in head:
            return 1.0
        threshold = head["model_norm_threshold"]
        factor = min(1.0, (threshold / (tot_norm + 1.0e-20)).item())
        if factor != factor:  # NaN: the gradient is not finite
            factor = 0.0
        if factor < 1.0:
            head["num_clipped"] += 1
        if factor < 0.5:
            logger.warning(f"Scaling gradients by {factor}, model_norm_threshold={threshold}")
            self._log_gradient_outliers(group, batches, tot_sumsq)
        if factor == 0.0:
            # Multiplying by 0 would keep inf/NaN (0 * inf = NaN); clear the gradients instead.
            for batch in batches:
                batch.grad.zero_()
        return factor

    @staticmethod
    def _estimate_threshold(clipping_scale: float, head: Dict[str, Any], step: int, early: bool) -> None:
        """Set head["model_norm_threshold"] from the recorded norms and log their quartiles."""
        sorted_norms = head["model_norms"].sort().values.to("cpu")
        if early:
            # Only steps 1..step have been recorded; the rest are the initial zeros.
            sorted_norms = sorted_norms[-step:]
        num_norms = sorted_norms.numel()
        quartiles = [
            sorted_norms[min(num_norms - 1, (num_norms // 4) * k)].item() for k in range(5)
        ]
        median = quartiles[2]
        if median - median != 0:
            raise RuntimeError(
                f"ScaledAdam: the median gradient norm over recent steps is {median}: most recent "
                "gradients were not finite; lower the learning rate or check the loss for inf/NaN"
            )
        threshold = clipping_scale * median
        if early:
            # The norm still changes fast at the start of training: be lenient.
            threshold = threshold * 2.0
        head["model_norm_threshold"] = threshold
        percent_clipped = head["num_clipped"] * 100.0 / num_norms if "num_clipped" in head else 0.0
        head["num_clipped"] = 0
        logger.info(
            f"Clipping_scale={clipping_scale}, grad-norm quartiles "
            f"{' '.join('%.3e' % q for q in quartiles)}, threshold={threshold:.3e}, "
            f"percent-clipped={percent_clipped:.1f}"
        )

    @staticmethod
    def _log_gradient_outliers(group: Dict[str, Any], batches: List[_ShapeBatch], tot_sumsq: Tensor) -> None:
        """Log which parameters dominate the clipped gradient norm and whose gradient is most
        unusually large compared with its running average, to help find the cause of a spike."""
        scalar_lr_scale = group["scalar_lr_scale"]
        shares: List[Tuple[float, str]] = []
        ratios: List[Tuple[float, str]] = []
        for batch in batches:
            weight = scalar_lr_scale if batch.is_scalar else batch.state["param_rms"]
            flat_sumsq = ((batch.grad * weight) ** 2).reshape(len(batch.params), -1).sum(dim=1)
            flat_grad_ms = (batch.grad**2).reshape(len(batch.params), -1).mean(dim=1)
            flat_usual_ms = batch.state["exp_avg_sq"].reshape(len(batch.params), -1).mean(dim=1)
            # nan_to_num: 0/0 for parameters that never had a gradient would spoil the sort.
            shares += zip((flat_sumsq / tot_sumsq).nan_to_num(nan=0.0).tolist(), batch.names)
            ratios += zip((flat_grad_ms / flat_usual_ms).sqrt().nan_to_num(nan=0.0).tolist(), batch.names)
        top_shares = ", ".join(f"{name} ({share:.2f})" for share, name in sorted(shares, reverse=True)[:3])
        top_ratios = ", ".join(f"{name} ({ratio:.3g})" for ratio, name in sorted(ratios, reverse=True)[:3])
        logger.warning(f"Largest shares of the gradient norm: {top_shares}")
        logger.warning(f"Largest gradient / usual gradient (RMS ratio): {top_ratios}")


class LRScheduler:
    """Base class for schedules whose learning rate depends on both the batch and the epoch.

    Unlike torch's schedulers it is stepped with `step_batch()` after every batch and
    `step_epoch()` at every epoch; both may also set the index directly.  Subclasses implement
    `get_lr()` from `self.batch`, `self.epoch` and `self.base_lrs`.
    """

    def __init__(self, optimizer: Optimizer, verbose: bool = False) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not a torch.optim.Optimizer")
        self.optimizer = optimizer
        self.verbose = verbose
        # "base_lr" survives optimizer.state_dict() round trips, so a restored optimizer keeps
        # its original base learning rate even though "lr" has since been scheduled.
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        self.base_lrs = [group["base_lr"] for group in optimizer.param_groups]
        self.epoch = 0
        self.batch = 0
        self._last_lr = [group["lr"] for group in optimizer.param_groups]

    def state_dict(self) -> Dict[str, Any]:
        """The scheduler's position: `{"epoch": int, "batch": int}`.

        Base learning rates are not saved, so a run may be resumed with a different --base-lr.
        """
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore the position saved by `state_dict()` (other keys, e.g. `base_lrs` from old
        icefall checkpoints, are ignored)."""
        missing = [k for k in ("epoch", "batch") if k not in state_dict]
        if missing:
            raise KeyError(f"scheduler state_dict lacks {missing}: pass the dict saved by "
                           "scheduler.state_dict()")
        self.epoch = state_dict["epoch"]
        self.batch = state_dict["batch"]

    def get_last_lr(self) -> List[float]:
        """The learning rate of each parameter group, as last set (the optimizer's before any step)."""
        return self._last_lr

    def get_lr(self) -> List[float]:
        """The learning rate of each parameter group for the current batch and epoch."""
        raise NotImplementedError(f"{type(self).__name__} must implement get_lr()")

    def step_batch(self, batch: Optional[int] = None) -> None:
        """Advance the batch index by one, or set it to `batch` (counted from the start of
        training, over all epochs), and update the learning rates."""
        self.batch = self.batch + 1 if batch is None else batch
        self._set_lrs()

    def step_epoch(self, epoch: Optional[int] = None) -> None:
        """Advance the epoch index by one (call at the end of an epoch), or set it to `epoch`
        (call at the start of that epoch), and update the learning rates."""
        self.epoch = self.epoch + 1 if epoch is None else epoch
        self._set_lrs()

    def _set_lrs(self) -> None:
        lrs = self.get_lr()
        if len(lrs) != len(self.optimizer.param_groups):
            raise RuntimeError(f"{type(self).__name__}.get_lr() returned {len(lrs)} values for "
                               f"{len(self.optimizer.param_groups)} parameter groups")
        for i, (group, lr) in enumerate(zip(self.optimizer.param_groups, lrs)):
            group["lr"] = lr
            if self.verbose:
                logger.info(f"Epoch={self.epoch}, batch={self.batch}: adjusting learning rate of "
                            f"group {i} to {lr:.4e}.")
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


class Eden(LRScheduler):
    """Eden schedule: decay in both batches and epochs, after a linear warm-up.

        lr = base_lr * ((batch^2 + lr_batches^2) / lr_batches^2)^-0.25
                     * ((epoch^2 + lr_epochs^2) / lr_epochs^2)^-0.25 * warmup,
        warmup = warmup_start + (1 - warmup_start) * batch / warmup_batches  while
                 batch < warmup_batches, else 1.

    Args:
      optimizer: the optimizer whose groups' "lr" is set; each group's current "lr" becomes its
        "base_lr" (unless it already has one).
      lr_batches: batches after which the rate decays noticeably (icefall: 7500).
      lr_epochs: epochs after which the rate decays noticeably (icefall LibriSpeech: 3.5).
        Without a notion of epochs, any measure of data seen works (e.g. hours).
      warmup_batches: length of the linear warm-up in batches.
      warmup_start: the warm-up factor at batch 0, in [0, 1].
      verbose: log every learning-rate change.

    The learning rates change only when `step_batch()` or `step_epoch()` is called; icefall's
    training loop calls `step_epoch(epoch - 1)` at the start of each epoch (1-based `epoch`) and
    `step_batch()` after each optimizer step.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        lr_batches: Union[int, float],
        lr_epochs: Union[int, float],
        warmup_batches: Union[int, float] = 500.0,
        warmup_start: float = 0.5,
        verbose: bool = False,
    ) -> None:
        if lr_batches <= 0 or lr_epochs <= 0:
            raise ValueError(f"Eden: lr_batches and lr_epochs must be > 0, got {lr_batches} and {lr_epochs}")
        if warmup_batches < 0:
            raise ValueError(f"Eden: warmup_batches must be >= 0, got {warmup_batches}")
        if not 0.0 <= warmup_start <= 1.0:
            raise ValueError(f"Eden: warmup_start must be in [0, 1], got {warmup_start}")
        super().__init__(optimizer, verbose)
        self.lr_batches = lr_batches
        self.lr_epochs = lr_epochs
        self.warmup_batches = warmup_batches
        self.warmup_start = warmup_start

    def get_lr(self) -> List[float]:
        factor = ((self.batch**2 + self.lr_batches**2) / self.lr_batches**2) ** -0.25 * (
            ((self.epoch**2 + self.lr_epochs**2) / self.lr_epochs**2) ** -0.25
        )
        if self.batch >= self.warmup_batches:
            warmup = 1.0
        else:
            warmup = self.warmup_start + (1.0 - self.warmup_start) * (self.batch / self.warmup_batches)
        return [base_lr * factor * warmup for base_lr in self.base_lrs]
