"""AcGAN's native runner: the generator rewritten for inference (docs/models/acgan.md section 9).

Rewrites, each exact in real arithmetic (fp32 results differ from the torch backend only by rounding order):

1. **Split stem** (docs/models/acgan.md 9 item 5). The stem conv is linear in its 3 + c_dim input channels and the
   condition channels hold a one-hot code that is constant over the image, so
   ``conv(cat(x, tile(c)), W) = conv(x, W[:, :3]) + R[group]`` with ``R[k] = conv(ones, W[:, 3 + k])``,
   precomputed once per group at build time (:func:`condition_responses`). R is a constant per channel
   plus a 3-pixel frame where zero padding cuts the 7x7 kernel; it is *not* folded into a bias, since the
   next InstanceNorm removes any per-channel constant and the frame is all the conditioning there is.
   The table is held in the engine dtype and layout (one rounding of R in fp16/bf16), so the add is a plain
   same-type pass.
   Default on CPU, where it cuts the stem's K from 392 to 147. On CUDA the 8-channel stem is kept: fp16
   NHWC tensor-core convolutions pad the input channels to a multiple of 8 anyway, so the split saves no
   MMA work there while its response add costs one more pass over the [B, d, S, S] stem output
   (it would pay off only inside a custom conv epilogue; not measured, see ``split_stem``).
2. **Fused InstanceNorm + ReLU**: IN is GroupNorm with G = C, so each IN (+ ReLU) is one
   ``agingrt::group_norm_act`` (:func:`instance_norm_act`): biased statistics over H x W in fp32 whatever the
   activation dtype (docs/models/acgan.md 8 item 9), then ``act((y - mu) * (gamma * rstd) + beta)`` in fp32, stored once
   in the activation dtype and layout. The residual tail ``x + IN(y)`` adds in place into the IN output.
3. **Merged heads** (docs/models/acgan.md 9 item 4): img_reg (64 -> 3) and attention_reg (64 -> 1) read the same
   features with the same 7x7 geometry, so one 64 -> 4 conv with the two weights stacked computes the same dot
   products in one pass. tanh / sigmoid and Eq. (1) then run in fp32 through the model's
   :func:`~pyagingrt.training.models.acgan.mask_blend` (A == 1 gives x and A == 0 gives C bitwise), against
   the fp32 input x, so kept pixels are the input's exactly in every precision.
   On the CPU the merged head runs width-packed (:func:`pack_head_weight`): 4 output channels are a quarter of
   the 16 that oneDNN's blocked kernels compute anyway, so the same conv is taken as a (7, 3) conv from 4 x d
   packed input channels (4 adjacent pixels' features) to 16 packed outputs (4 pixels' heads): 1.7x the real
   FLOPs but no padded output lanes, 23 -> 12 ms fp32 and 12.5 -> 6.6 ms bf16 at [1, 64, 224, 224] (2 threads).
   CUDA keeps the direct conv (cuDNN has no such padding; not measured).
4. **Precision and layout**: conv weights in the engine dtype (fp32, fp16 or bf16 on any device), IN affine
   parameters and statistics in fp32, ``channels_last`` on every device: cuDNN's NHWC tensor-core kernels on CUDA,
   and oneDNN's NHWC convolutions on the CPU, which took paper AcGAN from 420 to 365 ms at batch 1 and from
   3.55 to 2.90 s at batch 8 (2 threads, same run, docs/performance.md).
5. **Graph-safe forward**: ``prepare`` validates on the host and returns the [B, 3, S, S] images and [B]
   group indices; ``forward`` only launches device work (table gathers by index_select, no one_hot, no
   syncs), so the whole generator is captured in one CUDA graph per batch bucket. The runner is an
   ``nn.Module`` (every folded weight a buffer) and ``runner.graph({}, inputs)`` is the inference graph
   ``(images, groups) -> aged``, the one the native backend captures and ``agingrt export`` writes
   (docs/export.md).

6. **Winograd block convs on the CPU** (docs/models/acgan.md 9 item 7): in fp32 with channels_last, the 24 residual
   3x3 convs run as ``agingrt::winograd_conv3x3`` (F(4x4, 3x3): 4x fewer multiplications, the per-point products as
   GEMMs), the transformed weights computed once here in float64. Paper AcGAN 386 -> 263 ms at batch 1 and
   2686 -> 2057 ms at batch 8 (2 threads, the same engine with ``winograd=False``, side by side); about 5x a direct
   conv's rounding per layer (2.1e-5 vs 9.6e-6 max error on the [0, 1] output). CUDA and bf16/fp16 keep F.conv2d
   (cuDNN chooses its own algorithm; oneDNN's bf16 kernels are already 2x fp32's speed).

Not done: the transposed convs stay conv_transpose2d. cuDNN and oneDNN compute them as the data gradient of
a convolution, without zero insertion, so the four 2x2 phase convolutions of docs/models/acgan.md 9 item 6 would save no
FLOPs with library kernels; they pay off only in a custom kernel that also fuses the IN prologue.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..ops.group_norm_act import group_norm_act
from ..ops.winograd_conv3x3 import winograd_conv3x3, winograd_weight
from ..training.models.acgan import Generator, ResidualBlock, mask_blend, tile_condition
from .runner import NativeRunner, check_target_indices, winograd_option


class _NormParams(nn.Module):
    """An InstanceNorm's affine parameters, fp32, shaped [1, C, 1, 1] to broadcast over [B, C, H, W] (buffers)."""

    def __init__(self, gamma: Tensor, beta: Tensor, eps: float) -> None:
        super().__init__()
        self.register_buffer("gamma", gamma)  # [1, C, 1, 1]
        self.register_buffer("beta", beta)  # [1, C, 1, 1]
        self.eps = eps


class _ConvNorm(nn.Module):
    """conv (or transposed conv) -> InstanceNorm -> ReLU; weight (a buffer) in the engine dtype and layout.
    With ``winograd`` (a 3x3 'same' conv only), the conv runs as ``agingrt::winograd_conv3x3`` from the
    transformed weight, computed once here."""

    def __init__(
        self, weight: Tensor, stride: int, padding: int, transposed: bool, norm: _NormParams, winograd: bool = False
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight)  # conv [Cout, Cin, k, k]; transposed conv [Cin, Cout, k, k]
        self.stride = stride
        self.padding = padding
        self.transposed = transposed
        self.norm = norm
        if winograd and (transposed or stride != 1 or padding != 1 or tuple(weight.shape[2:]) != (3, 3)):
            raise ValueError("winograd needs a 3x3 conv with stride 1 and padding 1")
        self.register_buffer("winograd_u", winograd_weight(weight) if winograd else None)  # [36, Cin, Cout]

    def conv(self, h: Tensor) -> Tensor:
        if self.winograd_u is not None:
            return winograd_conv3x3(h, self.weight, self.winograd_u, impl="native")  # [B, Cout, H, W]
        if self.transposed:
            return F.conv_transpose2d(h, self.weight, stride=self.stride, padding=self.padding)  # [B, Cout, 2H, 2W]
        return F.conv2d(h, self.weight, stride=self.stride, padding=self.padding)  # [B, Cout, H', W']


def instance_norm_act(h: Tensor, norm: _NormParams, relu: bool) -> Tensor:
    """InstanceNorm (then ReLU) of h as one fused op: fp32 statistics and maths, stored in h's dtype.

    Args:
        h: Tensor[B, C, H, W], any float dtype and memory format.
        norm: the layer's gamma, beta (fp32) and eps.

    Returns:
        Tensor[B, C, H, W] in h's dtype and memory format (a new tensor; h is not modified).
    """
    acc = torch.promote_types(h.dtype, torch.float32)
    gamma, beta = norm.gamma.reshape(-1).to(acc), norm.beta.reshape(-1).to(acc)  # [C] each; no-op casts in fp32
    return group_norm_act(h, h.shape[1], gamma, beta, norm.eps, "relu" if relu else "none")  # [B, C, H, W]


def condition_responses(generator: Generator) -> Tensor:
    """The stem's response to each group's tiled one-hot code: float32 Tensor[c_dim, d, S, S].

    Uses the model's own :meth:`Generator.condition_response` (fp32 math), one plane set per group.
    """
    groups = range(generator.config.c_dim)
    return torch.stack([generator.condition_response(k) for k in groups])  # [c_dim, d, S, S]


def merged_head_weight(generator: Generator) -> Tensor:
    """img_reg (3 rows) then attention_reg (1 row) stacked: Tensor[4, d, 7, 7]."""
    color = generator.img_reg[0].weight  # [3, d, 7, 7]
    attention = generator.attention_reg[0].weight  # [1, d, 7, 7]
    return torch.cat([color, attention], dim=0)  # [4, d, 7, 7]


HEAD_PACK = 4  # output columns per packed pixel of the CPU head


def _packed_taps(kernel: int, pack: int) -> range:
    """Offsets m of the packed columns a 'same' conv of width ``kernel`` reads around packed column j (symmetric,
    so the packed conv pads both sides alike; -1..1 for K = 7 and pack 4)."""
    pad = kernel // 2
    taps = range((0 - pad) // pack, (pack - 1 + kernel - 1 - pad) // pack + 1)
    if -taps.start != taps.stop - 1:
        raise ValueError(f"a {kernel}-wide kernel packed by {pack} reads columns {list(taps)}: not symmetric")
    return taps


def pack_head_weight(weight: Tensor, pack: int = HEAD_PACK) -> Tensor:
    """A 'same' conv weight [O, C, K, K] (odd K) for :func:`packed_head_conv`: Tensor[pack O, pack C, K, T].

    Output column ``pack * j + s`` reads input columns ``pack * j + s + k - K // 2`` = ``pack * (j + m) + q`` with
    q in [0, pack): packed output channel ``s * O + o`` takes packed input channel ``q * C + c`` at tap
    (kh, m - m_min) with weight[o, c, kh, k], k = pack * m + q - s + K // 2, wherever 0 <= k < K.
    """
    out_ch, in_ch, height, kernel = weight.shape
    taps = _packed_taps(kernel, pack)
    packed = weight.new_zeros(pack, out_ch, pack, in_ch, height, len(taps))
    for s in range(pack):
        for q in range(pack):
            for t, m in enumerate(taps):
                k = pack * m + q - s + kernel // 2
                if 0 <= k < kernel:
                    packed[s, :, q, :, :, t] = weight[:, :, :, k]
    return packed.reshape(pack * out_ch, pack * in_ch, height, len(taps))


def packed_head_conv(h: Tensor, packed: Tensor, pack: int = HEAD_PACK) -> Tensor:
    """``F.conv2d(h, weight, padding=K // 2)`` from :func:`pack_head_weight`'s ``packed``.

    Args:
        h: Tensor[B, C, H, W] channels_last (the packing is then a view), W a multiple of ``pack``.
        packed: Tensor[pack O, pack C, K, T] in h's dtype.

    Returns:
        Tensor[B, O, H, W].
    """
    batch, channels, height, width = h.shape
    kernel, taps = packed.shape[2], _packed_taps(packed.shape[2], pack)
    view = h.permute(0, 2, 3, 1).reshape(batch, height, width // pack, pack * channels)  # [B, H, W/p, p C]
    out = F.conv2d(view.permute(0, 3, 1, 2), packed, padding=(kernel // 2, -taps.start))  # [B, p O, H, W/p]
    out_ch = out.shape[1] // pack
    out = out.reshape(batch, pack, out_ch, height, width // pack)  # [B, p, O, H, W/p]
    return out.permute(0, 2, 3, 4, 1).reshape(batch, out_ch, height, width)  # [B, O, H, W]


def blend_heads(x: Tensor, heads: Tensor) -> Tensor:
    """Eq. (1) from the merged heads' pre-activations, in fp32.

    Args:
        x: float32 Tensor[B, 3, S, S] input image in [-1, 1].
        heads: Tensor[B, 4, S, S] conv outputs (rows 0-2: colour, row 3: attention), any float dtype/layout.

    Returns:
        float32 Tensor[B, 3, S, S]: A * x + (1 - A) * C with C = tanh(rows 0-2), A = sigmoid(row 3).
    """
    heads = heads.to(torch.float32, memory_format=torch.contiguous_format)  # [B, 4, S, S]
    color = torch.tanh(heads[:, :3])  # [B, 3, S, S]
    attention = torch.sigmoid(heads[:, 3:])  # [B, 1, S, S]
    return mask_blend(x, attention, color)  # [B, 3, S, S]


def _norm_params(module: nn.Module) -> _NormParams:
    if not isinstance(module, nn.InstanceNorm2d) or module.weight is None:
        raise TypeError(f"expected an affine InstanceNorm2d after each generator conv, found {type(module).__name__}")
    gamma = module.weight.detach().float().view(1, -1, 1, 1)  # [1, C, 1, 1]
    beta = module.bias.detach().float().view(1, -1, 1, 1)  # [1, C, 1, 1]
    return _NormParams(gamma, beta, float(module.eps))


class AcGANRunner(NativeRunner):
    """The AcGAN generator as a list of folded layers (see the module docstring for each rewrite).

    Keyword options (defaults by device; tests set them to run the CUDA choices on CPU):
        split_stem: 3-channel stem plus precomputed per-group responses (default: CPU) or the 8-channel stem.
        channels_last: NHWC activations and weights (default: on; off gives NCHW).
        packed_head: the merged head as the width-packed conv (default: CPU, with channels_last and a crop side
            divisible by 4) or the direct 7x7 conv.
        winograd: the residual blocks' 3x3 convs as ``agingrt::winograd_conv3x3`` (default: CPU in fp32 with
            channels_last and the compiled extension) or as ``F.conv2d``.
    """

    def __init__(
        self,
        adapter,
        module: nn.Module,
        config: Any,
        device: torch.device,
        dtype: torch.dtype,
        *,
        split_stem: bool | None = None,
        channels_last: bool | None = None,
        packed_head: bool | None = None,
        winograd: bool | None = None,
    ) -> None:
        super().__init__(adapter, module, config, device, dtype)
        if not isinstance(module, Generator):
            raise TypeError(f"AcGANRunner needs the AcGAN Generator, got {type(module).__name__}")
        self.split_stem = device.type != "cuda" if split_stem is None else split_stem
        self.channels_last = True if channels_last is None else channels_last
        packable = self.channels_last and config.image_size % HEAD_PACK == 0
        if packed_head and not packable:
            raise ValueError(f"packed_head needs channels_last and a crop side divisible by {HEAD_PACK}")
        self.packed_head = (device.type != "cuda" and packable) if packed_head is None else packed_head
        self.winograd = winograd_option(winograd, device, dtype, self.channels_last)
        with torch.no_grad():
            self._build(module)

    # --- build ---------------------------------------------------------------------------------------------
    def _weight(self, w: Tensor) -> Tensor:
        w = w.detach().to(device=self.device, dtype=self.dtype)
        return w.contiguous(memory_format=torch.channels_last) if self.channels_last else w.contiguous()

    def _build(self, generator: Generator) -> None:
        layers = list(generator.main)
        pairs = [(m, layers[i + 1]) for i, m in enumerate(layers) if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
        stem_conv, stem_norm = pairs[0]  # the residual blocks' convs are not direct children of main
        stem_weight = stem_conv.weight  # [d, 3 + c_dim, 7, 7]
        self.register_buffer("stem_weight", self._weight(stem_weight[:, :3] if self.split_stem else stem_weight))
        self.stem_norm = self._norm(stem_norm)
        # Split stem: per-group response table [c_dim, d, S, S] in the engine dtype and layout (stored NHWC as
        # [c_dim, S, S, d] under channels_last): an add across dtypes or layouts takes TensorIterator's strided
        # casting loop, 12 ms for paper AcGAN's [1, 64, 224, 224] bf16 += fp32 on 2 CPU threads against 0.5 ms.
        # 8-channel stem: one-hot rows gathered from an identity matrix (no data-dependent one_hot in forward).
        self.register_buffer("responses", self._response_table(generator) if self.split_stem else None)
        self.register_buffer("eye", torch.eye(self.config.c_dim, device=self.device))  # [c_dim, c_dim]
        self.encoder = nn.ModuleList(self._conv_norm(c, n) for c, n in pairs[1:] if isinstance(c, nn.Conv2d))
        self.decoder = nn.ModuleList(self._conv_norm(c, n) for c, n in pairs[1:] if isinstance(c, nn.ConvTranspose2d))
        self.blocks = nn.ModuleList(
            nn.ModuleList(
                [
                    self._conv_norm(block.main[0], block.main[1], winograd=self.winograd),
                    self._conv_norm(block.main[3], block.main[4], winograd=self.winograd),
                ]
            )
            for block in layers
            if isinstance(block, ResidualBlock)
        )  # (first, second) pairs
        head = merged_head_weight(generator)  # [4, d, 7, 7]
        self.register_buffer("head_weight", self._weight(pack_head_weight(head) if self.packed_head else head))

    def _response_table(self, generator: Generator) -> Tensor:
        """:func:`condition_responses` rounded to the engine dtype: [c_dim, S, S, d] (channels_last) or
        [c_dim, d, S, S]; :meth:`_stem` gathers one row per image and views it as [B, d, S, S]."""
        table = condition_responses(generator).to(self.device, self.dtype)  # [c_dim, d, S, S]
        return table.permute(0, 2, 3, 1).contiguous() if self.channels_last else table.contiguous()

    def _norm(self, module: nn.Module) -> _NormParams:
        params = _norm_params(module)
        return _NormParams(params.gamma.to(self.device), params.beta.to(self.device), params.eps)

    def _conv_norm(self, conv: nn.Module, norm: nn.Module, winograd: bool = False) -> _ConvNorm:
        return _ConvNorm(
            weight=self._weight(conv.weight),
            stride=int(conv.stride[0]),
            padding=int(conv.padding[0]),
            transposed=isinstance(conv, nn.ConvTranspose2d),
            norm=self._norm(norm),
            winograd=winograd,
        )

    # --- the NativeRunner contract -------------------------------------------------------------------------
    def prepare(
        self, images: Tensor, targets: Tensor, generator: torch.Generator | None, options: dict[str, Any]
    ) -> dict[str, Tensor]:
        """Validate on the host (syncs are fine here) and return {"images": float32 Tensor[B, 3, S, S] in [0, 1],
        "groups": int64 Tensor[B]} on the runner's device. ``generator`` is unused (AcGAN samples nothing)."""
        size, c_dim = self.config.image_size, self.config.c_dim
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise InputError(
                f"AcGAN ({size}x{size} config) needs images of shape [B, 3, {size}, {size}], got "
                f"{tuple(images.shape)}; its conditioning depends on the crop size, so resize/align to {size} first"
            )
        check_target_indices(targets, images.shape[0], c_dim, "AcGAN")
        return {
            "images": images.to(self.device, torch.float32),  # [B, 3, S, S]
            "groups": targets.to(self.device, torch.int64),  # [B]
        }

    def forward(self, inputs: dict[str, Tensor], options: dict[str, Any]) -> Tensor:
        """images [B, 3, S, S] in [0, 1] and groups [B] -> aged images float32 Tensor[B, 3, S, S] in [0, 1]."""
        x = inputs["images"] * 2 - 1  # [B, 3, S, S] fp32 in [-1, 1], as the torch backend computes it
        h = self._stem(x, inputs["groups"])  # [B, d, S, S]
        h = instance_norm_act(h, self.stem_norm, relu=True)  # [B, d, S, S]
        for layer in self.encoder:
            h = instance_norm_act(layer.conv(h), layer.norm, relu=True)  # [B, 2d, S/2, S/2], then [B, 4d, S/4, S/4]
        for first, second in self.blocks:
            r = instance_norm_act(first.conv(h), first.norm, relu=True)  # [B, 4d, S/4, S/4]
            r = instance_norm_act(second.conv(r), second.norm, relu=False)  # [B, 4d, S/4, S/4]
            h = r.add_(h)  # [B, 4d, S/4, S/4]: x + IN(conv(...)), no activation after the sum
        for layer in self.decoder:
            h = instance_norm_act(layer.conv(h), layer.norm, relu=True)  # [B, 2d, S/2, S/2], then [B, d, S, S]
        if self.packed_head:
            heads = packed_head_conv(h, self.head_weight)  # [B, 4, S, S]
        else:
            heads = F.conv2d(h, self.head_weight, padding=3)  # [B, 4, S, S]
        out = blend_heads(x, heads)  # [B, 3, S, S] fp32 in [-1, 1]
        return out.add_(1).mul_(0.5).clamp_(0, 1)  # [B, 3, S, S]; * 0.5 == / 2 exactly

    # --- helpers -------------------------------------------------------------------------------------------
    def _layout(self, h: Tensor) -> Tensor:
        h = h.to(self.dtype)  # [B, C, H, W]
        return h.contiguous(memory_format=torch.channels_last) if self.channels_last else h

    def _stem(self, x: Tensor, groups: Tensor) -> Tensor:
        """The stem conv without its norm: Tensor[B, d, S, S] in the engine dtype."""
        if self.split_stem:
            h = F.conv2d(self._layout(x), self.stem_weight, padding=3)  # [B, d, S, S]
            rows = self.responses.index_select(0, groups)  # [B, S, S, d] or [B, d, S, S]
            return h.add_(rows.permute(0, 3, 1, 2) if self.channels_last else rows)  # [B, d, S, S], same layout
        condition = self.eye.index_select(0, groups)  # [B, c_dim] one-hot
        stem_in = self._layout(tile_condition(x, condition))  # [B, 3 + c_dim, S, S]
        return F.conv2d(stem_in, self.stem_weight, padding=3)  # [B, d, S, S]
