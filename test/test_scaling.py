"""Tests for egs/librispeech/ASR/zipformer_cif/scaling.py against independent float64 references."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scaling import (
    ActivationDropoutAndLinear,
    Balancer,
    BiasNorm,
    ChunkCausalDepthwiseConv1d,
    PiecewiseLinear,
    ScheduledFloat,
    SwooshL,
    SwooshLOnnx,
    SwooshR,
    SwooshROnnx,
    Whiten,
    balancer_loss_grad,
    convert_num_channels,
    limit_param_value,
    penalize_abs_values_gt,
    set_batch_count,
    softmax,
    whitening_metric,
    whitening_metric_and_grad,
)

# Swoosh definitions from the paper, written out independently: (offset, constant).
SWOOSH = {"SwooshL": (SwooshL, SwooshLOnnx, 4.0, 0.035), "SwooshR": (SwooshR, SwooshROnnx, 1.0, 0.313261687)}
DERIV_STEP = (0.925 + 0.08) / 255  # one uint8 step of the saved derivative


def swoosh_ref(x: np.ndarray, offset: float, const: float) -> np.ndarray:
    return np.logaddexp(0.0, x - offset) - 0.08 * x - const


def swoosh_deriv_ref(x: np.ndarray, offset: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(x - offset))) - 0.08


# ----------------------------------------------------------------------------------- Swoosh


@pytest.mark.parametrize("name", sorted(SWOOSH))
def test_swoosh_forward_matches_formula(name):
    module, onnx_module, offset, const = SWOOSH[name]
    x = torch.cat([torch.randn(1000, dtype=torch.float64) * 6, torch.tensor([-1e4, -100.0, 0.0, 100.0, 1e4], dtype=torch.float64)])
    ref = swoosh_ref(x.numpy(), offset, const)
    for m in (module(), onnx_module()):
        y = m(x)
        assert y.dtype == torch.float64
        np.testing.assert_allclose(y.numpy(), ref, rtol=1e-12, atol=1e-12)
        y32 = m(x.float())
        assert torch.isfinite(y32).all()
        np.testing.assert_allclose(y32.double().numpy(), ref, rtol=1e-6, atol=1e-5)


def test_swoosh_r_is_zero_at_zero():
    # The constant in SwooshR is chosen so that SwooshR(0) == 0.
    assert abs(SwooshR()(torch.zeros(1, dtype=torch.float64)).item()) < 1e-9


@pytest.mark.parametrize("name", sorted(SWOOSH))
def test_swoosh_gradient_is_quantized_and_unbiased(name):
    module, _, offset, _ = SWOOSH[name]
    x = (torch.randn(200_000, dtype=torch.float64) * 4).requires_grad_()
    module()(x).sum().backward()
    err = x.grad.numpy() - swoosh_deriv_ref(x.detach().numpy(), offset)
    # stochastic rounding to one of 256 levels: within one step, and unbiased on average
    assert np.abs(err).max() <= DERIV_STEP * 1.0001
    assert abs(err.mean()) < 1e-4
    assert np.abs(err).mean() > 1e-4  # it really is the quantized path


@pytest.mark.parametrize("name", sorted(SWOOSH))
def test_swoosh_saves_one_byte_per_element(name):
    module = SWOOSH[name][0]()
    saved = []

    def pack(t):
        saved.append((t.dtype, t.numel()))
        return t

    x = torch.randn(64, 32, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = module(x * 1.0)
    y.sum().backward()
    assert saved == [(torch.uint8, x.numel())]


def test_swoosh_keeps_half_dtypes():
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(10, 8).to(dtype).requires_grad_()
        for m in (SwooshL(), SwooshR()):
            y = m(x)
            assert y.dtype == dtype
            y.float().sum().backward()
            assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()


# ------------------------------------------------------------------------- BiasNorm


def bias_norm_ref(x, bias, log_scale, channel_dim):
    shape = [1] * x.ndim
    shape[channel_dim] = -1
    rms = ((x - bias.reshape(shape)) ** 2).mean(dim=channel_dim, keepdim=True).sqrt()
    return x / rms * log_scale.exp()


@pytest.mark.parametrize("channel_dim,shape", [(-1, (7, 3, 16)), (1, (3, 16, 9))])
def test_bias_norm_forward_and_grads_match_formula(channel_dim, shape):
    torch.manual_seed(1)
    m = BiasNorm(16, channel_dim=channel_dim).double()
    with torch.no_grad():
        m.bias.normal_(0, 0.5)
        m.log_scale.fill_(0.3)
    x = (torch.randn(*shape, dtype=torch.float64) + 0.7).requires_grad_()
    g = torch.randn(*shape, dtype=torch.float64)

    y = m(x)  # training mode: the custom backward
    y.backward(g)

    x2 = x.detach().clone().requires_grad_()
    b2 = m.bias.detach().clone().requires_grad_()
    s2 = m.log_scale.detach().clone().requires_grad_()
    y2 = bias_norm_ref(x2, b2, s2, channel_dim % len(shape))
    y2.backward(g)

    torch.testing.assert_close(y, y2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(m.bias.grad, b2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(m.log_scale.grad, s2.grad, rtol=1e-10, atol=1e-12)

    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), y2, rtol=1e-12, atol=1e-12)


def test_bias_norm_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match="expects 16 channels"):
        BiasNorm(16)(torch.randn(2, 8))


def test_bias_norm_log_scale_limit_pushes_back_into_range():
    m = BiasNorm(4)
    with torch.no_grad():
        m.log_scale.fill_(2.0)  # above log_scale_max = 1.5
    flipped = 0
    for _ in range(20):  # the limit is applied on a random 60% of calls
        m.zero_grad()
        # a loss that wants a larger output, i.e. a larger log_scale (negative gradient)
        (-m(torch.randn(5, 4)).pow(2).sum()).backward()
        flipped += m.log_scale.grad.item() > 0
    assert 5 <= flipped < 20


# --------------------------------------------------------------- ActivationDropoutAndLinear


@pytest.mark.parametrize("activation", ["SwooshL", "SwooshR"])
def test_activation_dropout_and_linear_matches_sequential(activation):
    _, _, offset, const = SWOOSH[activation]
    m = ActivationDropoutAndLinear(12, 5, activation=activation, dropout_p=0.0, initial_scale=0.5).double()
    x = (torch.randn(6, 3, 12, dtype=torch.float64) * 3).requires_grad_()
    g = torch.randn(6, 3, 5, dtype=torch.float64)
    y = m(x)
    y.backward(g)

    x2 = x.detach().clone().requires_grad_()
    w2 = m.weight.detach().clone().requires_grad_()
    b2 = m.bias.detach().clone().requires_grad_()
    h = torch.logaddexp(torch.zeros_like(x2), x2 - offset) - 0.08 * x2 - const
    y2 = h @ w2.t() + b2
    y2.backward(g)

    torch.testing.assert_close(y, y2, rtol=1e-12, atol=1e-12)
    # the derivative is recomputed exactly in backward (not quantized)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(m.weight.grad, w2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(m.bias.grad, b2.grad, rtol=1e-10, atol=1e-12)
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), y2, rtol=1e-12, atol=1e-12)


def test_activation_dropout_mask_is_shared_along_time_and_rescaled():
    c = 16
    m = ActivationDropoutAndLinear(c, c, bias=True, dropout_p=0.5, dropout_shared_dim=0).double()
    with torch.no_grad():
        m.weight.copy_(torch.eye(c))
        m.bias.zero_()
    x = (torch.rand(9, 4, c, dtype=torch.float64) + 6.0).requires_grad_()  # SwooshL(x) > 0 here
    y = m(x)
    h = torch.logaddexp(torch.zeros_like(x), x - 4.0) - 0.08 * x - 0.035
    kept = y.detach() != 0
    assert torch.equal(kept, kept[:1].expand_as(kept))  # same units dropped at every frame
    assert 0 < kept.float().mean() < 1
    torch.testing.assert_close(y[kept], 2.0 * h[kept].detach())
    y.sum().backward()
    torch.testing.assert_close(x.grad, 2.0 * kept * (torch.sigmoid(x.detach() - 4.0) - 0.08))


# ------------------------------------------------------------------------ regularisers


def balancer_loss_ref(x, channel_dim, min_mean, max_mean, min_rms, max_rms):
    dims = [i for i in range(x.ndim) if i != channel_dim]
    mean = x.mean(dim=dims, keepdim=True)
    rms = (x ** 2).mean(dim=dims, keepdim=True).sqrt()
    std = (rms ** 2 - mean ** 2).sqrt()
    m = mean / std
    m_loss = (m - m.clamp(min=min_mean, max=max_mean)).abs()
    r_loss = (rms.clamp(min=min_rms, max=max_rms) / rms).log().abs()
    return (m_loss + r_loss).sum()


def test_balancer_direction_matches_autograd_of_its_loss():
    torch.manual_seed(2)
    # channels: too negative, fine, too small, too large
    x = torch.randn(50, 4, dtype=torch.float64)
    x[:, 0] -= 2.0
    x[:, 2] *= 0.01
    x[:, 3] *= 30.0
    limits = (-0.5, 0.5, 0.2, 5.0)
    xr = x.clone().requires_grad_()
    balancer_loss_ref(xr, 1, *limits).backward()
    ref = xr.grad
    ref = ref / ref.pow(2).mean(dim=0, keepdim=True).sqrt().clamp(min=1e-20)
    got = balancer_loss_grad(x, 1, *limits).double()
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert got[:, 1].abs().max() == 0  # satisfied channel: no push


def test_balancer_changes_only_gradients_of_violating_channels():
    b = Balancer(3, channel_dim=-1, min_positive=0.2, max_positive=0.8, min_abs=0.1, max_abs=10.0, prob=1.0)
    x = torch.randn(400, 3)
    x[:, 0] = -x[:, 0].abs()  # never positive
    x.requires_grad_()
    y = b(x)
    assert torch.equal(y, x)
    g = torch.randn(400, 3)
    y.backward(g)
    diff = x.grad - g
    assert diff[:, 1:].abs().max() < 1e-6
    # descent (-grad) must make channel 0 more positive on average
    assert diff[:, 0].sum() < 0


def test_whitening_metric_values_and_gradient():
    torch.manual_seed(3)
    white = torch.randn(20000, 8, dtype=torch.float64)
    assert 1.0 <= whitening_metric(white, 1).item() < 1.01
    rank1 = torch.randn(500, 1, dtype=torch.float64) * torch.randn(1, 8, dtype=torch.float64)
    assert whitening_metric(rank1, 1).item() == pytest.approx(8.0, rel=1e-6)  # one eigenvalue of C

    x = torch.randn(40, 12, dtype=torch.float64) @ torch.randn(12, 12, dtype=torch.float64)
    for groups in (1, 3):
        xr = x.clone().requires_grad_()
        whitening_metric(xr, groups).backward()
        metric, grad = whitening_metric_and_grad(x, groups)
        assert metric.item() == pytest.approx(whitening_metric(x, groups).item(), rel=1e-5)
        torch.testing.assert_close(grad.double(), xr.grad, rtol=1e-4, atol=1e-6)


def test_whiten_adds_gradient_only_when_over_limit():
    w = Whiten(num_groups=1, whitening_limit=2.0, prob=1.0, grad_scale=0.1)
    g = torch.randn(300, 6)
    white = torch.randn(300, 6, requires_grad=True)
    w(white).backward(g)
    assert torch.equal(white.grad, g)

    correlated = (torch.randn(300, 1) * torch.ones(1, 6) + 0.01 * torch.randn(300, 6)).requires_grad_()
    w(correlated).backward(g)
    extra = correlated.grad - g
    assert extra.norm().item() == pytest.approx(0.1 * g.norm().item(), rel=1e-4)


def test_penalize_abs_values_gt():
    x = torch.tensor([-30.0, -10.0, 0.0, 24.0, 26.0], requires_grad=True)
    y = penalize_abs_values_gt(x, limit=25.0, penalty=0.5)
    assert torch.equal(y, x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([1.0 - 0.5, 1.0, 1.0, 1.0, 1.5]))


def test_limit_param_value_flips_only_outward_gradients():
    x = torch.tensor([-2.0, -2.0, 0.0, 3.0, 3.0], requires_grad=True)
    y = limit_param_value(x, min=-1.0, max=1.0, prob=1.0)
    y.backward(torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0]))
    torch.testing.assert_close(x.grad, torch.tensor([-1.0, -1.0, 1.0, 1.0, 1.0]))


def test_softmax_gradient_matches_autograd():
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    g = torch.randn(3, 7, dtype=torch.float64)
    softmax(x, dim=-1).backward(g)
    x2.softmax(dim=-1).backward(g)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------- schedules


def test_scheduled_float_follows_schedule_in_training_only():
    p = PiecewiseLinear((0.0, 10.0), (100.0, 0.0), (200.0, 5.0))
    for x, y in [(-5, 10.0), (0, 10.0), (50, 5.0), (150, 2.5), (300, 5.0)]:
        assert p(x) == pytest.approx(y)
    with pytest.raises(ValueError, match="increase"):
        PiecewiseLinear((1.0, 0.0), (1.0, 1.0))

    model = torch.nn.Sequential(Balancer(4, channel_dim=-1), Dropout2Holder())
    sf = model[1].rate
    assert float(sf) == 0.25  # batch_count unset -> default
    set_batch_count(model, 50.0)
    assert sf.batch_count == 50.0 and float(sf) == pytest.approx(0.5)
    assert float(model[0].prob) == pytest.approx(0.5 + (0.125 - 0.5) * 50 / 8000)
    model.eval()
    assert float(sf) == 0.25


class Dropout2Holder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rate = ScheduledFloat((0.0, 1.0), (100.0, 0.0), default=0.25)


# ------------------------------------------------------------------------- convolution


def test_chunk_causal_conv_does_not_look_into_later_chunks():
    torch.manual_seed(4)
    conv = ChunkCausalDepthwiseConv1d(channels=4, kernel_size=7).double()
    with torch.no_grad():
        conv.chunkwise_conv_scale.normal_(0, 0.1)
    x = torch.randn(2, 4, 40, dtype=torch.float64)
    chunk = 8
    y = conv(x, chunk_size=chunk)
    for c in range(1, 5):
        x2 = x.clone()
        x2[..., c * chunk :] = torch.randn_like(x2[..., c * chunk :])
        torch.testing.assert_close(conv(x2, chunk_size=chunk)[..., : c * chunk], y[..., : c * chunk], rtol=0, atol=0)
    # with one chunk covering everything it is an ordinary (non-causal) conv plus a causal one
    x3 = x.clone()
    x3[..., -1] += 1.0
    assert not torch.equal(conv(x3)[..., 37], conv(x)[..., 37])  # 2 frames back, within reach


def test_convert_num_channels():
    x = torch.randn(2, 3, 5)
    assert torch.equal(convert_num_channels(x, 3), x[..., :3])
    y = convert_num_channels(x, 8)
    assert y.shape == (2, 3, 8) and torch.equal(y[..., :5], x) and not y[..., 5:].any()


# ---------------------------------------------------------------------------- autocast


def test_modules_under_cpu_autocast_bf16():
    norm = BiasNorm(16)
    lin = ActivationDropoutAndLinear(16, 8, dropout_p=0.1, dropout_shared_dim=0)
    x = torch.randn(5, 3, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = torch.nn.functional.linear(x, torch.randn(16, 16))  # bf16 under autocast
        y = lin(SwooshR()(norm(h)))
        s = softmax(y, dim=-1)
    assert h.dtype == torch.bfloat16 and y.dtype == torch.bfloat16 and s.dtype == torch.bfloat16
    s.float().pow(2).sum().backward()
    for p in (norm.bias, norm.log_scale, lin.weight, lin.bias):
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert math.isfinite(F.mse_loss(y.float(), torch.zeros_like(y, dtype=torch.float32)).item())
