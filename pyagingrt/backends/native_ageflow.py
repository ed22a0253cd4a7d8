"""AgeFlow's native runner: G -> T -> G^-1 rewritten for inference (docs/models/ageflow.md sections 3.1, 8, 9).

Rewrites, each exact in real arithmetic (the fp32 engine differs from the torch backend only by rounding, and
the float64 engine, which the tests build, agrees with the float64 torch module to ~1e-14):

1. **ActNorm folded into each invertible 1x1 conv** (docs/models/ageflow.md 9, docs/performance.md 3.4).
   ``y = W (s * (x + loc))`` is the affine ``W' x + b'`` with ``W' = W diag(s)``, ``b' = W (s * loc)``; its inverse is
   ``W'^-1 z - loc``. W is rebuilt from its LU factors, folded and inverted once, in float64, when the runner is built
   (:func:`~pyagingrt.training.layers.inv_conv1x1.fold_actnorm_inv_conv1x1`), then stored in the stream dtype.
   Both directions are one ``inv_conv1x1`` op; no matrix is inverted while the engine runs. T's LU convs have
   no ActNorm and fold the same way with ``loc = 0, s = 1``.
2. **ZeroConv2d's gain folded into its weight and bias**: ``conv(x, w) * g + b * g`` with ``g = exp(3 scale)``
   per output channel is ``conv(x, w * g) + b * g``.
3. **Pad-with-1 as zero padding plus a border bias map** (docs/models/ageflow.md 9). The conv is linear in its input,
   and the 1-padded input is the zero-padded input plus a frame of ones, so ``conv(pad1(x)) = conv(pad0(x)) + B`` with
   ``B[o, y, x]`` the sum of ``sum_c w[o, c, dy, dx]`` over the taps of output pixel (y, x) that land on the
   frame. B depends only on the weights and the map size, so it is precomputed once per coupling (its level
   fixes the size) in float64, with the folded bias added: one stream-dtype map ``[1, C/2, H, W]`` added with
   the update. Chosen over an explicit constant pad because that pad copies the whole 512-channel hidden tensor
   (the largest activation, 16.8 MB per image at level 0 in fp16) before every zero conv, while the map costs
   one read of a C/2-channel map (6 channels at level 0), and zero padding is free inside the conv kernel.
4. **Additive coupling in place**: the update ``x_b <- x_b +/- NN(x_a)`` writes straight into the channel half
   of the stream tensor; ``x_a`` is a view. No chunk/cat copies. Split levels hand on ``kept`` and ``z`` as
   views of the same buffer.
5. **Squeeze and unsqueeze as strided views**: squeeze is one reshape (a single copy when its input is a
   channel half); on the way down, unsqueeze of level l+1's output is written straight into the first half of
   level l's buffer and ``z_l`` (or its rebuild from the prior in ``eps`` mode) into the second, replacing
   unsqueeze + cat with two strided copies.
6. **T likewise**, with the prior generator as a table gather: ``Linear(onehot(g))`` on a bias-free layer is
   exactly row g of its weight, so (mu_t, rho_t) is one ``index_select`` of a precomputed table. Channel
   attention runs as is (a [B, h] gate, applied in place).
7. **Precision and layout** (docs/models/ageflow.md 9 "Precision"): the residual stream, the folded 1x1 affines, the
   zero-conv border maps, the additive updates, the eps-mode priors and all of T are fp32 (float64 in the
   float64 test engine; G's stream optionally float64, see "Round trip" below). G's coupling networks
   (3x3 -> ReLU -> 1x1 -> ReLU -> zero conv) run in the engine dtype (fp16/bf16 on CUDA, bf16 possible on CPU)
   with ``channels_last`` on CUDA; their output is promoted to the stream dtype when the border map is added,
   before it touches the stream. On CUDA, TF32 is switched off for the
   duration of forward() (cuDNN convs and matmuls), because "fp32" in docs/models/ageflow.md means IEEE fp32 (section 8
   item 3); the caller's flags are restored afterwards.
8. **Graph-safe forward**: prepare() validates on the host and returns the images and group indices;
   forward() quantises, encodes, translates, decodes and post-processes with device work only (no syncs, no
   data-dependent branches, no host tensors), so it is captured in one CUDA graph per batch bucket.

The split/top priors are not needed in ``raw`` mode and never run; ``eps`` mode runs the five split-prior
ZeroConvs in the stream dtype with the same folding (2 and 3).

**Round trip with half-precision networks.** The coupling inverts exactly for any network output, but an
fp16/bf16 network is a step function of its input: wherever decode's x_a differs from encode's by the fp32
stream's rounding, some rounded hidden activations flip by one half-type ulp. The error then grows with the
half type's ulp times the flow's amplification, not with fp32's. Measured on CPU with docs/models/ageflow.md's random
weights (64x64, 4 levels x 32 steps, width 512): fp32 networks 4.3e-5, fp16 networks 9.2e-3 with an fp32 stream,
2.7e-13 with ``stream_dtype=torch.float64``. The wider stream leaves the networks' input bit-identical in
practice, costs about one more stream-sized read/write per op (the stream is 0.8 MB per image in fp32, the
hidden tensors 16.8 MB), and on CUDA runs the 1x1 affines as cuDNN float64 1x1 convs until inv_conv1x1 has a
CUDA float64 kernel. docs/models/ageflow.md 9 fixes the stream at fp32, but its own round-trip bound (1e-3, section 8
item 3) is out of reach with fp16 networks on an fp32 stream, so engines with fp16/bf16 networks default to a
float64 stream
(a project decision recorded here; ``stream_dtype=torch.float32`` restores docs/models/ageflow.md's choice).
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..ops import inv_conv1x1
from ..training.layers.glow import ChannelAttention, FlowStep, ZeroConv2d, squeeze2d, unsqueeze2d
from ..training.layers.inv_conv1x1 import FoldedInvConv1x1, fold_actnorm_inv_conv1x1
from ..training.models.ageflow import AgeFlow, AgeFlowConfig, postprocess_output, quantize_input
from .runner import NativeRunner, Tensors, check_target_indices


# --- folding (build time, float64) --------------------------------------------------------------------------
def border_bias_map(weight: Tensor, bias: Tensor, height: int, width: int) -> Tensor:
    """The constant part of a 1-padded 3x3 conv: ``conv(pad1(x), weight) + bias - conv(pad0(x), weight)``.

    Only taps that land on the padding frame contribute, each with ``sum_c weight[o, c, dy, dx]``, so the
    channel sums are convolved with a one-channel frame of ones (cheap even at width 512).

    Args:
        weight: Tensor[out, in, 3, 3].
        bias: Tensor[out].
        height, width: the conv's input (and output) size.

    Returns:
        Tensor[1, out, height, width] in weight's dtype: ``bias`` inside, bias plus the frame term on the border.
    """
    tap_sums = weight.sum(dim=1, keepdim=True)  # [out, 1, 3, 3]
    frame = torch.ones(1, 1, height + 2, width + 2, dtype=weight.dtype, device=weight.device)  # [1, 1, H+2, W+2]
    frame[:, :, 1:-1, 1:-1] = 0.0
    return F.conv2d(frame, tap_sums) + bias[None, :, None, None]  # [1, out, H, W]


def fold_zero_conv(zero_conv: ZeroConv2d, height: int, width: int) -> tuple[Tensor, Tensor]:
    """ZeroConv2d as a zero-padded conv plus a bias map, computed in float64.

    ``zero_conv(x) == F.conv2d(x, weight, padding=1) + bias_map`` for x [B, in, height, width].

    Returns:
        weight: float64 Tensor[out, in, 3, 3] = conv.weight * exp(3 scale).
        bias_map: float64 Tensor[1, out, height, width] (see :func:`border_bias_map`).
    """
    gain = torch.exp(3.0 * zero_conv.scale.detach().double()).reshape(-1)  # [out]
    weight = zero_conv.conv.weight.detach().double() * gain[:, None, None, None]  # [out, in, 3, 3]
    bias = zero_conv.conv.bias.detach().double() * gain  # [out]
    return weight, border_bias_map(weight, bias, height, width)


class FoldedAffine(nn.Module):
    """ActNorm + invertible 1x1 conv folded into one affine per direction (buffers, in the stream dtype)."""

    def __init__(self, folded: FoldedInvConv1x1) -> None:
        super().__init__()
        self.register_buffer("weight", folded.weight)  # [C, C]  W' = W diag(s)
        self.register_buffer("bias", folded.bias)  # [C]     b' = W (s * loc)
        self.register_buffer("weight_inv", folded.weight_inv)  # [C, C]  W'^-1
        self.register_buffer("bias_inv", folded.bias_inv)  # [C]     -loc
        self.logdet_per_pixel = folded.logdet_per_pixel


class FoldedCoupling(nn.Module):
    """One coupling network NN, folded. Hidden convs in the net dtype; ``bias_map`` in the stream dtype."""

    def __init__(
        self,
        w0: Tensor,
        b0: Tensor,
        w1: Tensor,
        b1: Tensor,
        w2: Tensor,
        bias_map: Tensor,
        attention: tuple[Tensor, Tensor, Tensor, Tensor] | None,
        channels_last: bool,
    ) -> None:
        super().__init__()
        self.register_buffer("w0", w0)  # [h, C/2, 3, 3]  first conv (zero padding 1)
        self.register_buffer("b0", b0)  # [h]
        self.register_buffer("w1", w1)  # [h, h, 1, 1]    hidden 1x1
        self.register_buffer("b1", b1)  # [h]
        self.register_buffer("w2", w2)  # [C/2, h, 3, 3]  zero conv weight * exp(3 scale), run with zero padding
        self.register_buffer("bias_map", bias_map)  # [1, C/2, H, W]  folded zero-conv bias + 1-padding frame term
        # fc1 [r, h], [r]; fc2 [h, r], [h] (T only)
        self.attention = None if attention is None else Tensors(*attention)
        self.channels_last = channels_last


class FoldedStep(nn.Module):
    """One flow step: the folded ActNorm + 1x1 affine (both directions) and the coupling network."""

    def __init__(self, affine: FoldedAffine, net: FoldedCoupling) -> None:
        super().__init__()
        self.affine = affine  # weight, bias (forward) and weight_inv, bias_inv (inverse), stream dtype
        self.net = net


class FoldedLevel(nn.Module):
    """One level of G: its steps and, on split levels, the folded split prior (used by ``eps`` mode only)."""

    def __init__(self, steps: list[FoldedStep], prior: tuple[Tensor, Tensor] | None) -> None:
        super().__init__()
        self.steps = nn.ModuleList(steps)
        # weight [C, C/2, 3, 3], bias_map [1, C, h, w]; stream dtype
        self.prior = None if prior is None else Tensors(*prior)


def fold_flow_step(
    flow: FlowStep,
    side: int,
    *,
    net_dtype: torch.dtype,
    stream_dtype: torch.dtype,
    channels_last: bool,
    device: torch.device | None = None,
) -> FoldedStep:
    """Fold one (ActNorm ->) LU 1x1 -> additive coupling step whose maps are side x side.

    Folds run in float64 on the flow's device; the results go to ``device`` (default: the flow's).
    """
    device = device or flow.invconv.w_s.device
    weight = flow.invconv.calc_weight(torch.float64)  # [C, C], from the LU factors
    if flow.actnorm is not None:
        loc, scale = flow.actnorm.loc, flow.actnorm.scale  # [1, C, 1, 1] each
    else:  # T: no ActNorm, the identity affine
        loc, scale = torch.zeros_like(weight[0]), torch.ones_like(weight[0])  # [C] each
    a = fold_actnorm_inv_conv1x1(loc, scale, weight, dtype=stream_dtype)
    affine = FoldedAffine(
        FoldedInvConv1x1(
            *(t.to(device).contiguous() for t in (a.weight, a.bias, a.weight_inv, a.bias_inv)), a.logdet_per_pixel
        )
    )
    layout = torch.channels_last if channels_last else torch.contiguous_format

    def net_tensor(t: Tensor) -> Tensor:
        t = t.detach().to(device=device, dtype=net_dtype)
        return t.contiguous(memory_format=layout) if t.dim() == 4 else t.contiguous()

    net = flow.coupling.net
    w2, bias_map = fold_zero_conv(flow.coupling.zero_conv, side, side)  # float64
    attention = None
    if isinstance(net[4], ChannelAttention):
        fc1, fc2 = net[4].fc[0], net[4].fc[2]
        attention = tuple(net_tensor(t) for t in (fc1.weight, fc1.bias, fc2.weight, fc2.bias))
    folded = FoldedCoupling(
        w0=net_tensor(net[0].weight),
        b0=net_tensor(net[0].bias),
        w1=net_tensor(net[2].weight),
        b1=net_tensor(net[2].bias),
        w2=net_tensor(w2),
        bias_map=bias_map.to(device=device, dtype=stream_dtype),
        attention=attention,
        channels_last=channels_last,
    )
    return FoldedStep(affine, folded)


# --- running (device only, graph-safe) ----------------------------------------------------------------------
def coupling_update(net: FoldedCoupling, x_a: Tensor) -> Tensor:
    """NN(x_a) in the stream dtype.

    Args:
        x_a: Tensor[B, C/2, H, W] in the stream dtype (a view of the stream; not modified).

    Returns:
        Tensor[B, C/2, H, W] in the bias map's (stream) dtype: zero-conv output (net dtype) + bias map.
    """
    layout = torch.channels_last if net.channels_last else torch.contiguous_format
    a = x_a.to(net.w0.dtype, memory_format=layout)  # [B, C/2, H, W] net dtype
    h = F.conv2d(a, net.w0, net.b0, padding=1).relu_()  # [B, h, H, W]
    h = F.conv2d(h, net.w1, net.b1).relu_()  # [B, h, H, W]
    if net.attention is not None:
        fc1_w, fc1_b, fc2_w, fc2_b = net.attention
        gate = F.linear(F.linear(h.mean(dim=(2, 3)), fc1_w, fc1_b).relu_(), fc2_w, fc2_b).sigmoid_()  # [B, h]
        h = h.mul_(gate[:, :, None, None])  # [B, h, H, W]
    out = F.conv2d(h, net.w2, padding=1)  # [B, C/2, H, W] net dtype, zero padding (frame term is in bias_map)
    return torch.add(out, net.bias_map)  # [B, C/2, H, W]; the fp32 map promotes a half-type out in this one pass


def _affine(h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The folded per-pixel affine through the inv_conv1x1 op; its CUDA build has no float64 kernel, so a float64
    stream on CUDA takes the op's reference (a cuDNN 1x1 conv). Dispatch on dtype and device only: graph-safe."""
    impl = "torch" if h.dtype == torch.float64 and h.device.type == "cuda" else "auto"
    return inv_conv1x1(h, weight, bias, impl=impl)  # [B, C, H, W]


def step_forward(step: FoldedStep, h: Tensor) -> Tensor:
    """One flow step: h [B, C, H, W] (not modified) -> a new [B, C, H, W]: affine, then x_b += NN(x_a)."""
    h = _affine(h, step.affine.weight, step.affine.bias)  # [B, C, H, W], fresh
    half = h.shape[1] // 2
    h[:, half:].add_(coupling_update(step.net, h[:, :half]))  # [B, C/2, H, W] in place
    return h


def step_reverse(step: FoldedStep, h: Tensor) -> Tensor:
    """Inverse of :func:`step_forward`: x_b -= NN(x_a) **in place on h**, then the inverse affine (new tensor)."""
    half = h.shape[1] // 2
    h[:, half:].sub_(coupling_update(step.net, h[:, :half]))  # [B, C/2, H, W] in place
    return _affine(h, step.affine.weight_inv, step.affine.bias_inv)  # [B, C, H, W]


def unsqueeze2d_into(h: Tensor, out: Tensor) -> Tensor:
    """Write unsqueeze2d(h) into ``out`` in one strided copy (no intermediate tensor).

    Args:
        h: Tensor[B, 4c, H, W].
        out: Tensor[B, c, 2H, 2W] whose H and W axes can be split (e.g. a channel slice of a dense tensor).

    Returns:
        out, with out[b, c, 2i + dy, 2j + dx] = h[b, 4c + 2dy + dx, i, j].
    """
    b, c4, height, width = h.shape
    c = c4 // 4
    src = h.view(b, c, 2, 2, height, width)  # [B, c, dy, dx, H, W]
    dst = out.view(b, c, height, 2, width, 2).permute(0, 1, 3, 5, 2, 4)  # [B, c, dy, dx, H, W]
    dst.copy_(src)
    return out


def _prior_params(prior: tuple[Tensor, Tensor], kept: Tensor) -> tuple[Tensor, Tensor]:
    """Split prior on kept [B, C/2, h, w] -> (mean, log_sd), each [B, C/2, h, w] (views of one tensor)."""
    weight, bias_map = prior
    out = F.conv2d(kept, weight, padding=1).add_(bias_map)  # [B, C, h, w]
    return out.chunk(2, dim=1)


@contextlib.contextmanager
def _ieee_fp32(device: torch.device) -> Iterator[None]:
    """TF32 off for cuDNN convs and matmuls while the block runs on CUDA; the caller's flags come back after."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


class AgeFlowRunner(NativeRunner):
    """AgeFlow (mode ``ictm``) as folded flow steps; the module docstring lists each rewrite.

    Built from the fp32 ``AgeFlow`` on the engine's device. ``dtype`` is G's coupling networks' dtype
    (fp32, fp16, bf16; float64 makes a float64 engine for exactness tests). G's stream, its 1x1 affines and
    updates, and all of T run in fp32 (float64 in the float64 engine).

    Keyword options:
        channels_last: NHWC coupling-network activations and weights (default: on CUDA).
        stream_dtype: G's stream dtype, torch.float32 or torch.float64; default float64 for fp16/bf16 engines
            and the engine's own for fp32/float64 ones. With fp16/bf16 networks, float64 makes encode -> decode
            exact to ~1e-13 instead of ~1e-2 at 32 steps of width 512 (see "Round trip" in the module docstring)
            for one more pass-width of stream bytes.
    """

    def __init__(
        self,
        adapter,
        module: nn.Module,
        config: Any,
        device: torch.device,
        dtype: torch.dtype,
        *,
        channels_last: bool | None = None,
        stream_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(adapter, module, config, device, dtype)
        if not isinstance(module, AgeFlow):
            raise TypeError(f"AgeFlowRunner needs the AgeFlow module, got {type(module).__name__}")
        self.config: AgeFlowConfig = module.config
        self.channels_last = device.type == "cuda" if channels_last is None else channels_last
        # T (and its table) run in fp32, float64 only in the float64 test engine; G's stream may be widened.
        self.ictm_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        if stream_dtype is None:
            half_nets = dtype in (torch.float16, torch.bfloat16)
            stream_dtype = torch.float64 if half_nets else self.ictm_dtype
        self.stream_dtype = stream_dtype
        if self.stream_dtype not in (torch.float32, torch.float64):
            raise InputError(f"AgeFlowRunner stream_dtype must be torch.float32 or torch.float64, got {stream_dtype}")
        with torch.no_grad():
            self._build(module)
        self.register_tensors()  # the prior table becomes a buffer: the runner is the inference graph's module

    # --- build ---------------------------------------------------------------------------------------------
    def _build(self, model: AgeFlow) -> None:
        config, stream = self.config, self.stream_dtype
        self.levels = nn.ModuleList()  # FoldedLevel per level of G
        for l, block in enumerate(model.flow.blocks):
            side = config.image_size >> (l + 1)
            steps = [
                fold_flow_step(
                    flow,
                    side,
                    net_dtype=self.dtype,
                    stream_dtype=stream,
                    channels_last=self.channels_last,
                    device=self.device,
                )
                for flow in block.flows
            ]
            prior = None
            if block.split:
                weight, bias_map = fold_zero_conv(block.prior, side, side)  # float64
                prior = (weight.to(self.device, stream), bias_map.to(self.device, stream))
            self.levels.append(FoldedLevel(steps, prior))
        # T stays fp32 (docs/models/ageflow.md 9: "all of T stays fp32"), NCHW (4x4 maps).
        t_dtype = self.ictm_dtype
        self.ictm = nn.ModuleList(
            fold_flow_step(
                flow, config.top_size, net_dtype=t_dtype, stream_dtype=t_dtype, channels_last=False, device=self.device
            )
            for flow in model.ictm.flows
        )
        c, s = config.top_channels, config.top_size
        table = model.prior.linear.weight.detach().T.reshape(config.groups, 2, c, s, s)  # [n, 2, C_top, s, s]
        self.prior_table = table.to(self.device, t_dtype).contiguous()

    # --- the three stages ----------------------------------------------------------------------------------
    def encode(self, x: Tensor, standardize: bool = False) -> tuple[list[Tensor], Tensor]:
        """G: x [B, 3, S, S] in model space (stream dtype; not modified) -> (lower, z_top).

        Returns:
            lower: z_0..z_{L-2}, each [B, C_l/2, S/2^(l+1), S/2^(l+1)] (raw views of the level buffers, or
                eps = (z - mean) exp(-log_sd) when ``standardize``); z_top [B, C_top, s, s].
        """
        lower: list[Tensor] = []
        h = x  # [B, C_in, H, W]
        for level in self.levels:
            h = squeeze2d(h)  # [B, C, H/2, W/2], one copy
            for step in level.steps:
                h = step_forward(step, h)  # [B, C, H/2, W/2]
            if level.prior is None:
                return lower, h  # z_top [B, C_top, s, s]
            half = h.shape[1] // 2
            kept, z = h[:, :half], h[:, half:]  # [B, C/2, H/2, W/2] each, views
            if standardize:
                mean, log_sd = _prior_params(level.prior, kept)  # [B, C/2, H/2, W/2] each
                z = (z - mean).mul_(torch.exp(-log_sd))  # [B, C/2, H/2, W/2]
            lower.append(z)
            h = kept
        raise AssertionError("the top level has no split prior")  # AgeFlowConfig guarantees levels >= 2

    def translate(self, z_top: Tensor, groups: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """T: (z_s [B, C_top, s, s], groups int64 [B]) -> (z'_t, mu'_s, rho'_s), each [B, C_top, s, s] (views)."""
        mu, rho = self.prior_table.index_select(0, groups).unbind(1)  # [B, C_top, s, s] each
        u = torch.cat([z_top.to(self.ictm_dtype), mu, rho], dim=1)  # [B, 3 C_top, s, s]
        for step in self.ictm:
            u = step_forward(step, u)  # [B, 3 C_top, s, s]
        z_t, mu_s, rho_s = u.split(self.config.top_channels, dim=1)  # [B, C_top, s, s] each
        return z_t, mu_s, rho_s

    def decode(self, lower: list[Tensor], top: Tensor, standardized: bool = False) -> Tensor:
        """G^-1: (lower latents as :meth:`encode` returns them, z_top [B, C_top, s, s]) -> x [B, 3, S, S].

        Neither ``top`` nor ``lower`` is modified (top is copied once: 24 KB per image at paper size).
        """
        h = top.to(self.stream_dtype, memory_format=torch.contiguous_format, copy=True)  # [B, C_top, s, s]
        for step in reversed(self.levels[-1].steps):
            h = step_reverse(step, h)  # [B, C_top, s, s]
        for level, z in zip(reversed(self.levels[:-1]), reversed(lower), strict=True):
            b, c4, height, width = h.shape  # level l+1's input space, squeezed
            buf = h.new_empty(b, c4 // 2, 2 * height, 2 * width)  # [B, C, H, W] level l
            half = c4 // 4
            kept = unsqueeze2d_into(h, buf[:, :half])  # [B, C/2, H, W]
            if standardized:
                mean, log_sd = _prior_params(level.prior, kept)  # [B, C/2, H, W] each
                buf[:, half:].copy_(mean.addcmul_(torch.exp(log_sd), z))  # z = mean + exp(log_sd) eps
            else:
                buf[:, half:].copy_(z)  # [B, C/2, H, W]
            h = buf
            for step in reversed(level.steps):
                h = step_reverse(step, h)  # [B, C, H, W]
        return unsqueeze2d(h)  # [B, 3, S, S]

    # --- the NativeRunner contract -------------------------------------------------------------------------
    def prepare(
        self, images: Tensor, targets: Tensor, generator: torch.Generator | None, options: dict[str, Any]
    ) -> dict[str, Tensor]:
        """Validate on the host (syncs are fine here) and return {"images": float32 Tensor[B, 3, S, S] in [0, 1],
        "groups": int64 Tensor[B]} on the runner's device. ``target_group`` overrides ``targets``; AgeFlow draws
        nothing from ``generator``."""
        size, n = self.config.image_size, self.config.groups
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise InputError(
                f"AgeFlow ({size}x{size}) takes images [B, 3, {size}, {size}], got {tuple(images.shape)}; "
                f"align/resize the face crops to {size}x{size} first"
            )
        chosen = options.get("target_group")
        groups = targets if chosen is None else torch.as_tensor(chosen)
        check_target_indices(
            groups,
            images.shape[0],
            n,
            "AgeFlow",
            hint="map ages with adapter.validate_ages or pass target_group",
        )
        return {
            "images": images.to(self.device, torch.float32),  # [B, 3, S, S]
            "groups": groups.to(self.device, torch.int64),  # [B]
        }

    def forward(self, inputs: dict[str, Tensor], options: dict[str, Any]) -> Tensor:
        """images [B, 3, S, S] in [0, 1] and groups [B] -> aged images float32 Tensor[B, 3, S, S] in [0, 1]."""
        n_bits = self.config.n_bits
        standardize = options.get("lower_latents", "raw") == "eps"
        with _ieee_fp32(self.device):
            x = quantize_input(inputs["images"], n_bits=n_bits, bin_centre=options.get("bin_centre", True))
            lower, top = self.encode(x.to(self.stream_dtype), standardize)  # [B, 3, S, S] -> latents
            z_t, _, _ = self.translate(top, inputs["groups"])  # [B, C_top, s, s]
            y = self.decode(lower, z_t, standardize)  # [B, 3, S, S]
        quantize = options.get("quantize_output", False)
        return postprocess_output(y.float(), n_bits=n_bits, quantize=quantize)  # [B, 3, S, S]

    def graph_key(self, options: dict[str, Any]) -> Hashable:
        """target_group reaches forward() as the ``groups`` tensor, so it does not change the captured work."""
        return tuple(sorted((k, repr(v)) for k, v in options.items() if k != "target_group"))


__all__ = [
    "AgeFlowRunner",
    "FoldedAffine",
    "FoldedCoupling",
    "FoldedLevel",
    "FoldedStep",
    "border_bias_map",
    "coupling_update",
    "fold_flow_step",
    "fold_zero_conv",
    "step_forward",
    "step_reverse",
    "unsqueeze2d_into",
]
