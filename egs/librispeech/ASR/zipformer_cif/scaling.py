"""Building blocks of the Zipformer2 encoder (Yao et al., ICLR 2024), icefall-compatible.

Three kinds of pieces live here:

- forward-pass modules: `BiasNorm`, `SwooshL` / `SwooshR` (and their ONNX forms),
  `ActivationDropoutAndLinear`, `ChunkCausalDepthwiseConv1d`, `ScaledLinear` / `ScaledConv2d`
  (plain `nn.Linear` / `nn.Conv2d` with a smaller initialisation), dropout variants;
- training-time regularisers that leave the forward pass unchanged and only edit gradients:
  `Balancer` (per-channel sign/magnitude limits), `Whiten` (limits on how far the feature
  covariance is from white), `penalize_abs_values_gt`, `limit_param_value`, `ScaleGrad`;
- `ScheduledFloat`: a float that follows a piecewise-linear schedule in the training batch
  index (dropout rates, skip rates, limits); the training loop sets the index with
  `set_batch_count(model, batch_idx)`.

Parameter names and shapes follow icefall's `zipformer/scaling.py` so checkpoints load
strictly. The custom autograd functions save as little as possible for backward (a uint8
derivative for the Swoosh activations, only the input for `ActivationDropoutAndLinear` and
`BiasNorm`), and every module works under `torch.autocast` (fp16/bf16) on any device.
"""
import math
import random
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:  # k2's fused Swoosh kernels are faster on GPU; everything below also works without k2.
    import k2  # type: ignore

    _HAVE_K2_SWOOSH = hasattr(k2, "swoosh_l") and hasattr(k2, "swoosh_r")
except (ImportError, OSError):
    k2 = None
    _HAVE_K2_SWOOSH = False


# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------


class PiecewiseLinear:
    """A piecewise-linear function of one float, given as (x, y) points with increasing x.

    Below the first x it returns the first y, above the last x the last y.
    """

    def __init__(self, *points: Tuple[float, float]):
        if len(points) == 1 and isinstance(points[0], PiecewiseLinear):
            points = tuple(points[0].pairs)
        if not points:
            raise ValueError("PiecewiseLinear needs at least one (x, y) point")
        self.pairs = [(float(x), float(y)) for x, y in points]
        for (x0, _), (x1, _) in zip(self.pairs, self.pairs[1:]):
            if not x1 > x0:
                raise ValueError(f"PiecewiseLinear x values must increase strictly, got {self.pairs}")

    def __call__(self, x: float) -> float:
        pairs = self.pairs
        if x <= pairs[0][0]:
            return pairs[0][1]
        if x >= pairs[-1][0]:
            return pairs[-1][1]
        for (x0, y0), (x1, y1) in zip(pairs, pairs[1:]):
            if x <= x1:
                return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        raise AssertionError("unreachable: x lies inside the covered range")

    def __repr__(self) -> str:
        return f"PiecewiseLinear({', '.join(map(str, self.pairs))})"


class ScheduledFloat(nn.Module):
    """A float that follows a piecewise-linear schedule in the training batch index.

    It is an `nn.Module` (without parameters, so without state_dict entries) only so that
    `model.modules()` finds it and `model.train()` / `model.eval()` reach it. Use it as
    `float(self.dropout_rate)`.

    Example: `ScheduledFloat((0.0, 0.2), (4000.0, 0.0), default=0.0)` is 0.2 at batch 0,
    falls linearly to 0.0 at batch 4000 and stays there.

    `default` is returned in eval mode, under TorchScript/tracing, and while `batch_count`
    has not been set (set it with `set_batch_count(model, batch_idx)` every batch).
    """

    def __init__(self, *points: Tuple[float, float], default: float = 0.0):
        super().__init__()
        self.schedule = PiecewiseLinear(*points)
        self.default = default
        self.batch_count: Optional[float] = None
        self.name: Optional[str] = None

    def extra_repr(self) -> str:
        return f"batch_count={self.batch_count}, schedule={self.schedule.pairs}, default={self.default}"

    def __float__(self) -> float:
        if self.batch_count is None or not self.training or is_exporting():
            return float(self.default)
        return self.schedule(self.batch_count)


FloatLike = Union[float, ScheduledFloat]


def set_batch_count(model: nn.Module, batch_count: float) -> None:
    """Tell every `ScheduledFloat` (and every module with a `batch_count`) the batch index.

    Call it once per training batch, before the forward pass. Also names the modules that
    have a `name` attribute after their path in the model, for log messages.
    """
    if hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP wrapper
        model = model.module
    for name, module in model.named_modules():
        if hasattr(module, "batch_count"):
            module.batch_count = batch_count
        if hasattr(module, "name"):
            module.name = name


def _autocast_dtype(x: Tensor) -> Optional[torch.dtype]:
    """The autocast dtype active for `x`'s device, or None when autocast is off there."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _at_least_float32(x: Tensor) -> Tensor:
    """x in float32, or unchanged when it is float32 or float64 already."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def is_exporting() -> bool:
    """True while TorchScript scripts or traces the model, or ONNX export runs: then only
    plain, shape-generic ops may be used, and no training-time randomness."""
    return torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


# ---------------------------------------------------------------------------------------------
# Swoosh activations
# ---------------------------------------------------------------------------------------------

# swoosh(x) = log(1 + exp(x - offset)) - 0.08 x - constant; the constants make swoosh(0) == 0
# for SwooshR and keep SwooshL's mean near zero. Both derivatives sigmoid(x - offset) - 0.08
# lie in (-0.08, 0.92); the uint8 code of the derivative spans [-0.08, 0.925].
_SWOOSH_OFFSET = {"SwooshL": 4.0, "SwooshR": 1.0}
_SWOOSH_CONST = {"SwooshL": 0.035, "SwooshR": 0.313261687}
_SWOOSH_SLOPE = 0.08
_DERIV_FLOOR = -0.08
_DERIV_CEIL = 0.925


def _check_activation(name: str) -> None:
    if name not in _SWOOSH_OFFSET:
        raise ValueError(f"Unknown activation '{name}': use one of {sorted(_SWOOSH_OFFSET)}")


def swoosh_forward(x: Tensor, name: str) -> Tensor:
    """Plain-op Swoosh (autograd differentiates it normally); any shape, same dtype."""
    return F.softplus(x - _SWOOSH_OFFSET[name]) - _SWOOSH_SLOPE * x - _SWOOSH_CONST[name]


def swoosh_onnx(x: Tensor, name: str) -> Tensor:
    """Swoosh with only elementwise ops every ONNX opset has (no Softplus/logaddexp).

    softplus(z) = max(z, 0) + log1p(exp(-|z|)), which never overflows.
    """
    z = x - _SWOOSH_OFFSET[name]
    return torch.relu(z) + torch.log1p(torch.exp(-torch.abs(z))) - _SWOOSH_SLOPE * x - _SWOOSH_CONST[name]


def _swoosh_inference(x: Tensor, name: str) -> Tensor:
    """Swoosh without autograd, reusing its temporaries (3 passes over memory instead of 5)."""
    y = F.softplus(x - _SWOOSH_OFFSET[name])
    return y.add_(x, alpha=-_SWOOSH_SLOPE).sub_(_SWOOSH_CONST[name])


def _swoosh_and_deriv(x: Tensor, name: str) -> Tuple[Tensor, Tensor]:
    """(swoosh(x), d swoosh / dx), computed in at least float32 precision."""
    xf = _at_least_float32(x)
    z = xf - _SWOOSH_OFFSET[name]
    y = F.softplus(z) - _SWOOSH_SLOPE * xf - _SWOOSH_CONST[name]
    return y, torch.sigmoid(z) - _SWOOSH_SLOPE


# the derivative's code: floor((deriv - floor) * _CODE_SCALE + U(0, 1)); deriv - floor is
# sigmoid(z) in (0, 1), so codes stay within 0..255 without clamping.
_CODE_SCALE = 255.0 / (_DERIV_CEIL - _DERIV_FLOOR)


def _decode_deriv(code: Tensor, dtype: torch.dtype) -> Tensor:
    return code.to(dtype).mul_(1.0 / _CODE_SCALE).add_(_DERIV_FLOOR)


class SwooshFunction(torch.autograd.Function):
    """Swoosh whose backward needs only one byte per element: the derivative, stochastically
    rounded to one of 256 levels (adding U(0, 1) before truncation makes the rounding
    unbiased). The gradient error per element is below (0.925 + 0.08) / 255 ~= 0.004 and
    zero in expectation. Temporaries are reused: this runs on the largest activations."""

    @staticmethod
    def forward(ctx, x: Tensor, name: str) -> Tensor:
        xf = _at_least_float32(x.detach())
        z = xf - _SWOOSH_OFFSET[name]
        y = F.softplus(z).add_(xf, alpha=-_SWOOSH_SLOPE).sub_(_SWOOSH_CONST[name])
        code = torch.sigmoid(z).mul_(_CODE_SCALE).add_(torch.rand_like(z))
        ctx.save_for_backward(code.to(torch.uint8))
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, y_grad: Tensor) -> Tuple[Tensor, None]:
        (code,) = ctx.saved_tensors
        return _decode_deriv(code, y_grad.dtype).mul_(y_grad), None


def swoosh(x: Tensor, name: str) -> Tensor:
    """SwooshL / SwooshR of `x` (any shape), picking the cheapest correct implementation."""
    if is_exporting():
        return swoosh_onnx(x, name)
    if not (x.requires_grad and torch.is_grad_enabled()):
        return _swoosh_inference(x, name)
    if _HAVE_K2_SWOOSH and x.is_cuda:
        fn = k2.swoosh_l if name == "SwooshL" else k2.swoosh_r
        return fn(x).to(x.dtype)
    return SwooshFunction.apply(x, name)


class SwooshL(nn.Module):
    """SwooshL(x) = log(1 + exp(x - 4)) - 0.08 x - 0.035, elementwise."""

    def forward(self, x: Tensor) -> Tensor:
        return swoosh(x, "SwooshL")


class SwooshR(nn.Module):
    """SwooshR(x) = log(1 + exp(x - 1)) - 0.08 x - 0.313261687, elementwise."""

    def forward(self, x: Tensor) -> Tensor:
        return swoosh(x, "SwooshR")


class SwooshLOnnx(nn.Module):
    """SwooshL from elementwise ops that every ONNX opset exports."""

    def forward(self, x: Tensor) -> Tensor:
        return swoosh_onnx(x, "SwooshL")


class SwooshROnnx(nn.Module):
    """SwooshR from elementwise ops that every ONNX opset exports."""

    def forward(self, x: Tensor) -> Tensor:
        return swoosh_onnx(x, "SwooshR")


# ---------------------------------------------------------------------------------------------
# Linear layers
# ---------------------------------------------------------------------------------------------


def ScaledLinear(*args, initial_scale: float = 1.0, **kwargs) -> nn.Linear:
    """`nn.Linear(*args, **kwargs)` with its weight scaled by `initial_scale` and its bias
    drawn from U(-0.1 * initial_scale, 0.1 * initial_scale)."""
    layer = nn.Linear(*args, **kwargs)
    _scale_init(layer, initial_scale)
    return layer


def ScaledConv2d(*args, initial_scale: float = 1.0, **kwargs) -> nn.Conv2d:
    """`nn.Conv2d(*args, **kwargs)` with the initialisation of `ScaledLinear`."""
    layer = nn.Conv2d(*args, **kwargs)
    _scale_init(layer, initial_scale)
    return layer


def _scale_init(layer: nn.Module, initial_scale: float) -> None:
    with torch.no_grad():
        layer.weight.mul_(initial_scale)
        if layer.bias is not None:
            nn.init.uniform_(layer.bias, -0.1 * initial_scale, 0.1 * initial_scale)


class ActivationDropoutAndLinearFunction(torch.autograd.Function):
    """linear(dropout(swoosh(x))) that saves only x (and the small dropout mask): the
    activation and its derivative are recomputed in backward."""

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        weight: Tensor,
        bias: Optional[Tensor],
        activation: str,
        dropout_p: float,
        dropout_shared_dim: Optional[int],
    ) -> Tensor:
        mask = None
        if dropout_p > 0.0:
            shape = list(x.shape)
            if dropout_shared_dim is not None:
                shape[dropout_shared_dim] = 1
            keep = torch.rand(shape, device=x.device) > dropout_p
            mask = keep.to(x.dtype) * (1.0 / (1.0 - dropout_p))
        y, _ = _swoosh_and_deriv(x, activation)
        y = y.to(weight.dtype)
        if mask is not None:
            y = y * mask
        ctx.save_for_backward(x, weight, mask)
        ctx.activation = activation
        ctx.has_bias = bias is not None
        return F.linear(y, weight, bias)

    @staticmethod
    def backward(ctx, out_grad: Tensor):
        x, weight, mask = ctx.saved_tensors
        y, deriv = _swoosh_and_deriv(x, ctx.activation)
        y = y.to(weight.dtype)
        if mask is not None:
            y = y * mask
        out_grad = out_grad.to(weight.dtype)
        out_features, in_features = weight.shape
        g2 = out_grad.reshape(-1, out_features)
        x_grad = weight_grad = bias_grad = None
        if ctx.needs_input_grad[0]:
            y_grad = torch.matmul(out_grad, weight)
            if mask is not None:
                y_grad = y_grad * mask
            x_grad = (y_grad * deriv).to(x.dtype)
        if ctx.needs_input_grad[1]:
            weight_grad = torch.matmul(g2.t(), y.reshape(-1, in_features))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            bias_grad = g2.sum(dim=0)
        return x_grad, weight_grad, bias_grad, None, None, None


class ActivationDropoutAndLinear(nn.Module):
    """Swoosh activation, then dropout, then a linear layer, in one memory-efficient step.

    Equivalent to `nn.Sequential(SwooshL() or SwooshR(), Dropout3(dropout_p, dropout_shared_dim),
    ScaledLinear(in_channels, out_channels, bias=bias, initial_scale=initial_scale))`, but it
    stores only its input (and a dropout mask) for backward, not the activation's output.
    Parameters are `weight` (out, in) and `bias` (out,).

    Args:
      in_channels, out_channels: feature sizes of the input (..., in) and output (..., out).
      bias: whether the linear layer has a bias.
      activation: "SwooshL" or "SwooshR".
      dropout_p: dropout probability (or schedule) applied after the activation.
      dropout_shared_dim: a dimension along which the dropout mask is shared (e.g. 0 = time
        for (T, N, C) input), which keeps the saved mask small; None for ordinary dropout.
        The default -1 (icefall's) drops whole frames.
      initial_scale: see `ScaledLinear`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bias: bool = True,
        activation: str = "SwooshL",
        dropout_p: FloatLike = 0.0,
        dropout_shared_dim: Optional[int] = -1,
        initial_scale: float = 1.0,
    ):
        super().__init__()
        _check_activation(activation)
        linear = ScaledLinear(in_channels, out_channels, bias=bias, initial_scale=initial_scale)
        self.weight = linear.weight
        self.register_parameter("bias", linear.bias)
        self.activation = activation
        self.dropout_p = dropout_p
        self.dropout_shared_dim = dropout_shared_dim

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in_channels) -> (..., out_channels)."""
        if not self.training or is_exporting():
            return F.linear(swoosh(x, self.activation), self.weight, self.bias)
        weight, bias = self.weight, self.bias
        dtype = _autocast_dtype(x)
        if dtype is not None:
            # The function computes in the dtype of its inputs; cast here, where autograd
            # sees the casts and returns float32 gradients to the float32 parameters.
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return ActivationDropoutAndLinearFunction.apply(
                x, weight, bias, self.activation, float(self.dropout_p), self.dropout_shared_dim
            )


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------


def _channel_view(v: Tensor, ndim: int, channel_dim: int) -> Tensor:
    """Reshape a (C,) vector to broadcast along `channel_dim` of an ndim-dim tensor."""
    shape = [1] * ndim
    shape[channel_dim] = -1
    return v.reshape(shape)


class BiasNormFunction(torch.autograd.Function):
    """y = x * exp(log_scale) / RMS(x - bias), RMS over `channel_dim`, with an analytic
    backward that saves only x (the per-frame RMS is recomputed)."""

    @staticmethod
    def forward(ctx, x: Tensor, bias: Tensor, log_scale: Tensor, channel_dim: int) -> Tensor:
        xf = _at_least_float32(x)
        b = _channel_view(bias, x.ndim, channel_dim).to(xf.dtype)
        rms_sq = (xf - b).pow(2).mean(dim=channel_dim, keepdim=True)
        scale = rms_sq.rsqrt() * log_scale.to(xf.dtype).exp()
        ctx.save_for_backward(x, bias, log_scale)
        ctx.channel_dim = channel_dim
        return (xf * scale).to(x.dtype)

    @staticmethod
    def backward(ctx, y_grad: Tensor):
        x, bias, log_scale = ctx.saved_tensors
        dim = ctx.channel_dim
        xf = _at_least_float32(x)
        g = y_grad.to(xf.dtype)
        d = xf - _channel_view(bias, x.ndim, dim).to(xf.dtype)
        rms_sq = d.pow(2).mean(dim=dim, keepdim=True)
        scale = rms_sq.rsqrt() * log_scale.to(xf.dtype).exp()
        # With s = e^g * r^-1/2, r = mean_c (x - b)^2:
        #   dL/dx = s * g - s / (C r) * (x - b) * sum_c(g * x),   dL/db = -sum over frames of
        #   the second term,   dL/dlog_scale = sum(g * x * s).
        gx = (g * xf).sum(dim=dim, keepdim=True)
        coeff = (scale * gx) / (rms_sq * x.shape[dim])
        corr = coeff * d
        x_grad = g * scale - corr
        other_dims = [i for i in range(x.ndim) if i != dim]
        bias_grad = corr.sum(dim=other_dims) if other_dims else corr
        log_scale_grad = (gx * scale).sum()
        return (
            x_grad.to(x.dtype),
            bias_grad.to(bias.dtype),
            log_scale_grad.to(log_scale.dtype).reshape(log_scale.shape),
            None,
        )


class BiasNorm(nn.Module):
    """A cheaper LayerNorm replacement: y = x / RMS(x - b) * exp(log_scale).

    The learned bias `b` only enters the RMS, so a network cannot defeat the normalisation by
    parking a large constant in one channel (what it does to LayerNorm). `log_scale` is a
    learned scalar, kept within [log_scale_min, log_scale_max] during training.

    Args:
      num_channels: C, the size of `channel_dim`.
      channel_dim: the axis holding the channels (negative counts from the end).
      log_scale: initial value of log_scale.
      log_scale_min, log_scale_max: the range that training keeps log_scale in.

    Shapes: (..., C, ...) -> same shape.
    """

    def __init__(
        self,
        num_channels: int,
        channel_dim: int = -1,
        log_scale: float = 1.0,
        log_scale_min: float = -1.5,
        log_scale_max: float = 1.5,
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        self.log_scale = nn.Parameter(torch.tensor(log_scale))
        self.bias = nn.Parameter(torch.empty(num_channels).normal_(mean=0, std=1e-4))
        self.log_scale_min = log_scale_min
        self.log_scale_max = log_scale_max

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[self.channel_dim] != self.num_channels:
            raise ValueError(
                f"BiasNorm expects {self.num_channels} channels on dim {self.channel_dim}, "
                f"got input of shape {tuple(x.shape)}"
            )
        channel_dim = self.channel_dim % x.ndim
        if is_exporting() or not torch.is_grad_enabled():
            # statistics in float32: squares of half-precision activations can overflow
            xf = _at_least_float32(x)
            b = _channel_view(self.bias, x.ndim, channel_dim).to(xf.dtype)
            scale = (xf - b).pow(2).mean(dim=channel_dim, keepdim=True).rsqrt() * self.log_scale.to(xf.dtype).exp()
            return x * scale.to(x.dtype)
        log_scale = limit_param_value(
            self.log_scale, min=self.log_scale_min, max=self.log_scale_max, training=self.training
        )
        return BiasNormFunction.apply(x, self.bias, log_scale, channel_dim)


# ---------------------------------------------------------------------------------------------
# Gradient-only regularisers
# ---------------------------------------------------------------------------------------------


class LimitParamValue(torch.autograd.Function):
    """Identity whose backward flips gradient signs that would push x further outside
    [min, max] (so the optimizer step moves it back inside)."""

    @staticmethod
    def forward(ctx, x: Tensor, min: float, max: float) -> Tensor:
        if max < min:
            raise ValueError(f"limit_param_value: max ({max}) must be >= min ({min})")
        ctx.save_for_backward(x)
        ctx.min, ctx.max = min, max
        return x.view_as(x)

    @staticmethod
    def backward(ctx, x_grad: Tensor):
        (x,) = ctx.saved_tensors
        # Gradient descent moves x by -grad: below min the grad must be <= 0, above max >= 0.
        flip = ((x_grad > 0) & (x < ctx.min)) | ((x_grad < 0) & (x > ctx.max))
        return torch.where(flip, -x_grad, x_grad), None, None


def limit_param_value(
    x: Tensor, min: float, max: float, prob: float = 0.6, training: bool = True
) -> Tensor:
    """Return x; in training (on a random `prob` of calls) edit its gradient so that the
    optimizer keeps x mostly inside [min, max]."""
    if training and random.random() < prob:
        return LimitParamValue.apply(x, min, max)
    return x


class ScaleGradFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, alpha: float) -> Tensor:
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.alpha, None


class ScaleGrad(nn.Module):
    """Identity in the forward pass; multiplies the gradient by `alpha` in training.

    Conv2dSubsampling uses it (alpha 0.2) to keep the first convolution's gradients inside
    the fp16 range under mixed precision."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or is_exporting():
            return x
        return ScaleGradFunction.apply(x, self.alpha)


def _proportion_positive_to_mean(p: float) -> float:
    """mean/stddev of a Gaussian that is positive with probability p (a cheap approximate
    inverse erf: 0.8139535143 * atanh(2p - 1); exact near p = 0.5, crude near 0 and 1)."""
    z = 2.0 * p - 1.0
    eps = 1.0e-10  # keeps p == 0 or 1 finite
    return 0.8139535143 * (math.log(1 + z + eps) - math.log(1 - z + eps)) / 2.0


def _abs_to_rms(a: float) -> float:
    """RMS of a zero-mean Gaussian whose mean absolute value is a: sqrt(pi/2) * a."""
    return 1.25331413732 * a


def balancer_loss_grad(
    x: Tensor,
    channel_dim: int,
    min_mean: float,
    max_mean: float,
    min_rms: float,
    max_rms: float,
) -> Tensor:
    """Direction that reduces the Balancer's constraint violations, normalised per channel.

    Per channel c (statistics over all other dims), with m = mean/stddev and r = RMS, the loss
    is |m - clamp(m, min_mean, max_mean)| + |log(clamp(r, min_rms, max_rms) / r)|. Returns its
    gradient w.r.t. x (same shape, float32) divided by the gradient's per-channel RMS, so
    every violating channel gets a unit-RMS push and satisfied channels get zero.
    """
    x = _at_least_float32(x)
    dims = [i for i in range(x.ndim) if i != channel_dim]
    mean = x.mean(dim=dims, keepdim=True)
    mean_sq = x.pow(2).mean(dim=dims, keepdim=True).clamp(min=1.0e-20)
    stddev = (mean_sq - mean * mean).clamp(min=1.0e-20).sqrt()
    rms = mean_sq.sqrt()
    m = mean / stddev
    m_sign = torch.sign(m - m.clamp(min=min_mean, max=max_mean))
    r_sign = (rms > max_rms).float() - (rms < min_rms).float()
    # n * dm/dx = 1/stddev - mean (x - mean) / stddev^3; n * dlog(r)/dx = x / r^2 (the common
    # 1/n cancels in the normalisation below).
    grad = m_sign * (1.0 / stddev - mean * (x - mean) / stddev.pow(3)) + r_sign * x / mean_sq
    grad_rms = grad.pow(2).mean(dim=dims, keepdim=True).sqrt().clamp(min=1.0e-20)
    return grad / grad_rms


class BalancerFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, channel_dim: int, limits: Tuple[float, float, float, float], grad_scale: float):
        ctx.save_for_backward(x)
        ctx.channel_dim = channel_dim
        ctx.limits = limits
        ctx.grad_scale = grad_scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, x_grad: Tensor):
        (x,) = ctx.saved_tensors
        direction = balancer_loss_grad(x, ctx.channel_dim, *ctx.limits)
        g = x_grad.float()
        # Scaling by |grad| makes the push proportional to how much each element matters.
        return (g + g.abs() * (ctx.grad_scale * direction)).to(x_grad.dtype), None, None, None


class Balancer(nn.Module):
    """Identity in the forward pass; in backward nudges each channel towards
    `min_positive <= P(x > 0) <= max_positive` and `min_abs <= E|x| <= max_abs`.

    The limits are converted to limits on mean/stddev and on the RMS (assuming Gaussian
    data); violations add `grad_scale * |grad| * direction` to the gradient (see
    `balancer_loss_grad`). Applied on a random `prob` of training calls to save time.

    Args:
      num_channels: size of `channel_dim` (checked).
      channel_dim: the channel axis of the input (negative counts from the end).
      min_positive, max_positive, min_abs, max_abs, grad_scale, prob: floats or schedules.
    """

    def __init__(
        self,
        num_channels: int,
        channel_dim: int,
        min_positive: FloatLike = 0.05,
        max_positive: FloatLike = 0.95,
        min_abs: FloatLike = 0.2,
        max_abs: FloatLike = 100.0,
        grad_scale: FloatLike = 0.04,
        prob: Optional[FloatLike] = None,
    ):
        super().__init__()
        if prob is None:
            prob = ScheduledFloat((0.0, 0.5), (8000.0, 0.125), default=0.4)
        self.prob = prob
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        self.min_positive = min_positive
        self.max_positive = max_positive
        self.min_abs = min_abs
        self.max_abs = max_abs
        self.grad_scale = grad_scale

    def forward(self, x: Tensor) -> Tensor:
        if is_exporting() or not x.requires_grad or random.random() >= float(self.prob):
            return x
        channel_dim = self.channel_dim % x.ndim
        if x.shape[channel_dim] != self.num_channels:
            raise ValueError(
                f"Balancer expects {self.num_channels} channels on dim {self.channel_dim}, "
                f"got input of shape {tuple(x.shape)}"
            )
        limits = (
            _proportion_positive_to_mean(float(self.min_positive)),
            _proportion_positive_to_mean(float(self.max_positive)),
            _abs_to_rms(float(self.min_abs)),
            _abs_to_rms(float(self.max_abs)),
        )
        return BalancerFunction.apply(x, channel_dim, limits, float(self.grad_scale))


def whitening_metric(x: Tensor, num_groups: int) -> Tensor:
    """How far the centred covariance of x is from a multiple of I: 1.0 when white, larger
    otherwise (the mean squared eigenvalue over the squared mean eigenvalue, over groups).

    x: (..., C), C divisible by num_groups; frames are all leading positions. Returns a
    scalar.
    """
    x = x.reshape(-1, x.shape[-1])
    num_frames, num_channels = x.shape
    if num_channels % num_groups != 0:
        raise ValueError(f"whitening: {num_channels} channels do not split into {num_groups} groups")
    per_group = num_channels // num_groups
    x = x.reshape(num_frames, num_groups, per_group).transpose(0, 1)
    x = x - x.mean(dim=1, keepdim=True)
    covar = torch.matmul(x.transpose(1, 2), x)  # (G, c, c)
    mean_diag = torch.diagonal(covar, dim1=1, dim2=2).mean()
    mean_sq_eig = covar.pow(2).sum() / (num_groups * per_group)
    return mean_sq_eig / (mean_diag.pow(2) + 1.0e-20)


def whitening_metric_and_grad(x: Tensor, num_groups: int) -> Tuple[Tensor, Tensor]:
    """`whitening_metric(x)` and its gradient w.r.t. x (same shape), in float32.

    With centred groups X_g, covariances K_g = X_g^T X_g, S = C, N = sum ||K_g||^2 / S and
    D = sum tr(K_g) / S: metric = N / (D^2 + eps), dN/dX_g = 4 X_g K_g / S and
    dD/dX_g = 2 X_g / S (both already centred, so the mean subtraction adds nothing).
    """
    shape = x.shape
    x = _at_least_float32(x).reshape(-1, shape[-1])
    num_frames, num_channels = x.shape
    per_group = num_channels // num_groups
    xg = x.reshape(num_frames, num_groups, per_group).transpose(0, 1)
    xg = xg - xg.mean(dim=1, keepdim=True)
    covar = torch.matmul(xg.transpose(1, 2), xg)
    size = float(num_channels)
    n = covar.pow(2).sum() / size
    d = xg.pow(2).sum() / size
    denom = d * d + 1.0e-20
    metric = n / denom
    grad = (4.0 / size / denom) * torch.matmul(xg, covar) - (4.0 * n * d / size / denom.pow(2)) * xg
    grad = grad.transpose(0, 1).reshape(shape)
    return metric, grad


class WhiteningPenaltyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, module: "Whiten") -> Tensor:
        ctx.save_for_backward(x)
        ctx.module = module
        return x.view_as(x)

    @staticmethod
    def backward(ctx, x_grad: Tensor):
        (x,) = ctx.saved_tensors
        w = ctx.module
        metric, penalty_grad = whitening_metric_and_grad(x.detach(), w.num_groups)
        if metric.item() < float(w.whitening_limit):
            w.prob = w.min_prob  # satisfied: check less often
            return x_grad, None
        w.prob = w.max_prob
        scale = float(w.grad_scale) * x_grad.float().norm() / (penalty_grad.norm() + 1.0e-20)
        return x_grad + (penalty_grad * scale).to(x_grad.dtype), None


class Whiten(nn.Module):
    """Identity in the forward pass; in backward, when `whitening_metric(x) > whitening_limit`,
    adds a gradient (scaled to `grad_scale` times the incoming gradient's norm) that makes the
    centred covariance of each channel group closer to a multiple of I.

    Args:
      num_groups: channel groups whitened separately (sharing one trace).
      whitening_limit: >= 1; 1.0 demands perfect whiteness.
      prob: probability of checking on a call, or (min_prob, max_prob): checks happen with
        max_prob after a violation and min_prob after a pass.
      grad_scale: size of the added gradient relative to the incoming one.

    Shape: (..., C) -> same.
    """

    def __init__(
        self,
        num_groups: int,
        whitening_limit: FloatLike,
        prob: Union[float, Tuple[float, float]],
        grad_scale: FloatLike,
    ):
        super().__init__()
        if num_groups < 1 or float(whitening_limit) < 1 or float(grad_scale) < 0:
            raise ValueError(
                f"Whiten needs num_groups >= 1, whitening_limit >= 1, grad_scale >= 0; got "
                f"{num_groups}, {float(whitening_limit)}, {float(grad_scale)}"
            )
        self.num_groups = num_groups
        self.whitening_limit = whitening_limit
        self.grad_scale = grad_scale
        if isinstance(prob, (int, float)):
            prob = (float(prob), float(prob))
        self.min_prob, self.max_prob = prob
        if not 0 < self.min_prob <= self.max_prob <= 1:
            raise ValueError(f"Whiten prob must satisfy 0 < min <= max <= 1, got {prob}")
        self.prob = self.max_prob
        self.name: Optional[str] = None

    def forward(self, x: Tensor) -> Tensor:
        if (
            is_exporting()
            or not x.requires_grad
            or random.random() > self.prob
            or float(self.grad_scale) == 0
        ):
            return x
        return WhiteningPenaltyFunction.apply(x, self)


class PenalizeAbsValuesFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, limit: float, penalty: float) -> Tensor:
        # Only the sign of the excess is needed: one int8 per element.
        excess_sign = (torch.sign(x) * (x.abs() > limit)).to(torch.int8)
        ctx.save_for_backward(excess_sign)
        ctx.penalty = penalty
        return x.view_as(x)

    @staticmethod
    def backward(ctx, x_grad: Tensor):
        (excess_sign,) = ctx.saved_tensors
        return x_grad + ctx.penalty * excess_sign.to(x_grad.dtype), None, None


def penalize_abs_values_gt(x: Tensor, limit: float, penalty: float) -> Tensor:
    """Return x; backward adds the gradient of `penalty * sum(relu(|x| - limit))`.

    A fail-safe against implausibly large values (e.g. attention scores) that, unlike an
    entropy penalty, keeps a gradient even when a softmax saturates."""
    return PenalizeAbsValuesFunction.apply(x, limit, penalty)


# ---------------------------------------------------------------------------------------------
# Dropout and small helpers
# ---------------------------------------------------------------------------------------------


class Dropout2(nn.Module):
    """`F.dropout` whose probability may be a `ScheduledFloat`."""

    def __init__(self, p: FloatLike):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, p=float(self.p), training=self.training)


class Dropout3(nn.Module):
    """Dropout with one mask shared along `shared_dim` (e.g. the time axis), which is cheaper
    to store; `p` may be a `ScheduledFloat`."""

    def __init__(self, p: FloatLike, shared_dim: int):
        super().__init__()
        self.p = p
        self.shared_dim = shared_dim

    def forward(self, x: Tensor) -> Tensor:
        p = float(self.p)
        if not self.training or p == 0.0:
            return x
        shape = list(x.shape)
        shape[self.shared_dim] = 1
        mask = (torch.rand(shape, device=x.device) > p).to(x.dtype)
        return x * (mask * (1.0 / (1.0 - p)))


class SoftmaxFunction(torch.autograd.Function):
    """Softmax that, under autocast, keeps its saved output in the autocast dtype (half the
    memory of the float32 output autocast would give)."""

    @staticmethod
    def forward(ctx, x: Tensor, dim: int, out_dtype: Optional[torch.dtype]) -> Tensor:
        ans = x.softmax(dim=dim)
        if out_dtype is not None:
            ans = ans.to(out_dtype)
        ctx.save_for_backward(ans)
        ctx.dim = dim
        return ans

    @staticmethod
    def backward(ctx, ans_grad: Tensor):
        (ans,) = ctx.saved_tensors
        ans = ans.float()
        g = ans_grad.float() * ans
        return g - ans * g.sum(dim=ctx.dim, keepdim=True), None, None


def softmax(x: Tensor, dim: int) -> Tensor:
    """Softmax over `dim`; memory-lean under autocast (see SoftmaxFunction)."""
    if not x.requires_grad or is_exporting():
        return x.softmax(dim=dim)
    return SoftmaxFunction.apply(x, dim, _autocast_dtype(x))


def convert_num_channels(x: Tensor, num_channels: int) -> Tensor:
    """Truncate or zero-pad the last dim of x (..., C) to (..., num_channels)."""
    if num_channels <= x.shape[-1]:
        return x[..., :num_channels]
    pad = torch.zeros(*x.shape[:-1], num_channels - x.shape[-1], dtype=x.dtype, device=x.device)
    return torch.cat((x, pad), dim=-1)


# ---------------------------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------------------------


class ChunkCausalDepthwiseConv1d(nn.Module):
    """Depthwise 1-D convolution that is causal across chunks (for streaming-capable training).

    It sums a causal depthwise convolution of width (K + 1) // 2 (left-padded) and a full
    width-K depthwise convolution applied within each chunk only, whose output is scaled by
    learned per-position corrections near the chunk edges (`chunkwise_conv_scale`, (2, C, K):
    row 0 for the left edge, row 1 for the right edge, both added to 1).

    Args:
      channels: C.
      kernel_size: K, odd.
      initial_scale: scales the initial weights (see ScaledLinear).
      bias: whether the chunkwise convolution has a bias (the causal one always has).
    """

    def __init__(self, channels: int, kernel_size: int, initial_scale: float = 1.0, bias: bool = True):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"ChunkCausalDepthwiseConv1d needs an odd kernel_size, got {kernel_size}")
        self.causal_conv = nn.Conv1d(
            channels, channels, kernel_size=(kernel_size + 1) // 2, groups=channels, padding=0, bias=True
        )
        self.chunkwise_conv = nn.Conv1d(
            channels, channels, kernel_size=kernel_size, groups=channels, padding=kernel_size // 2, bias=bias
        )
        self.chunkwise_conv_scale = nn.Parameter(torch.zeros(2, channels, kernel_size))
        self.kernel_size = kernel_size
        with torch.no_grad():
            self.causal_conv.weight.mul_(initial_scale)
            self.chunkwise_conv.weight.mul_(initial_scale)
            if bias:
                nn.init.uniform_(self.causal_conv.bias, -0.1 * initial_scale, 0.1 * initial_scale)

    def forward(self, x: Tensor, chunk_size: int = -1) -> Tensor:
        """x: (N, C, T); chunk_size in frames (-1 or > T: one chunk). Returns (N, C, T)."""
        batch_size, num_channels, seq_len = x.shape
        left_pad = self.kernel_size // 2
        if chunk_size < 0 or chunk_size > seq_len:
            chunk_size = seq_len
        right_pad = -seq_len % chunk_size
        x = F.pad(x, (left_pad, right_pad))

        x_causal = self.causal_conv(x[..., : left_pad + seq_len])

        num_chunks = (seq_len + right_pad) // chunk_size
        x_chunk = x[..., left_pad:].reshape(batch_size, num_channels, num_chunks, chunk_size)
        x_chunk = x_chunk.permute(0, 2, 1, 3).reshape(batch_size * num_chunks, num_channels, chunk_size)
        x_chunk = self.chunkwise_conv(x_chunk) * self._chunk_scale(chunk_size)
        x_chunk = x_chunk.reshape(batch_size, num_chunks, num_channels, chunk_size).permute(0, 2, 1, 3)
        x_chunk = x_chunk.reshape(batch_size, num_channels, num_chunks * chunk_size)[..., :seq_len]
        return x_chunk + x_causal

    def _chunk_scale(self, chunk_size: int) -> Tensor:
        """(C, chunk_size) multiplier for the chunkwise convolution's output."""
        left_edge, right_edge = self.chunkwise_conv_scale[0], self.chunkwise_conv_scale[1]
        if chunk_size < self.kernel_size:
            left_edge = left_edge[:, :chunk_size]
            right_edge = right_edge[:, -chunk_size:]
        else:
            pad = left_edge.new_zeros(left_edge.shape[0], chunk_size - self.kernel_size)
            left_edge = torch.cat((left_edge, pad), dim=-1)
            right_edge = torch.cat((pad, right_edge), dim=-1)
        return 1.0 + (left_edge + right_edge)


__all__: List[str] = [
    "ActivationDropoutAndLinear",
    "Balancer",
    "BiasNorm",
    "ChunkCausalDepthwiseConv1d",
    "Dropout2",
    "Dropout3",
    "FloatLike",
    "PiecewiseLinear",
    "ScaleGrad",
    "ScaledConv2d",
    "ScaledLinear",
    "ScheduledFloat",
    "SwooshL",
    "SwooshLOnnx",
    "SwooshR",
    "SwooshROnnx",
    "Whiten",
    "balancer_loss_grad",
    "convert_num_channels",
    "is_exporting",
    "limit_param_value",
    "penalize_abs_values_gt",
    "set_batch_count",
    "softmax",
    "swoosh",
    "swoosh_forward",
    "swoosh_onnx",
    "whitening_metric",
    "whitening_metric_and_grad",
]
