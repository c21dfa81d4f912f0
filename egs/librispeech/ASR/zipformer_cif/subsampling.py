"""Conv-Embed front end of Zipformer2: 100 Hz filterbanks -> 50 Hz embeddings.

Three Conv2d layers (time x freq strides 1x1, 2x2, 1x2; channels 8, 32, 128), one ConvNeXt
block, a Linear layer and BiasNorm. Parameter names and shapes follow icefall's
`zipformer/subsampling.py`, so its checkpoints load strictly.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from scaling import (
    Balancer,
    BiasNorm,
    Dropout3,
    FloatLike,
    ScaledConv2d,
    ScaleGrad,
    ScheduledFloat,
    SwooshL,
    SwooshR,
    Whiten,
    is_exporting,
)


class ConvNeXt(nn.Module):
    """ConvNeXt block on (N, C, T, F) feature maps (https://arxiv.org/abs/2206.14747):
    depthwise KxK conv, 1x1 conv to hidden_ratio * C, SwooshL, 1x1 conv back, residual.

    In training the residual branch is dropped for whole utterances with probability
    `layerdrop_rate`.
    """

    def __init__(
        self,
        channels: int,
        hidden_ratio: int = 3,
        kernel_size: Tuple[int, int] = (7, 7),
        layerdrop_rate: Optional[FloatLike] = None,
    ):
        super().__init__()
        self.padding = ((kernel_size[0] - 1) // 2, (kernel_size[1] - 1) // 2)
        hidden_channels = channels * hidden_ratio
        if layerdrop_rate is None:
            layerdrop_rate = ScheduledFloat((0.0, 0.2), (20000.0, 0.015))
        self.layerdrop_rate = layerdrop_rate

        self.depthwise_conv = nn.Conv2d(
            channels, channels, groups=channels, kernel_size=kernel_size, padding=self.padding
        )
        self.pointwise_conv1 = nn.Conv2d(channels, hidden_channels, kernel_size=1)
        self.hidden_balancer = Balancer(
            hidden_channels, channel_dim=1, min_positive=0.3, max_positive=1.0, min_abs=0.75, max_abs=5.0
        )
        self.activation = SwooshL()
        self.pointwise_conv2 = ScaledConv2d(hidden_channels, channels, kernel_size=1, initial_scale=0.01)
        self.out_balancer = Balancer(
            channels, channel_dim=1, min_positive=0.4, max_positive=0.6, min_abs=1.0, max_abs=6.0
        )
        self.out_whiten = Whiten(num_groups=1, whitening_limit=5.0, prob=(0.025, 0.25), grad_scale=0.01)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, C, T, F) -> same shape."""
        skip_mask = None
        if self.training and not is_exporting():
            layerdrop_rate = float(self.layerdrop_rate)
            if layerdrop_rate != 0.0:
                skip_mask = (torch.rand(x.shape[0], 1, 1, 1, device=x.device) > layerdrop_rate).to(x.dtype)

        y = self.depthwise_conv(x)
        y = self.pointwise_conv1(y)
        y = self.hidden_balancer(y)
        y = self.activation(y)
        y = self.pointwise_conv2(y)
        if skip_mask is not None:
            y = y * skip_mask
        x = self.out_balancer(x + y)
        if x.requires_grad:
            # Whiten works on the last dim: put channels there.
            x = self.out_whiten(x.transpose(1, 3)).transpose(1, 3)
        return x


class Conv2dSubsampling(nn.Module):
    """Convolutional front end that halves the frame rate.

    (N, T, in_channels) -> (N, (T - 7) // 2, out_channels); requires T >= 9 and
    in_channels >= 7.

    Args:
      in_channels: input feature dim (80 filterbanks).
      out_channels: output dim (the first Zipformer stack's dim).
      layer1_channels, layer2_channels, layer3_channels: channels of the three Conv2d layers.
      dropout: dropout on the output (mask shared over time), float or schedule.
      mask_padding: if True, frames past each utterance's length are zeroed before the ConvNeXt
        block, exactly as its zero padding does for an utterance alone, so an utterance's
        output does not depend on the batch it is in. icefall (False) lets the last 3 frames
        of shorter utterances see whatever the padding holds. Parameters are the same either
        way.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        layer1_channels: int = 8,
        layer2_channels: int = 32,
        layer3_channels: int = 128,
        dropout: FloatLike = 0.1,
        mask_padding: bool = False,
    ) -> None:
        super().__init__()
        if in_channels < 7:
            raise ValueError(f"Conv2dSubsampling needs in_channels >= 7, got {in_channels}")
        self.mask_padding = mask_padding

        # The module indices (conv.0, conv.4, conv.7 hold the weights) are part of the
        # checkpoint format. ScaleGrad keeps conv.0's gradient inside the fp16 range.
        self.conv = nn.Sequential(
            nn.Conv2d(1, layer1_channels, kernel_size=3, padding=(0, 1)),
            ScaleGrad(0.2),
            Balancer(layer1_channels, channel_dim=1, max_abs=1.0),
            SwooshR(),
            nn.Conv2d(layer1_channels, layer2_channels, kernel_size=3, stride=2, padding=0),
            Balancer(layer2_channels, channel_dim=1, max_abs=4.0),
            SwooshR(),
            nn.Conv2d(layer2_channels, layer3_channels, kernel_size=3, stride=(1, 2)),
            Balancer(layer3_channels, channel_dim=1, max_abs=4.0),
            SwooshR(),
        )
        self.convnext = ConvNeXt(layer3_channels, kernel_size=(7, 7))

        # frequency bins after the two stride-2 convolutions
        self.out_width = (((in_channels - 1) // 2) - 1) // 2
        self.layer3_channels = layer3_channels
        self.out = nn.Linear(self.out_width * layer3_channels, out_channels)
        # a larger grad_scale than elsewhere: there is only one such module.
        self.out_whiten = Whiten(
            num_groups=1,
            whitening_limit=ScheduledFloat((0.0, 4.0), (20000.0, 8.0), default=4.0),
            prob=(0.025, 0.25),
            grad_scale=0.02,
        )
        self.out_norm = BiasNorm(out_channels)
        self.dropout = Dropout3(dropout, shared_dim=1)

    def forward(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
        """
        Args:
          x: (N, T, in_channels) features.
          x_lens: (N,) number of valid frames per utterance; max(x_lens) must equal T.
        Returns:
          (N, (T - 7) // 2, out_channels) embeddings and their lengths (x_lens - 7) // 2.
        """
        num_frames = x.shape[1]
        if num_frames < 9:
            raise ValueError(f"Conv2dSubsampling needs at least 9 input frames, got {num_frames}")
        out_lens = (x_lens - 7) // 2

        x = self.conv(x.unsqueeze(1))  # (N, layer3_channels, (T - 7) // 2, out_width)
        if self.mask_padding:
            t = torch.arange(x.shape[2], device=x.device)
            valid = (t[None, :] < out_lens[:, None]).to(x.dtype)
            x = x * valid[:, None, :, None]
        x = self.convnext(x)

        n, c, t, f = x.shape
        x = x.transpose(1, 2).reshape(n, t, c * f)
        x = self.out(x)
        x = self.out_whiten(x)
        x = self.out_norm(x)
        x = self.dropout(x)

        checkable = not (is_exporting() or torch.compiler.is_compiling())  # no data-dependent ifs there
        if checkable and x.shape[1] != int(out_lens.max()):
            raise ValueError(
                f"Conv2dSubsampling: max(x_lens)={int(x_lens.max())} does not match the padded input "
                f"length T={num_frames}; trim the batch to its longest utterance."
            )
        return x, out_lens
