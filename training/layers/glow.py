"""Glow building blocks (Kingma & Dhariwal 2018) as AgeFlow uses them (docs/models/ageflow.md sections 3.1, 3.2, 9).

Squeeze/unsqueeze, ActNorm, the LU-parametrised invertible 1x1 conv, the additive coupling whose last layer
is the 1-padded ZeroConv2d, optional channel attention in the coupling network (AgeFlow's ICTM), one flow
step, and one multi-scale level with its split prior. Module and parameter names follow the official
AgeFlow code (Hzzone/AgeFlow ``flow/modules.py``), so its ``generator-*`` state dicts map key for key.

Every ``forward`` returns ``(output, logdet)`` with a data-independent logdet (a 0-d tensor: ActNorm, the
1x1 conv and additive couplings have Jacobians that do not depend on the input); ``reverse`` undoes it.

Inference and the 1x1 conv (docs/models/ageflow.md section 7 item 7, section 8 item 8): in training mode W is
rebuilt from its LU factors on every call so gradients reach them. In eval mode W and W^-1 come from a
cache built once, in float64, from the current factors (lazily on first eval use, or explicitly with
:meth:`InvConv2dLU.prepare_inference`); the cache is keyed on the factors' storage and version counters, so
``load_state_dict``, optimiser steps and dtype/device moves invalidate it. Edits through ``.data`` bypass
version counters: call ``prepare_inference()`` after them. Eval mode therefore treats W as frozen (no
gradient reaches ``w_l``/``w_u``/``w_s``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .inv_conv1x1 import inv_conv1x1

_LOG_2PI = math.log(2.0 * math.pi)


# --- squeeze -----------------------------------------------------------------------------------------------
def squeeze2d(x: Tensor) -> Tensor:
    """Space to depth, 2x2: [B, C, H, W] -> [B, 4C, H/2, W/2]; output channel 4c + 2dy + dx holds
    input (c, 2i + dy, 2j + dx) (the openai/glow order)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2)  # [B, C, H/2, dy, W/2, dx]
    x = x.permute(0, 1, 3, 5, 2, 4)  # [B, C, dy, dx, H/2, W/2]
    return x.reshape(b, 4 * c, h // 2, w // 2)  # [B, 4C, H/2, W/2]


def unsqueeze2d(x: Tensor) -> Tensor:
    """Exact inverse of :func:`squeeze2d`: [B, 4C, H, W] -> [B, C, 2H, 2W]."""
    b, c4, h, w = x.shape
    x = x.reshape(b, c4 // 4, 2, 2, h, w)  # [B, C, dy, dx, H, W]
    x = x.permute(0, 1, 4, 2, 5, 3)  # [B, C, H, dy, W, dx]
    return x.reshape(b, c4 // 4, 2 * h, 2 * w)  # [B, C, 2H, 2W]


def gaussian_log_p(x: Tensor, mean: Tensor, log_sd: Tensor) -> Tensor:
    """Elementwise log N(x; mean, exp(log_sd)^2) = -1/2 log 2pi - log_sd - 1/2 (x - mean)^2 exp(-2 log_sd)."""
    return -0.5 * _LOG_2PI - log_sd - 0.5 * (x - mean) ** 2 * torch.exp(-2.0 * log_sd)  # like x


# --- ActNorm -----------------------------------------------------------------------------------------------
class ActNorm(nn.Module):
    """y = scale * (x + loc) per channel; logdet = H * W * sum log|scale|.

    Data-dependent init (loc = -mean, scale = 1 / (std + 1e-6), unbiased std over N, H, W, summed across
    ranks under torch.distributed) runs on the first *training-mode* forward while ``initialized`` is 0;
    an eval forward never changes anything (docs/models/ageflow.md section 7 item 8).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set loc, scale from the batch x [B, C, H, W] (float64 sums; all-reduced when distributed)."""
        flat = x.detach().double().transpose(0, 1).reshape(x.shape[1], -1)  # [C, N*H*W]
        stats = torch.stack([flat.sum(1), (flat * flat).sum(1)])  # [2, C]
        count = torch.tensor(float(flat.shape[1]), dtype=torch.float64, device=x.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stats)
            torch.distributed.all_reduce(count)
        mean = stats[0] / count  # [C]
        var = (stats[1] - count * mean * mean).clamp_min(0.0) / (count - 1.0)  # [C], unbiased
        self.loc.copy_((-mean).view_as(self.loc))
        self.scale.copy_((1.0 / (var.sqrt() + 1e-6)).view_as(self.scale))
        self.initialized.fill_(1)

    def logdet(self, height: int, width: int) -> Tensor:
        """H * W * sum log|scale| (0-d tensor)."""
        return height * width * torch.log(self.scale.abs()).sum()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, C, H, W] -> (y [B, C, H, W], logdet 0-d)."""
        if self.training and int(self.initialized) == 0:
            self.initialize(x)
        y = self.scale * (x + self.loc)  # [B, C, H, W]
        return y, self.logdet(x.shape[2], x.shape[3])

    def reverse(self, y: Tensor) -> Tensor:
        """x = y / scale - loc, [B, C, H, W]."""
        return y / self.scale - self.loc  # [B, C, H, W]


# --- invertible 1x1 conv -----------------------------------------------------------------------------------
class InvConv2dLU(nn.Module):
    """Invertible 1x1 conv with W = P (L * M_l + I) (U * M_u + diag(sign * exp(w_s))).

    Buffers (fixed): ``w_p`` permutation P, ``u_mask`` strict-upper mask M_u, ``l_mask`` = M_u^T, ``l_eye`` I,
    ``s_sign``. Parameters: ``w_l``, ``w_u`` [C, C], ``w_s`` = log|diag U| [C]. logdet = H * W * sum w_s.

    ``init="qr"``: LU factors of the Q of a Gaussian matrix (Glow; draws from the global torch RNG).
    ``init="reverse"``: P = channel reversal, L = I, U = 0, w_s = 0, so W is the reversal permutation
    (AgeFlow's ICTM: an even number of them multiply to the identity).
    """

    def __init__(self, channels: int, init: str = "qr") -> None:
        super().__init__()
        if init == "qr":
            q = torch.linalg.qr(torch.randn(channels, channels))[0]  # [C, C] orthogonal
            w_p, w_l, w_u = torch.linalg.lu(q)  # q = P L U
            diag_u = torch.diagonal(w_u)  # [C]
            s_sign, w_s, w_u = torch.sign(diag_u), torch.log(diag_u.abs()), torch.triu(w_u, 1)
        elif init == "reverse":
            w_p = torch.eye(channels).flip(0)  # [C, C] anti-diagonal: (P x)_i = x_{C-1-i}
            w_l = torch.eye(channels)  # [C, C] masked to L = I
            w_u = torch.zeros(channels, channels)  # [C, C]
            s_sign, w_s = torch.ones(channels), torch.zeros(channels)  # [C], [C]
        else:
            raise ValueError(f"InvConv2dLU init must be 'qr' or 'reverse', got {init!r}")
        u_mask = torch.triu(torch.ones(channels, channels), 1)  # [C, C]
        self.register_buffer("w_p", w_p)
        self.register_buffer("u_mask", u_mask)
        self.register_buffer("l_mask", u_mask.T.contiguous())
        self.register_buffer("s_sign", s_sign)
        self.register_buffer("l_eye", torch.eye(channels))
        self.w_l = nn.Parameter(w_l)
        self.w_s = nn.Parameter(w_s)
        self.w_u = nn.Parameter(w_u)
        self._cache: tuple[tuple, Tensor, Tensor] | None = None  # (key, W float64, W^-1 float64); not state

    def _factors(self) -> tuple[Tensor, ...]:
        return (self.w_p, self.w_l, self.l_mask, self.l_eye, self.w_u, self.u_mask, self.s_sign, self.w_s)

    def _cache_key(self) -> tuple:
        return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in self._factors())

    def calc_weight(self, dtype: torch.dtype | None = None) -> Tensor:
        """W [C, C] from the factors, in ``dtype`` (default: the parameters'); differentiable."""
        w_p, w_l, l_mask, l_eye, w_u, u_mask, s_sign, w_s = (t.to(dtype or t.dtype) for t in self._factors())
        lower = w_l * l_mask + l_eye  # [C, C] unit lower-triangular
        upper = w_u * u_mask + torch.diag(s_sign * torch.exp(w_s))  # [C, C] upper-triangular
        return w_p @ lower @ upper  # [C, C]

    @torch.no_grad()
    def prepare_inference(self) -> tuple[Tensor, Tensor]:
        """Build (W, W^-1) in float64 once and cache them; returns the cached pair."""
        key = self._cache_key()
        if self._cache is None or self._cache[0] != key:
            weight = self.calc_weight(torch.float64)  # [C, C]
            self._cache = (key, weight, torch.linalg.inv(weight))
        return self._cache[1], self._cache[2]

    def logdet(self, height: int, width: int) -> Tensor:
        """H * W * sum w_s (0-d tensor)."""
        return height * width * self.w_s.sum()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, C, H, W] -> (W x [B, C, H, W], logdet 0-d)."""
        weight = self.calc_weight() if self.training else self.prepare_inference()[0]
        return inv_conv1x1(x, weight.to(x.dtype)), self.logdet(x.shape[2], x.shape[3])

    def reverse(self, y: Tensor) -> Tensor:
        """W^-1 y [B, C, H, W] (training mode inverts W in float64 on each call)."""
        if self.training:
            weight_inv = torch.linalg.inv(self.calc_weight(torch.float64))  # [C, C]
        else:
            weight_inv = self.prepare_inference()[1]  # [C, C]
        return inv_conv1x1(y, weight_inv.to(y.dtype))  # [B, C, H, W]

    def _apply(self, fn, recurse=True):
        self._cache = None  # moved or cast: the float64 cache is rebuilt on the next eval use
        return super()._apply(fn, recurse)


# --- coupling ----------------------------------------------------------------------------------------------
class ZeroConv2d(nn.Module):
    """Pad the input by one pixel with the constant 1.0, 3x3 conv (no padding), times exp(3 * scale).

    ``conv.weight``, ``conv.bias`` and ``scale`` [1, out, 1, 1] start at zero, so the layer outputs zero.
    The 1-padding is the official code's (docs/models/ageflow.md section 7 item 2); released weights rely on it.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=0)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.scale = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """x [B, in, H, W] -> [B, out, H, W]."""
        x = F.pad(x, [1, 1, 1, 1], value=1.0)  # [B, in, H+2, W+2]
        return self.conv(x) * torch.exp(self.scale * 3.0)  # [B, out, H, W]


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: x * sigmoid(fc2(ReLU(fc1(mean_hw x)))) (AgeFlow ICTM, docs/models/ageflow.md 3.2)."""

    def __init__(self, channels: int, bottleneck: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, bottleneck), nn.ReLU(), nn.Linear(bottleneck, channels))

    def forward(self, x: Tensor) -> Tensor:
        """x [B, C, H, W] -> [B, C, H, W]."""
        weight = torch.sigmoid(self.fc(x.mean(dim=(2, 3))))  # [B, C]
        return x * weight[:, :, None, None]  # [B, C, H, W]


class AdditiveCoupling(nn.Module):
    """y_a = x_a, y_b = x_b + NN(x_a) on channel halves; logdet 0.

    NN = Conv3x3(C/2 -> h, zero pad 1) -> ReLU -> Conv1x1(h -> h) -> ReLU [-> ChannelAttention(h)]
    -> ZeroConv2d(h -> C/2); keys ``net.0``, ``net.2``, ``net.4`` as in the official G (the attention
    variant, used only by the ICTM, has the zero conv at ``net.5``). The first two convs start N(0, 0.05^2)
    with zero bias; the zero conv makes the coupling the identity at init.
    """

    def __init__(self, channels: int, hidden: int, attention: int | None = None) -> None:
        super().__init__()
        half = channels // 2
        layers: list[nn.Module] = [
            nn.Conv2d(half, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
        ]
        if attention is not None:
            layers.append(ChannelAttention(hidden, attention))
        layers.append(ZeroConv2d(hidden, channels - half))
        self.net = nn.Sequential(*layers)
        for conv in (self.net[0], self.net[2]):
            nn.init.normal_(conv.weight, 0.0, 0.05)
            nn.init.zeros_(conv.bias)

    @property
    def zero_conv(self) -> ZeroConv2d:
        return self.net[-1]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, C, H, W] -> (y [B, C, H, W], logdet 0-d zero)."""
        x_a, x_b = x.chunk(2, dim=1)  # [B, C/2, H, W] each
        y = torch.cat([x_a, x_b + self.net(x_a)], dim=1)  # [B, C, H, W]
        return y, x.new_zeros(())

    def reverse(self, y: Tensor) -> Tensor:
        """x_b = y_b - NN(y_a), [B, C, H, W]."""
        y_a, y_b = y.chunk(2, dim=1)  # [B, C/2, H, W] each
        return torch.cat([y_a, y_b - self.net(y_a)], dim=1)  # [B, C, H, W]


# --- flow step and level -----------------------------------------------------------------------------------
class FlowStep(nn.Module):
    """[ActNorm ->] invertible 1x1 conv -> additive coupling (keys ``actnorm``, ``invconv``, ``coupling``)."""

    def __init__(
        self,
        channels: int,
        hidden: int,
        *,
        actnorm: bool = True,
        invconv_init: str = "qr",
        attention: int | None = None,
    ) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels) if actnorm else None
        self.invconv = InvConv2dLU(channels, invconv_init)
        self.coupling = AdditiveCoupling(channels, hidden, attention)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, C, H, W] -> (y [B, C, H, W], logdet 0-d)."""
        logdet = x.new_zeros(())
        if self.actnorm is not None:
            x, ld = self.actnorm(x)  # [B, C, H, W]
            logdet = logdet + ld
        x, ld = self.invconv(x)  # [B, C, H, W]
        logdet = logdet + ld
        x, ld = self.coupling(x)  # [B, C, H, W]
        return x, logdet + ld

    def reverse(self, y: Tensor) -> Tensor:
        """Inverse of forward: coupling^-1, then W^-1, then ActNorm^-1; [B, C, H, W]."""
        y = self.coupling.reverse(y)  # [B, C, H, W]
        y = self.invconv.reverse(y)  # [B, C, H, W]
        return self.actnorm.reverse(y) if self.actnorm is not None else y


class GlowLevel(nn.Module):
    """One multi-scale level: squeeze, ``steps`` flow steps, then split (or not, on the top level).

    ``in_channels`` C_in -> C = 4 C_in after the squeeze. Split levels keep channels [0, C/2) as the next
    level's input and factor out z = [C/2, C); their ``prior`` ZeroConv2d(C/2 -> C) maps the kept half to
    (mean | log_sd) of z. The top level keeps everything as z_top; its ``prior`` ZeroConv2d(C -> 2C) is
    applied to zeros (the same for every image; only the 1-padding makes it vary at the border).
    """

    def __init__(self, in_channels: int, steps: int, hidden: int, split: bool) -> None:
        super().__init__()
        channels = 4 * in_channels
        self.split = split
        self.flows = nn.ModuleList(FlowStep(channels, hidden) for _ in range(steps))
        self.prior = ZeroConv2d(channels // 2, channels) if split else ZeroConv2d(channels, 2 * channels)

    def forward(self, x: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        """x [B, C_in, H, W] -> (kept [B, 2 C_in, H/2, W/2] or None on the top level,
        z [B, 2 C_in or 4 C_in, H/2, W/2], logdet 0-d)."""
        x = squeeze2d(x)  # [B, C, H/2, W/2]
        logdet = x.new_zeros(())
        for flow in self.flows:
            x, ld = flow(x)  # [B, C, H/2, W/2]
            logdet = logdet + ld
        if not self.split:
            return None, x, logdet
        kept, z = x.chunk(2, dim=1)  # [B, C/2, H/2, W/2] each
        return kept, z, logdet

    def prior_params(self, kept: Tensor | None, z_shape: torch.Size) -> tuple[Tensor, Tensor]:
        """(mean, log_sd) of z, each ``z_shape`` ([B, C_z, h, w]); ``kept`` is None on the top level."""
        if kept is None:
            zeros = self.prior.scale.new_zeros(1, *z_shape[1:])  # [1, C, h, w]
            mean, log_sd = self.prior(zeros).chunk(2, dim=1)  # [1, C, h, w] each
            return mean.expand(z_shape), log_sd.expand(z_shape)
        mean, log_sd = self.prior(kept).chunk(2, dim=1)  # [B, C/2, h, w] each
        return mean, log_sd

    def reverse(self, kept: Tensor | None, z: Tensor) -> Tensor:
        """(kept, z) -> x [B, C_in, 2h, 2w]; kept is None on the top level."""
        x = z if kept is None else torch.cat([kept, z], dim=1)  # [B, C, h, w]
        for flow in reversed(self.flows):
            x = flow.reverse(x)  # [B, C, h, w]
        return unsqueeze2d(x)  # [B, C_in, 2h, 2w]


__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "ChannelAttention",
    "FlowStep",
    "GlowLevel",
    "InvConv2dLU",
    "ZeroConv2d",
    "gaussian_log_p",
    "squeeze2d",
    "unsqueeze2d",
]
