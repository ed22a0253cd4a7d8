"""Generic StyleGAN2 building blocks (Karras et al. 2020; stylegan2-ada layout), as CUSP uses them.

* ``fir_filter``: the separable low-pass f = [1,3,3,1] (x) [1,3,3,1] / 64, stored as a [4, 4] buffer.
* ``upfirdn2d``: upsample by zero insertion, pad (negative pads crop), FIR, downsample by striding.
* ``upsample2d`` / ``downsample_conv2d``: the x2 resamplers built on it.
* ``FullyConnectedLayer``: weights stored unscaled; the runtime gain lr/sqrt(in) (equalised learning rate
  with a learning-rate multiplier) is applied in forward, so official tensors load unchanged.
* ``MappingNetwork``: 2nd-moment normalisation, then FC + lrelu*sqrt(2) layers, repeated num_ws times.
* ``Conv2dLayer``: FIR, stride-2 3x3 correlation with gain 1/sqrt(9 C_in), bias, lrelu*sqrt(2).

The modulated convolution itself is the oracle in ``modulated_conv2d.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FIR_TAPS = (1.0, 3.0, 3.0, 1.0)
LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)


def fir_filter(taps: Sequence[float] = FIR_TAPS) -> Tensor:
    """The 2-D separable FIR filter taps (x) taps, normalised to sum 1: Tensor[k, k] float32."""
    t = torch.as_tensor(taps, dtype=torch.float64)  # [k]
    f = t[:, None] * t[None, :]  # [k, k]
    return (f / f.sum()).float()


def lrelu_act(x: Tensor, gain: float = LRELU_GAIN, clamp: float | None = None) -> Tensor:
    """lrelu(0.2) * gain, then an optional symmetric clamp (stylegan2-ada ``bias_act`` without the bias)."""
    y = F.leaky_relu(x, LRELU_SLOPE) * gain  # same shape as x
    return y if clamp is None else y.clamp(-clamp, clamp)


def upfirdn2d(
    x: Tensor,
    f: Tensor,
    up: int = 1,
    down: int = 1,
    padding: tuple[int, int, int, int] = (0, 0, 0, 0),
    gain: float = 1.0,
) -> Tensor:
    """Upsample, pad, FIR-filter and downsample every channel of x.

    Args:
        x: Tensor[B, C, H, W].
        f: Tensor[kh, kw] filter (applied as a true convolution, i.e. flipped; f here is symmetric).
        up: zero-insertion factor.
        down: decimation factor (keeps every ``down``-th sample, starting at 0).
        padding: (x0, x1, y0, y1) zero padding after upsampling; negative values crop.
        gain: multiplies the filter (4 keeps the DC gain of a x2 upsampling).

    Returns:
        Tensor[B, C, H', W'], H' = (H * up + y0 + y1 - kh) // down + 1.
    """
    batch, channels, height, width = x.shape
    if up > 1:
        x = x.reshape(batch, channels, height, 1, width, 1)  # [B, C, H, 1, W, 1]
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))  # [B, C, H, up, W, up]
        x = x.reshape(batch, channels, height * up, width * up)  # [B, C, H*up, W*up]
    x0, x1, y0, y1 = padding
    x = F.pad(x, (max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)))  # [B, C, H+, W+]
    x = x[:, :, max(-y0, 0) : x.shape[2] - max(-y1, 0), max(-x0, 0) : x.shape[3] - max(-x1, 0)]  # crop
    weight = (f * gain).to(x.dtype).flip([0, 1])  # [kh, kw]
    weight = weight[None, None].expand(channels, 1, *f.shape)  # [C, 1, kh, kw]
    x = F.conv2d(x, weight, groups=channels)  # [B, C, H'', W'']
    return x[:, :, ::down, ::down] if down > 1 else x


def upsample2d(x: Tensor, f: Tensor) -> Tensor:
    """x2 upsampling of an RGB path: zero insertion, padding (2, 1), FIR f*4. [B, C, H, W] -> [B, C, 2H, 2W]."""
    return upfirdn2d(x, f, up=2, padding=(2, 1, 2, 1), gain=4.0)


class FullyConnectedLayer(nn.Module):
    """y = act(x (W * lr / sqrt(in))^T + b * lr); W and b are stored unscaled (stylegan2-ada layout)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_multiplier: float = 1.0,
        activation: str = "linear",
    ) -> None:
        super().__init__()
        if activation not in ("linear", "lrelu"):
            raise ValueError(f"activation must be 'linear' or 'lrelu', got {activation!r}")
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)  # [out, in]
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init))) if bias else None  # [out]
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: Tensor) -> Tensor:
        """x: Tensor[B, in] -> Tensor[B, out]."""
        w = self.weight * self.weight_gain  # [out, in]
        b = None if self.bias is None else self.bias * self.bias_gain  # [out]
        y = F.linear(x, w, b)  # [B, out]
        return lrelu_act(y) if self.activation == "lrelu" else y

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, activation={self.activation}"


def normalize_2nd_moment(x: Tensor, eps: float = 1e-8) -> Tensor:
    """x * (mean(x^2) + eps)^(-1/2) over the feature axis: [B, F] -> [B, F]."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class MappingNetwork(nn.Module):
    """Input -> normalise -> ``num_layers`` FC+lrelu layers (lr 0.01) -> w repeated ``num_ws`` times.

    Keys: ``fc{i}.weight`` / ``fc{i}.bias`` and the (unused, no truncation) ``w_avg`` buffer.
    """

    def __init__(self, in_features: int, w_dim: int, num_layers: int, num_ws: int, lr_multiplier: float = 0.01) -> None:
        super().__init__()
        self.num_layers, self.num_ws, self.w_dim = num_layers, num_ws, w_dim
        for i in range(num_layers):
            fc = FullyConnectedLayer(
                in_features if i == 0 else w_dim, w_dim, lr_multiplier=lr_multiplier, activation="lrelu"
            )
            setattr(self, f"fc{i}", fc)
        self.register_buffer("w_avg", torch.zeros(w_dim))  # [w_dim]

    def forward(self, x: Tensor) -> Tensor:
        """x: Tensor[B, in] -> ws: Tensor[B, num_ws, w_dim] (identical copies)."""
        h = normalize_2nd_moment(x)  # [B, in]
        for i in range(self.num_layers):
            h = getattr(self, f"fc{i}")(h)  # [B, w_dim]
        return h[:, None, :].expand(-1, self.num_ws, -1)  # [B, num_ws, w_dim]


class Conv2dLayer(nn.Module):
    """Down-sampling conv: FIR (zero padding 2), 3x3 stride-2 correlation with gain 1/sqrt(9 C_in), bias,
    lrelu*sqrt(2). Maps [B, C_in, H, W] -> [B, C_out, H/2, W/2] for even H, W.

    Keys: ``weight`` [C_out, C_in, 3, 3], ``bias`` [C_out], ``resample_filter`` [4, 4].
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))  # [O,I,k,k]
        self.bias = nn.Parameter(torch.zeros(out_channels))  # [O]
        self.register_buffer("resample_filter", fir_filter())  # [4, 4]
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        x = upfirdn2d(x, self.resample_filter, padding=(2, 2, 2, 2))  # [B, I, H+1, W+1]
        w = (self.weight * self.weight_gain).to(x.dtype)  # [O, I, 3, 3]
        x = F.conv2d(x, w, stride=2)  # [B, O, H/2, W/2]
        x = x + self.bias.to(x.dtype)[None, :, None, None]  # [B, O, H/2, W/2]
        return lrelu_act(x)


__all__ = [
    "FIR_TAPS",
    "Conv2dLayer",
    "FullyConnectedLayer",
    "MappingNetwork",
    "fir_filter",
    "lrelu_act",
    "normalize_2nd_moment",
    "upfirdn2d",
    "upsample2d",
]
