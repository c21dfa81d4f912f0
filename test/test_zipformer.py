"""Tests for the Zipformer2 encoder (zipformer.py, subsampling.py, encoder_configs.py).

They use the `tiny` config and check shapes, length formulas, the learned down/upsampling,
masking and batch invariance, causality of the chunked model, training and autocast.
(Equality with icefall's outputs is checked by test_icefall_parity.py against recorded
reference outputs; tools/record_icefall_reference.py re-records them from a fetched icefall.)
"""
import warnings

import pytest
import torch

from encoder_configs import ENCODER_CONFIGS, build_encoder, get_encoder_config, to_int_tuple
from scaling import set_batch_count
from subsampling import Conv2dSubsampling
from zipformer import ConvolutionModule, SimpleDownsample, SimpleUpsample, Zipformer2


def run(embed, encoder, x, x_lens):
    """(N, T, F) features -> ((N, T', C) encoder output, (N,) lengths)."""
    y, y_lens = embed(x, x_lens)
    mask = torch.arange(y.shape[1])[None, :] >= y_lens[:, None]
    out, out_lens = encoder(y.permute(1, 0, 2), y_lens, mask)
    return out.permute(1, 0, 2), out_lens


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    embed, encoder = build_encoder("tiny")
    return embed.eval(), encoder.eval()


def test_configs_are_complete_and_tiny_is_small():
    for name in ENCODER_CONFIGS:
        cfg = get_encoder_config(name)
        assert cfg["encoder_embed_dim"] == to_int_tuple(cfg["encoder_dim"])[0]
    cfg = get_encoder_config("tiny")
    cfg["encoder_dim"] = (1, 2)
    assert get_encoder_config("tiny")["encoder_dim"] != (1, 2)  # a fresh copy each time
    embed, encoder = build_encoder("tiny")
    n = sum(p.numel() for p in embed.parameters()) + sum(p.numel() for p in encoder.parameters())
    assert 1e6 < n < 3e6
    with pytest.raises(ValueError, match="Unknown encoder config 'huge'"):
        get_encoder_config("huge")
    with pytest.raises(ValueError, match="encoder_embed_dim"):
        build_encoder(dict(get_encoder_config("tiny"), encoder_embed_dim=64))
    assert to_int_tuple("2,2,3") == (2, 2, 3) and to_int_tuple(4) == (4,)


def test_small_config_has_the_size_of_icefalls_published_model():
    # icefall's RESULTS.md: the zipformer-small CR-CTC model (LibriSpeech, 500 BPE tokens) has
    # 22,118,279 parameters: Conv2dSubsampling + Zipformer2 + a (256 + 1) x 500 CTC head.
    embed, encoder = build_encoder("small")
    n = sum(p.numel() for p in embed.parameters()) + sum(p.numel() for p in encoder.parameters())
    assert n == 22_118_279 - 257 * 500


def test_subsampling_shapes_and_lengths():
    embed = Conv2dSubsampling(80, 48).eval()
    for t in (9, 10, 57, 100):
        x_lens = torch.tensor([t, max(9, t - 3)])
        y, y_lens = embed(torch.randn(2, t, 80), x_lens)
        assert y.shape == (2, (t - 7) // 2, 48)
        assert y_lens.tolist() == [(t - 7) // 2, (max(9, t - 3) - 7) // 2]
    with pytest.raises(ValueError, match="at least 9 input frames"):
        embed(torch.randn(1, 8, 80), torch.tensor([8]))
    with pytest.raises(ValueError, match="does not match the padded input"):
        embed(torch.randn(1, 60, 80), torch.tensor([30]))


def test_encoder_output_shape_and_length_formula(tiny):
    embed, encoder = tiny
    x_lens = torch.tensor([203, 150, 97])
    with torch.no_grad():
        out, out_lens = run(embed, encoder, torch.randn(3, 203, 80), x_lens)
    t50 = (x_lens - 7) // 2
    assert out_lens.tolist() == ((t50 + 1) // 2).tolist()  # ceil at the 2x output downsampling
    assert out.shape == (3, (int(t50.max()) + 1) // 2, max(encoder.encoder_dim))


def test_simple_downsample_is_softmax_weighted_average_with_edge_repeat():
    torch.manual_seed(5)
    ds = SimpleDownsample(4, downsample=3, dropout=0.0, causal=False).double()
    with torch.no_grad():
        ds.bias.copy_(torch.tensor([0.3, -1.0, 0.5]))
    x = torch.randn(7, 2, 4, dtype=torch.float64)
    y = ds(x)
    assert y.shape == (3, 2, 4)  # ceil(7 / 3)
    w = torch.exp(ds.bias.detach()) / torch.exp(ds.bias.detach()).sum()
    padded = torch.cat([x, x[-1:], x[-1:]])  # right edge repeats the last frame
    for j in range(3):
        ref = sum(w[k] * padded[3 * j + k] for k in range(3))
        torch.testing.assert_close(y[j], ref, rtol=1e-12, atol=1e-12)

    up = SimpleUpsample(4, 3)(y)
    assert up.shape == (9, 2, 4)
    assert torch.equal(up[3:6], y[1:2].expand(3, 2, 4))

    # with a padding mask, a shorter utterance is pooled as if it were alone
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[1, 4:] = True
    y_masked = ds(x, mask)
    alone = ds(x[:4, 1:2])
    torch.testing.assert_close(y_masked[:2, 1:2], alone, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y_masked[:, 0], y[:, 0], rtol=0, atol=0)


def test_padding_does_not_change_valid_outputs_and_batch_of_one_matches(tiny):
    embed, encoder = tiny
    torch.manual_seed(6)
    # 50 Hz lengths 62, 41, 29: not multiples of any downsampling factor
    x_lens = torch.tensor([131, 89, 65])
    x = torch.randn(3, 131, 80)
    with torch.no_grad():
        out, out_lens = run(embed, encoder, x, x_lens)
        x_other = x.clone()
        for i, n in enumerate(x_lens.tolist()):
            x_other[i, n:] = 100.0 * torch.randn_like(x_other[i, n:])  # different padding
        out_other, _ = run(embed, encoder, x_other, x_lens)
        for i, n in enumerate(x_lens.tolist()):
            valid = int(out_lens[i])
            torch.testing.assert_close(out_other[i, :valid], out[i, :valid], rtol=1e-5, atol=1e-5)
            alone, alone_lens = run(embed, encoder, x[i : i + 1, :n], x_lens[i : i + 1])
            assert alone.shape[1] == valid == int(alone_lens)
            torch.testing.assert_close(alone[0], out[i, :valid], rtol=1e-5, atol=1e-5)


def test_without_mask_padding_the_padding_leaks_like_icefall():
    # mask_padding=False keeps icefall's behaviour (needed for output parity with it): the
    # padding reaches the valid frames of shorter utterances through the downsampling.
    torch.manual_seed(7)
    cfg = dict(get_encoder_config("tiny"), mask_padding=False)
    embed, encoder = build_encoder(cfg)
    embed.eval(), encoder.eval()
    x_lens = torch.tensor([131, 89])
    x = torch.randn(2, 131, 80)
    x_other = x.clone()
    x_other[1, 89:] += 10.0
    with torch.no_grad():
        a, lens = run(embed, encoder, x, x_lens)
        b, _ = run(embed, encoder, x_other, x_lens)
    assert (a[1, : int(lens[1])] - b[1, : int(lens[1])]).abs().max() > 1e-4


def test_causal_chunked_encoder_does_not_look_ahead():
    torch.manual_seed(8)
    cfg = dict(get_encoder_config("tiny"), causal=True, chunk_size=(16,), left_context_frames=(-1,))
    _, encoder = build_encoder(cfg)
    encoder.eval()
    c0 = cfg["encoder_embed_dim"]
    x = torch.randn(64, 2, c0)
    x_lens = torch.tensor([64, 64])
    with torch.no_grad():
        y, _ = encoder(x, x_lens)
        for boundary in (16, 32, 48):
            x2 = x.clone()
            x2[boundary:] = torch.randn_like(x2[boundary:])
            y2, _ = encoder(x2, x_lens)
            t = boundary // 2  # output frames at 1/2 the input rate
            torch.testing.assert_close(y2[:t], y[:t], rtol=1e-5, atol=1e-5)
            assert (y2[t:] - y[t:]).abs().max() > 1e-3


def test_training_step_reaches_all_used_parameters():
    torch.manual_seed(9)
    embed, encoder = build_encoder("tiny")
    embed.train(), encoder.train()
    model = torch.nn.ModuleDict(dict(embed=embed, encoder=encoder))
    set_batch_count(model, 50000)  # past warm-up: no random skipping of the positional scores
    x_lens = torch.tensor([100, 80])
    out, out_lens = run(embed, encoder, torch.randn(2, 100, 80), x_lens)
    mask = torch.arange(out.shape[1])[None, :] < out_lens[:, None]
    (out.pow(2).mean(-1) * mask).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    # icefall's checkpoints carry an unused per-layer `bypass_scale`; every other parameter trains
    assert missing and all(n.endswith("layers.0.bypass_scale") for n in missing)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_forward_backward_under_bf16_autocast():
    torch.manual_seed(10)
    embed, encoder = build_encoder("tiny")
    model = torch.nn.ModuleDict(dict(embed=embed, encoder=encoder)).train()
    set_batch_count(model, 10)
    x_lens = torch.tensor([60, 50])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = run(embed, encoder, torch.randn(2, 60, 80), x_lens)
        loss = out.float().pow(2).mean()
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    embed.eval(), encoder.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf16, _ = run(embed, encoder, torch.randn(1, 60, 80), x_lens[:1])
    assert torch.isfinite(out_bf16).all()


def conv_module_ref(m: ConvolutionModule, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The convolution module written out naively in float64: x (T, N, C), mask (N, T)."""
    w_in, b_in = m.in_proj.weight.double(), m.in_proj.bias.double()
    h = x @ w_in.t() + b_in
    c = x.shape[-1]
    h = h[..., :c] * torch.sigmoid(h[..., c:])
    h = h.masked_fill(mask.t().unsqueeze(-1), 0.0)
    w, b = m.depthwise_conv.weight.double()[:, 0, :], m.depthwise_conv.bias.double()  # (C, K), (C,)
    k = w.shape[1]
    out = torch.zeros_like(h) + b
    for t in range(h.shape[0]):
        for j in range(k):
            s = t + j - k // 2
            if 0 <= s < h.shape[0]:
                out[t] += h[s] * w[:, j]
    out = torch.logaddexp(torch.zeros_like(out), out - 1.0) - 0.08 * out - 0.313261687  # SwooshR
    return out @ m.out_proj.weight.double().t() + m.out_proj.bias.double()


@pytest.mark.parametrize("train", [False, True])
def test_convolution_module_matches_naive_reference(train):
    torch.manual_seed(11)
    m = ConvolutionModule(16, kernel_size=7, causal=False).train(train)
    x = torch.randn(13, 3, 16)
    mask = torch.zeros(3, 13, dtype=torch.bool)
    mask[1, 9:] = True
    mask[2, 4:] = True
    y = m(x, src_key_padding_mask=mask)
    torch.testing.assert_close(y.double(), conv_module_ref(m, x.double(), mask), rtol=1e-5, atol=1e-5)
    if train:
        y.sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_zipformer2_rejects_inconsistent_config():
    with pytest.raises(ValueError, match="num_heads has 3 values but there are 2 stacks"):
        Zipformer2(downsampling_factor=(1, 2), encoder_dim=64, num_heads=(4, 4, 4))
    with pytest.raises(ValueError, match="exceeds encoder_dim"):
        Zipformer2(downsampling_factor=(1, 2), encoder_dim=64, encoder_unmasked_dim=96)


def test_traced_encoder_matches_eager_on_other_shapes(tiny):
    # Export (torch.jit.trace / torch.onnx.export) records one call; nothing shape-dependent
    # may be baked in: padding decisions, positional-table slices, relative-position shifts.
    embed, encoder = tiny

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.encoder = embed, encoder

        def forward(self, x, x_lens):
            return run(self.embed, self.encoder, x, x_lens)

    model = Wrapper().eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings
        traced = torch.jit.trace(model, (torch.randn(2, 120, 80), torch.tensor([120, 100])))
    x, x_lens = torch.randn(3, 173, 80), torch.tensor([173, 150, 99])  # odd lengths need edge padding
    with torch.no_grad():
        ref, ref_lens = model(x, x_lens)
        out, out_lens = traced(x, x_lens)
    assert torch.equal(out_lens, ref_lens)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
