"""CUSP's native runner: the generator and its guided-backprop mask rewritten for inference (docs/models/cusp.md 9).

Rewrites, each exact in real arithmetic (fp32 results differ from the torch backend only by rounding order):

1. **Age tables** (docs/models/cusp.md 9 "Exact reuse"). w_a = M_a(onehot(a)), the five conv0 styles s0 = A0 w_a and
   their demodulation coefficients d0 = (s0^2 Q0^T + 1e-8)^(-1/2) depend only on the target class, so they are
   tabulated for every class at build time (:func:`age_tables`); a call gathers rows by index and runs no age
   MLP, no conv0 affine and no conv0 demodulation.
2. **One style GEMM.** ws repeats the same w_s for every conv1 and toRGB layer (docs/models/cusp.md 3.3), so the ten
   style-modulated affines are one linear map with their weights stacked (:func:`stacked_style_affine`); the
   toRGB gain 1/sqrt(C_in) is folded into its rows (a scalar factor, moved inside a sum).
3. **Modulated convs in activation-scaling form** (docs/models/cusp.md 3.4, 9 "modconv"): y = conv(x * s, W) * d with
   one shared-weight conv, d from the build-time Q = sum_k W^2 (:func:`demodulation`). For fp16 the StyleGAN2
   pre-normalisation is applied as exact algebra: W is stored scaled by c_o = 1 / (sqrt(I k^2) max|W_o|)
   and s divided by its per-sample max m_b; the epilogue then multiplies by d * m_b / c_o, which undoes both
   (conv is linear in x and in W), so the conv inputs stay O(1) and cannot overflow fp16.
   conv0's FIR runs before x d (both are per-channel linear maps, so they commute) and ``x d + noise`` is one
   addcmul. The 4x4 FIRs run separably as [1,3,3,1]/8 (x) [1,3,3,1]/8 (the 2-D filter is their outer
   product; 0.125 / 0.375 and the gain 4 = 2 x 2 are exact in binary).
4. **Noise as a bias map.** 'const': noise_const * strength is precomputed per layer; 'random': prepare()
   draws the model's per-seed maps (``CUSP.make_noise``) and multiplies by strength, so forward only adds.
5. **Shared first encoder layer.** E_c and E_s both start with FIR then a stride-2 conv of x, so the FIR runs
   once and one conv with the two weights stacked along the output channels computes both (same dot products).
6. **Explicit guided backprop** (docs/models/cusp.md 3.6, 9 "Mask"; docs/performance.md 3.5 option A). The DEX forward
   keeps each ReLU's output (its sign is the guided mask) and each max-pool's argmax indices; the backward is written
   out: fc transposes, guided ReLU g [a > 0] [g > 0], pool backward as a scatter to the argmax (the same
   indices autograd uses, so ties match), conv data gradients as transposed convs with the same weights, the
   bilinear resize's adjoint as two small matrices (its exact weights, tabulated by resizing an identity),
   and the preprocessing's x 127.5. The BGR swap is folded into conv1_1's input channels (a permutation).
   For ``all`` the seed ones @ W8 is the column sum of fc8, precomputed (fc8's forward is then not needed).
   Eq. (1) then runs in the compiled ``guided_backprop_mask_with_taps`` op, with its float64 blur taps built
   once at load time (``guided_backprop_mask_taps``: they depend only on the config) and kept on the device.
   No autograd and no host reads, so the mask is part of the CUDA graph. In fp16/bf16 the gradient is
   rescaled per sample by its max-abs after the FC head and after every pool: the guided backward is
   positively homogeneous per sample and M is invariant to G's scale, so this only prevents underflow.
7. **Skip blur from precomputed tables.** The model's two ``masked_gaussian_blur`` calls (``CUSP.skip_blur``:
   F_g = blend(F; s_g, s_g), then blend(F_g; s_m, 0)) run as the compiled, graph-safe
   ``masked_gaussian_blur_with_taps`` op. prepare() builds both calls' per-sample taps and flags on the host
   (``masked_gaussian_blur_tables``, the same builder the sigma op uses, so the blur is the op's bit for bit)
   and moves them to the device with the other inputs: they are static graph inputs, and no sigma is read on
   the host in forward. The flags keep the special cases exact, as in the model: s_g = s_g skips the blend (M
   unused), sigma 0 is the identity, and a sample with sigma_m = 0 gets F_g back unchanged.
8. **Winograd 3x3 convs on the CPU** (docs/performance.md 3.6). In fp32 with channels_last, every 3x3 'same' conv
   with at least 16 input and 16 output channels (the decoder's conv1s, 12 of the DEX's 13 forward convs and 12 of
   its backward convs) runs as ``agingrt::winograd_conv3x3`` (F(4x4, 3x3), the per-point products as GEMMs) from a
   transformed weight computed once here; the DEX's RGB input conv and its RGB gradient stay direct (3 channels
   leave the GEMMs nothing to gain). About 5x a direct conv's rounding per layer.
9. **Graph key.** Sigmas, seeds and ages are input tensors, so one graph per (noise mode, mask needed) serves
   every value; the DEX pass is skipped, as in the model, when no sample blurs inside the mask.

Precision (docs/models/cusp.md 9): conv weights and activations in the engine dtype (``channels_last`` on every
device: cuDNN's NHWC kernels; on the CPU oneDNN's, paper224 1150 -> 975 ms at batch 1, 2 threads); the
MLPs, s, d, the skip blur, the mask reduction (fp32 gradient in, fp32 mask out; the op accumulates its statistics in
float64) and the RGB accumulator in fp32.

Not done: phase decomposition of conv0's transposed conv (cuDNN/oneDNN run it as a convolution data gradient
without zero insertion, so with library kernels it saves no MACs); zero-padding the 292/146 channels to
multiples of 16 (optional in docs/models/cusp.md; not measurable without a GPU).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..ops.guided_backprop_mask import guided_backprop_mask_taps, guided_backprop_mask_with_taps
from ..ops.guided_backprop_mask import guided_relu_backward as _guided_relu_backward_op
from ..ops.masked_gaussian_blur import masked_gaussian_blur_tables, masked_gaussian_blur_with_taps
from ..ops.winograd_conv3x3 import winograd_conv3x3, winograd_weight
from ..training.layers.stylegan2 import FIR_TAPS, LRELU_GAIN, LRELU_SLOPE, normalize_2nd_moment, upsample2d
from ..training.models.cusp import CUSP, SKIP_LEVEL, skip_blur_kernel_size
from .runner import NativeRunner, Tensors, check_target_indices, winograd_option

DEMOD_EPS = 1e-8  # inside the demodulation rsqrt (StyleGAN2's)
NOISE_MODES = ("const", "random", "none")
WINOGRAD_MIN_CHANNELS = 16  # below this on either side a 3x3 conv stays direct (3 -> 64 at 224: 0.9 vs 3.1 ms)


# --- the guided-backprop pieces -------------------------------------------------------------------------------
def guided_relu_backward(grad_out: Tensor, act: Tensor) -> Tensor:
    """g [act > 0] [g > 0]: the compiled op when the extension is built, else the oracle."""
    return _guided_relu_backward_op(grad_out, act, impl="auto")


def plain_relu_backward(grad_out: Tensor, act: Tensor) -> Tensor:
    """g [act > 0]: the ReLU's own backward (mask mode "official", docs/models/cusp.md)."""
    return torch.where(act > 0, grad_out, torch.zeros_like(grad_out))


# --- build-time helpers -------------------------------------------------------------------------------------
def age_tables(model: CUSP) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """w_a, conv0 styles and conv0 demodulation for every age class, in the module's dtype.

    Returns:
        (w_a Tensor[A, w_dim], s0 per block Tensor[A, I_i], d0 per block Tensor[A, O_i]).
    """
    config = model.config
    like = model.attr_map.fc0.weight
    onehot = torch.eye(config.attr_dim, dtype=like.dtype, device=like.device)  # [A, A]
    w_a = model.attr_map(onehot)[:, 0]  # [A, w_dim]
    styles, demods = [], []
    for res in config.block_resolutions:
        conv0 = getattr(model.image_dec, f"b{res}").conv0
        s0 = conv0.affine(w_a)  # [A, I]
        styles.append(s0)
        demods.append(demodulation(s0, conv0.weight.square().sum(dim=(2, 3))))  # [A, O]
    return w_a, styles, demods


def demodulation(styles: Tensor, q: Tensor) -> Tensor:
    """d = (s^2 Q^T + eps)^(-1/2): styles Tensor[B, I], Q Tensor[O, I] -> Tensor[B, O] (fp32 GEMM)."""
    return (styles.square() @ q.t() + DEMOD_EPS).rsqrt()


def stacked_style_affine(model: CUSP) -> tuple[Tensor, Tensor, list[int]]:
    """The ten w_s affines as one: (weight Tensor[sum I, w_dim], bias Tensor[sum I], split sizes), module dtype.

    Per block, rows for conv1 (no bias) then toRGB (bias, both scaled by the toRGB gain 1/sqrt(C_in)).
    """
    weights, biases, sizes = [], [], []
    for res in model.config.block_resolutions:
        block = getattr(model.image_dec, f"b{res}")
        conv1, rgb = block.conv1.affine, block.torgb.affine
        weights.append(conv1.weight * conv1.weight_gain)  # [I, w_dim]
        biases.append(conv1.weight.new_zeros(conv1.out_features))  # [I]
        weights.append(rgb.weight * (rgb.weight_gain * block.torgb.weight_gain))  # [I, w_dim]
        biases.append(rgb.bias * (rgb.bias_gain * block.torgb.weight_gain))  # [I]
        sizes += [conv1.out_features, rgb.out_features]
    return torch.cat(weights), torch.cat(biases), sizes


def resize_matrix(size_in: int, size_out: int) -> Tensor:
    """The 1-D weights of F.interpolate(bilinear, align_corners=False, no antialias): Tensor[size_out, size_in].

    Resizing is separable, so u = R x R^T per channel and its adjoint is R^T g R; row i of R is the resize of
    the unit impulse e_i, so these are the resize's own weights.
    """
    eye = torch.eye(size_in, dtype=torch.float64).view(1, size_in, size_in, 1)  # impulses as channels
    out = F.interpolate(eye, size=(size_out, 1), mode="bilinear", align_corners=False, antialias=False)
    return out[0, :, :, 0].t().contiguous()  # [size_out, size_in]


def modconv_weight_scale(weight: Tensor) -> Tensor:
    """c_o = 1 / (sqrt(I k^2) max_{i,k} |W_o|): Tensor[O] (stylegan2-ada's fp16 pre-normalisation)."""
    fan_in = weight[0].numel()
    return 1.0 / (math.sqrt(fan_in) * weight.flatten(1).abs().amax(dim=1).clamp_min(1e-30))  # [O]


class _ModConv(nn.Module):
    """One decoder conv: weight (scaled by c, engine dtype), Q and 1/c (fp32), bias map for 'const' noise."""

    def __init__(
        self,
        weight: Tensor,
        q: Tensor,
        inv_scale: Tensor,
        noise_const: Tensor,
        strength: Tensor,
        clamp: float | None,
        winograd_u: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight)  # conv1: [O, I, 3, 3]; conv0: [I, O, 3, 3] (conv_transpose2d layout)
        self.register_buffer("winograd_u", winograd_u)  # conv1 on CPU fp32: [36, I, O]; else None
        self.register_buffer("q", q)  # [O, I] fp32, sum_k W^2 of the unscaled weight
        self.register_buffer("inv_scale", inv_scale)  # [O] fp32, 1 / c_o
        self.register_buffer("noise_const", noise_const)  # [R, R] fp32, noise_const * strength
        self.register_buffer("strength", strength)  # [] fp32
        self.clamp = clamp


class _Block(nn.Module):
    """One decoder block: its two modulated convs and the toRGB layer."""

    def __init__(
        self,
        resolution: int,
        conv0: _ModConv,
        conv1: _ModConv,
        rgb_weight: Tensor,
        rgb_bias: Tensor,
        rgb_clamp: float | None,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv0 = conv0
        self.conv1 = conv1
        self.register_buffer("rgb_weight", rgb_weight)  # [3, O, 1, 1] engine dtype
        self.register_buffer("rgb_bias", rgb_bias)  # [3] fp32
        self.rgb_clamp = rgb_clamp


class CUSPRunner(NativeRunner):
    """The CUSP generator and its DEX mask as folded tensors (the module docstring lists each rewrite).

    Keyword options (tests set them to run the CUDA choice on CPU):
        channels_last: NHWC activations and conv weights (default: on; off gives NCHW).
        winograd: 3x3 'same' convs with >= 16 channels each side as ``agingrt::winograd_conv3x3`` (default: CPU
            in fp32 with channels_last and the compiled extension) or as ``F.conv2d``.
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
        winograd: bool | None = None,
    ) -> None:
        super().__init__(adapter, module, config, device, dtype)
        if not isinstance(module, CUSP):
            raise TypeError(f"CUSPRunner needs the CUSP model, got {type(module).__name__}")
        self.channels_last = True if channels_last is None else channels_last  # oneDNN's NHWC convs on CPU too
        self.winograd = winograd_option(winograd, device, dtype, self.channels_last)
        # fp32 on the CPU: the conv epilogue in place (a fresh [B, O, R, R] output costs its page faults there:
        # addcmul 90 ms against 12 ms at [8, 128, 224, 224], 2 threads; fp32 rounds the same either way). CUDA keeps
        # the one-pass addcmul, low precision its single rounding of fp32 maths.
        self.epilogue_in_place = device.type == "cpu" and dtype == torch.float32
        self._make_noise = module.make_noise  # the model's own per-seed noise order (docs/models/cusp.md 2.2)
        with torch.no_grad():
            self._build(module)
        self.register_tensors()  # the folded tensors become buffers: the runner is the inference graph's module

    # --- build ---------------------------------------------------------------------------------------------
    def _dev(self, t: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        return t.detach().to(device=self.device, dtype=dtype)

    def _weight(self, w: Tensor) -> Tensor:
        w = self._dev(w, self.dtype)
        return w.contiguous(memory_format=torch.channels_last) if self.channels_last else w.contiguous()

    def _winograd_u(self, weight: Tensor) -> Tensor | None:
        """winograd_weight of a [O, I, 3, 3] 'same' conv weight when this conv runs by Winograd, else None."""
        wide = min(weight.shape[0], weight.shape[1]) >= WINOGRAD_MIN_CHANNELS
        return winograd_weight(weight) if self.winograd and wide else None

    def _build(self, model: CUSP) -> None:
        cfg = model.config
        fir = torch.tensor(FIR_TAPS, dtype=torch.float64)
        self.fir_taps = self._dev(fir / fir.sum())  # [4] = [1, 3, 3, 1] / 8; the 2-D filter is its outer product
        # rewrite 5: the two encoders' first layers stacked
        enc_c, enc_s = model.content_enc, model.style_enc
        first_c, first_s = enc_c.conv0, enc_s.conv0
        self.enc_first = Tensors(
            self._weight(torch.cat([first_c.weight * first_c.weight_gain, first_s.weight * first_s.weight_gain])),
            self._dev(torch.cat([first_c.bias, first_s.bias]), self.dtype),
        )
        self.enc_split = first_c.weight.shape[0]

        def enc_layers(enc: nn.Module) -> nn.ModuleList:  # (weight, bias) per layer
            layers = [getattr(enc, f"conv{i}") for i in range(1, enc.num_layers)]
            return nn.ModuleList(
                Tensors(self._weight(c.weight * c.weight_gain), self._dev(c.bias, self.dtype)) for c in layers
            )

        self.content_layers, self.style_layers = enc_layers(enc_c), enc_layers(enc_s)
        # mapping: fp32 weights with the lr gains applied (the model multiplies them on every call)
        self.style_fcs = nn.ModuleList(
            Tensors(self._dev(fc.weight * fc.weight_gain), self._dev(fc.bias * fc.bias_gain))
            for fc in (getattr(model.style_map, f"fc{i}") for i in range(model.style_map.num_layers))
        )
        # rewrites 1 and 2
        _, s0, d0 = age_tables(model)  # w_a itself is only needed through the conv0 styles it yields
        self.s0_tables = Tensors(*(self._dev(s) for s in s0))  # [A, I_i] each
        self.d0_tables = Tensors(*(self._dev(d) for d in d0))  # [A, O_i] each
        weight, bias, self.style_sizes = stacked_style_affine(model)
        self.style_weight, self.style_bias = self._dev(weight), self._dev(bias)  # [sum I, w_dim], [sum I]
        # rewrites 3 and 4
        self.blocks = nn.ModuleList(self._block(getattr(model.image_dec, f"b{res}")) for res in cfg.block_resolutions)
        self.skip_block = model.image_dec.skip_block
        self._build_dex(model)

    def _modconv(self, layer: nn.Module, transposed: bool) -> _ModConv:
        weight = layer.weight.float()  # [O, I, 3, 3]
        scale = modconv_weight_scale(weight)  # [O]
        scaled = weight * scale[:, None, None, None]  # [O, I, 3, 3]
        stored = self._weight(scaled.transpose(0, 1) if transposed else scaled)
        return _ModConv(
            weight=stored,
            winograd_u=None if transposed else self._winograd_u(stored),
            q=self._dev(weight.square().sum(dim=(2, 3))),
            inv_scale=self._dev(1.0 / scale),
            noise_const=self._dev(layer.noise_const * layer.noise_strength),
            strength=self._dev(layer.noise_strength),
            clamp=layer.conv_clamp,
        )

    def _block(self, block: nn.Module) -> _Block:
        return _Block(
            resolution=block.resolution,
            conv0=self._modconv(block.conv0, transposed=True),
            conv1=self._modconv(block.conv1, transposed=False),
            rgb_weight=self._weight(block.torgb.weight),
            rgb_bias=self._dev(block.torgb.bias),
            rgb_clamp=block.torgb.conv_clamp,
        )

    def _build_dex(self, model: CUSP) -> None:
        cfg, dex = model.config, model.dex
        self.dex_res = dex.config.input_res
        self.dex_reduce = cfg.dex_outclass
        # mask mode: guided ReLU backward ("paper") or the plain one the official G_ema runs ("official")
        self.dex_relu_backward = guided_relu_backward if cfg.guided_relu else plain_relu_backward
        perm = [2, 1, 0]  # BGR <-> RGB, its own inverse
        # u_bgr[k] = x[perm[k]] - mean[k]: in RGB order channel j subtracts mean[perm[j]]
        self.dex_mean = self._dev(dex.mean.flatten()[perm]).view(1, 3, 1, 1)  # [1, 3, 1, 1]
        self.dex_groups = nn.ModuleList()  # per pool: (weight, bias) per conv
        index = 0
        for widths in dex.config.conv_channels:
            group = nn.ModuleList()
            for _ in widths:
                conv = getattr(dex, dex.conv_names[index])
                weight = conv.weight[:, perm] if index == 0 else conv.weight  # [O, I, 3, 3]; swap folded in
                # the backward's transposed conv as a plain conv (stride 1, padding 1): W^T with flipped taps,
                # [I, O, 3, 3]. oneDNN runs conv_transpose2d through a slow path on the CPU (a third of CUSP's
                # time at batch 1), and a copy per use also keeps OpenVINO from sharing one constant
                backward = weight.transpose(0, 1).flip(2, 3)
                forward, backward = self._weight(weight), self._weight(backward)
                winograd_us = (self._winograd_u(forward), self._winograd_u(backward))  # [36, I, O] / [36, O, I] or None
                group.append(Tensors(forward, self._dev(conv.bias, self.dtype), backward, *winograd_us))
                index += 1
            self.dex_groups.append(group)
        self.dex_fcs = nn.ModuleList(
            Tensors(self._dev(fc.weight, self.dtype), self._dev(fc.bias, self.dtype)) for fc in (dex.fc6, dex.fc7)
        )
        self.fc8 = Tensors(self._dev(dex.fc8_101.weight, self.dtype), self._dev(dex.fc8_101.bias, self.dtype))
        self.seed_all = self._dev(dex.fc8_101.weight.double().sum(dim=0), self.dtype)  # [fc]: ones @ W8
        resize = cfg.resolution != self.dex_res
        self.resize = self._dev(resize_matrix(cfg.resolution, self.dex_res)) if resize else None  # [r, H]
        self.mask_taps = guided_backprop_mask_taps(cfg.gb_kernel_size, cfg.gb_sigma, device=self.device)  # [k_gb] f64

    # --- the NativeRunner contract -------------------------------------------------------------------------
    def graph_key(self, options: dict[str, Any]) -> tuple[str, bool]:
        """(noise mode, whether any sample blurs inside the mask): everything else is an input tensor."""
        return options.get("noise", "const"), self._needs_mask(options)

    @staticmethod
    def _needs_mask(options: dict[str, Any]) -> bool:
        return any(s > 0 for s in options.get("sigma_m", ()))

    def prepare(
        self, images: Tensor, targets: Tensor, generator: torch.Generator | None, options: dict[str, Any]
    ) -> dict[str, Tensor]:
        """Validate on the host, draw 'random' noise, build the skip-blur tables.

        Args:
            images: Tensor[B, 3, H, H] in [0, 1].
            targets: int64 class indices Tensor[B] (``adapter.validate_ages``).
            generator: draws the noise seeds for noise='random' without noise_seeds.
            options: as returned by ``adapter.validate_options``.

        Returns:
            {"images": float32 [B, 3, H, H], "ages": int64 [B], "blur_g.taps"/"blur_m.taps": float32
            [B, 2, K] and "blur_g.flags"/"blur_m.flags": int32 [B], the tables of the skip blur's two
            masked_gaussian_blur calls (sigmas (s_g, s_g), then (s_m, 0), in skip pixels), and for 'random' noise
            "noise.b{R}.conv{j}": float32 [B, 1, R, R] maps already times their strength}, on the runner's
            device.
        """
        cfg = self.config
        size = cfg.resolution
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise InputError(
                f"CUSP ({size}x{size} config) needs images of shape [B, 3, {size}, {size}], got "
                f"{tuple(images.shape)}; align the face to an FFHQ crop of side {size} first"
            )
        batch = images.shape[0]
        check_target_indices(targets, batch, cfg.attr_dim, "CUSP", unit="age class")
        if any(len(options.get(k, ())) != batch for k in ("sigma_m", "sigma_g")):
            raise InputError(f"sigma_m and sigma_g must have one value per image ({batch}); use validate_options")
        mode = options.get("noise", "const")
        if mode not in NOISE_MODES:
            raise InputError(f"noise must be one of {', '.join(NOISE_MODES)}, got {mode!r}")
        skip_size = size >> SKIP_LEVEL
        kernel = skip_blur_kernel_size(skip_size)
        scale = skip_size / size  # sigma_hat = sigma * S / H skip pixels, as CUSP.skip_blur
        s_m = [float(s) * scale for s in options["sigma_m"]]  # [B]
        s_g = [float(s) * scale for s in options["sigma_g"]]  # [B]
        inputs = {
            "images": images.to(self.device, torch.float32),  # [B, 3, H, H]
            "ages": targets.to(self.device, torch.int64),  # [B]
        }
        # the skip blur in fp32: float32 taps [B, 2, K], int32 flags [B], one pair per masked_gaussian_blur call
        for name, sigmas in (("blur_g", (s_g, s_g)), ("blur_m", (s_m, [0.0] * batch))):
            taps, flags = masked_gaussian_blur_tables(*sigmas, kernel, dtype=torch.float32, device=self.device)
            inputs[f"{name}.taps"], inputs[f"{name}.flags"] = taps, flags
        if mode == "random":
            seeds = options.get("noise_seeds")
            if seeds is None:
                if generator is None:
                    raise InputError("noise='random' needs a seed (seed= or noise_seeds=)")
                seeds = torch.randint(0, 2**62, (batch,), generator=generator).tolist()  # image b: b-th draw
            noise = self._make_noise(seeds, self.device)  # {"b{R}.conv{j}": [B, 1, R, R]}
            for block in self.blocks:
                for j, conv in enumerate((block.conv0, block.conv1)):
                    name = f"b{block.resolution}.conv{j}"
                    inputs[f"noise.{name}"] = noise[name].float() * conv.strength  # [B, 1, R, R]
        return inputs

    def forward(self, inputs: dict[str, Tensor], options: dict[str, Any]) -> Tensor:
        """Device work only: the prepare() tensors -> aged images float32 Tensor[B, 3, H, H] in [0, 1]."""
        x = inputs["images"] * 2 - 1  # [B, 3, H, H] fp32 in [-1, 1], as the adapter computes it
        skip, deepest, v = self.encoders(x)  # [B, C2, S, S], [B, Cn, R0, R0], [B, Cn] fp32
        w_s = self.style_mapping(v)  # [B, w_dim] fp32
        styles = F.linear(w_s, self.style_weight, self.style_bias).split(self.style_sizes, dim=1)  # rewrite 2
        blurred = self.skip_blur(skip.float(), x, inputs, self._needs_mask(options))  # [B, C2, S, S] fp32
        noise = {k[len("noise.") :]: v for k, v in inputs.items() if k.startswith("noise.")}
        img = self.decode(deepest, blurred, inputs["ages"], styles, options.get("noise", "const"), noise)
        return img.clamp_(-1, 1).add_(1).mul_(0.5)  # [B, 3, H, H]; * 0.5 == / 2 exactly

    # --- parts ---------------------------------------------------------------------------------------------
    def _layout(self, h: Tensor) -> Tensor:
        h = h.to(self.dtype)
        return h.contiguous(memory_format=torch.channels_last) if self.channels_last else h

    @staticmethod
    def _conv3x3(h: Tensor, weight: Tensor, winograd_u: Tensor | None, bias: Tensor | None = None) -> Tensor:
        """conv2d(h, weight, bias, padding=1): by Winograd where the build made its transformed weight."""
        if winograd_u is None:
            return F.conv2d(h, weight, bias, padding=1)  # [B, O, H, W]
        return winograd_conv3x3(h, weight, winograd_u, bias, impl="native")  # [B, O, H, W] channels_last

    def fir(self, x: Tensor, padding: int, gain: float = 1.0) -> Tensor:
        """The 4x4 FIR f = t t^T (t = [1,3,3,1]/8) times gain, as two 4-tap depthwise passes: [B, C, H, W] ->
        [B, C, H + 2 padding - 3, ...]. The sqrt of the gain goes into each pass (2 x 2 for the up-convs)."""
        channels = x.shape[1]
        taps = (self.fir_taps * math.sqrt(gain)).to(x.dtype)  # [4]
        row = taps.view(1, 1, 1, 4).expand(channels, 1, 1, 4)  # [C, 1, 1, 4]
        col = taps.view(1, 1, 4, 1).expand(channels, 1, 4, 1)  # [C, 1, 4, 1]
        x = F.conv2d(x, row, padding=(0, padding), groups=channels)  # [B, C, H, W']
        return F.conv2d(x, col, padding=(padding, 0), groups=channels)  # [B, C, H', W']

    def _enc_layer(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        x = self.fir(x, padding=2)  # [B, I, H+1, W+1]
        x = F.conv2d(x, weight, bias, stride=2)  # [B, O, H/2, W/2]
        return F.leaky_relu_(x, LRELU_SLOPE).mul_(LRELU_GAIN)

    def encoders(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, 3, H, H] fp32 -> (c_2 [B, C2, S, S], c_n [B, Cn, R0, R0] in the engine dtype, v [B, Cn] fp32)."""
        h = self._enc_layer(self._layout(x), *self.enc_first)  # [B, 2 C1, H/2, H/2]
        content, style = h[:, : self.enc_split], h[:, self.enc_split :]  # [B, C1, H/2, H/2] each
        feats = [content]
        for weight, bias in self.content_layers:
            feats.append(self._enc_layer(feats[-1], weight, bias))  # [B, C_i, H/2^i, H/2^i]
        for weight, bias in self.style_layers:
            style = self._enc_layer(style, weight, bias)  # [B, C_i, H/2^i, H/2^i]
        v = style.float().mean(dim=(2, 3))  # [B, Cn]
        return feats[SKIP_LEVEL - 1], feats[-1], v

    def style_mapping(self, v: Tensor) -> Tensor:
        """M_s in fp32: v [B, Cn] -> w_s [B, w_dim]."""
        h = normalize_2nd_moment(v)  # [B, Cn]
        for weight, bias in self.style_fcs:
            h = F.leaky_relu(F.linear(h, weight, bias), LRELU_SLOPE) * LRELU_GAIN  # [B, w_dim]
        return h

    def skip_blur(self, skip: Tensor, x: Tensor, inputs: dict[str, Tensor], needs_mask: bool) -> Tensor:
        """CUSP.skip_blur as the graph-safe op (rewrite 7): c_2 fp32 [B, C2, S, S], x [B, 3, H, H] -> fp32
        [B, C2, S, S]. Without the mask (every sigma_m = 0) the second call would be the identity: skipped."""
        batch, _, size, _ = skip.shape
        if needs_mask:
            mask = F.avg_pool2d(self.mask(x), x.shape[-1] // size)  # [B, 1, S, S] area resize, fp32
        else:
            mask = skip.new_zeros(batch, 1, size, size)  # [B, 1, S, S]; unread: the first call never blends
        blurred = masked_gaussian_blur_with_taps(skip, mask, inputs["blur_g.taps"], inputs["blur_g.flags"])  # F_g
        if needs_mask:
            blurred = masked_gaussian_blur_with_taps(blurred, mask, inputs["blur_m.taps"], inputs["blur_m.flags"])
        return blurred  # [B, C2, S, S]

    def _modulate(self, conv: _ModConv, s: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        """(s / m in the engine dtype [B, I, 1, 1], d m / c in fp32 [B, O, 1, 1]) with m = max_i |s| per sample."""
        m = s.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)  # [B, 1]
        return (s / m).to(self.dtype)[:, :, None, None], (d * m * conv.inv_scale)[:, :, None, None]

    def _epilogue(self, y: Tensor, d: Tensor, conv: _ModConv, mode: str, noise: Tensor | None) -> Tensor:
        """y * d + noise * strength, lrelu * sqrt 2, clamp on y [B, O, R, R] (fp32 maths)."""
        bias = conv.noise_const if mode == "const" else noise  # [R, R] or [B, 1, R, R] fp32
        if mode == "none":
            y.mul_(d)
        elif self.epilogue_in_place:
            y.mul_(d).add_(bias)
        else:
            # out of place (torch.compile / export refuse out= into a channels_last, non-contiguous, tensor);
            # fp32 maths rounded once to y's dtype, as out=y did
            y = torch.addcmul(bias, y, d).to(y.dtype)  # [B, O, R, R]
        y = F.leaky_relu_(y, LRELU_SLOPE).mul_(LRELU_GAIN)
        return y if conv.clamp is None else y.clamp_(-conv.clamp, conv.clamp)

    def decode(
        self, x: Tensor, skip: Tensor, ages: Tensor, styles: tuple[Tensor, ...], mode: str, noise: dict[str, Tensor]
    ) -> Tensor:
        """c_n [B, Cn, R0, R0], blurred skip [B, C2, S, S], ages [B], the ten w_s styles -> img fp32 [B, 3, H, H]."""
        img = None
        for i, block in enumerate(self.blocks):
            name = f"b{block.resolution}"
            if i == self.skip_block:
                x = torch.cat([x, self._layout(skip)], dim=1)  # [B, C + C2, S, S]
            s0 = self.s0_tables[i].index_select(0, ages)  # [B, I], rewrite 1
            d0 = self.d0_tables[i].index_select(0, ages)  # [B, O]
            s, d = self._modulate(block.conv0, s0, d0)
            y = F.conv_transpose2d(x * s, block.conv0.weight, stride=2)  # [B, O, 2r+1, 2r+1]
            y = self.fir(y, padding=1, gain=4.0)  # [B, O, R, R]
            x = self._epilogue(y, d, block.conv0, mode, noise.get(f"{name}.conv0"))  # [B, O, R, R]
            s1, s_rgb = styles[2 * i], styles[2 * i + 1]  # [B, O] each
            s, d = self._modulate(block.conv1, s1, demodulation(s1, block.conv1.q))
            y = self._conv3x3(x * s, block.conv1.weight, block.conv1.winograd_u)  # [B, O, R, R]
            x = self._epilogue(y, d, block.conv1, mode, noise.get(f"{name}.conv1"))  # [B, O, R, R]
            rgb = F.conv2d(x * s_rgb.to(self.dtype)[:, :, None, None], block.rgb_weight)  # [B, 3, R, R]
            rgb = rgb.float() + block.rgb_bias[None, :, None, None]  # [B, 3, R, R] fp32
            if block.rgb_clamp is not None:
                rgb = rgb.clamp_(-block.rgb_clamp, block.rgb_clamp)
            img = rgb if img is None else upsample2d(img, self._fir2d()) + rgb  # [B, 3, R, R] fp32 accumulator
        return img.contiguous()

    def _fir2d(self) -> Tensor:
        return self.fir_taps[:, None] * self.fir_taps[None, :]  # [4, 4] = f (exact: products of k/8)

    # --- rewrite 6: the guided-backprop mask without autograd ----------------------------------------------
    def mask(self, x: Tensor) -> Tensor:
        """Structure mask M (Eq. (1)) of x [B, 3, H, H] fp32 in [-1, 1]: float32 Tensor[B, 1, H, H] in [0, 1]."""
        return guided_backprop_mask_with_taps(self.dex_input_gradient(x), self.mask_taps)  # Eq. (1), the op

    def _rescale(self, g: Tensor) -> Tensor:
        """Low precision only: g / max|g| per sample (exact for M, see the module docstring)."""
        if self.dtype == torch.float32:
            return g
        # fp32 factors: 1 / peak overflows fp16 for peaks below 2^-16; a dead gradient (peak 0) stays 0, not NaN
        peak = g.abs().flatten(1).amax(dim=1).float()  # [B]
        inv = torch.where(peak > 0, peak.reciprocal(), torch.zeros_like(peak))  # [B]
        return g.mul_(inv.view(-1, *([1] * (g.dim() - 1))))  # in place, fp32 maths, stored in g's dtype

    def dex_input_gradient(self, x: Tensor) -> Tensor:
        """G = dL/dx through the DEX (guided or plain ReLU backward, by mask mode): x [B, 3, H, H] fp32 ->
        Tensor[B, 3, H, H] (RGB order)."""
        u = x
        if self.resize is not None:
            u = F.interpolate(u, size=(self.dex_res, self.dex_res), mode="bilinear", align_corners=False)
        u = (u + 1) * 127.5 - self.dex_mean  # [B, 3, r, r] RGB, the DEX preprocessing
        h = self._layout(u)
        acts: list[list[Tensor]] = []  # ReLU outputs per conv group
        pools: list[Tensor] = []  # argmax indices per pool
        for group in self.dex_groups:
            acts.append([])
            for weight, bias, _, winograd_u, _ in group:
                h = self._conv3x3(h, weight, winograd_u, bias).relu_()  # [B, C, r, r]
                acts[-1].append(h)
            h, index = F.max_pool2d(h, 2, return_indices=True)  # [B, C, r/2, r/2]
            pools.append(index)
        pooled_shape = h.shape
        fc_acts = []
        h = h.flatten(1)  # [B, C r r] in (C, H, W) order
        for weight, bias in self.dex_fcs:
            h = F.linear(h, weight, bias).relu_()  # [B, fc]
            fc_acts.append(h)
        if self.dex_reduce == "all":
            g = self.seed_all.expand(h.shape[0], -1)  # [B, fc]
        else:
            logits = F.linear(h, *self.fc8)  # [B, classes]
            g = self.fc8[0].index_select(0, logits.argmax(dim=1))  # [B, fc]: the top logit's row
        for (weight, _), act in zip(reversed(self.dex_fcs), reversed(fc_acts), strict=True):
            g = self.dex_relu_backward(g, act) @ weight  # [B, in]
        g = self._rescale(g.reshape(pooled_shape))  # [B, C, r, r]
        for group, group_acts, index in zip(reversed(self.dex_groups), reversed(acts), reversed(pools), strict=True):
            g = self._unpool(g, index, group_acts[-1])  # [B, C, 2r, 2r]
            for (_, _, backward, _, winograd_u), act in zip(reversed(group), reversed(group_acts), strict=True):
                g = self._conv3x3(self.dex_relu_backward(g, act), backward, winograd_u)  # [B, I, r, r]: dL/d(input)
            g = self._rescale(g)
        g = g.float() * 127.5  # [B, 3, r, r]
        if self.resize is not None:
            g = self.resize.t() @ g @ self.resize  # [B, 3, H, H]: R^T g R, the resize's adjoint
        return g

    @staticmethod
    def _unpool(g: Tensor, index: Tensor, like: Tensor) -> Tensor:
        """Max-pool (2x2, stride 2) backward: g [B, C, r, r] routed to the argmax of each window -> like's shape
        and layout. ATen's own backward keeps channels_last, so the guided ReLU backward and the conv after it read
        both operands in one layout (a scatter into a plain [B, C, 4 r r] buffer made the ReLU backward copy each
        activation to NCHW: about 25 ms of paper CUSP's 1 s on 2 CPU threads at batch 1); it is also faster than
        a scatter into a channels_last view (41 vs 74 ms for [8, 64, 224, 224]). ONNX export decomposes it."""
        return torch.ops.aten.max_pool2d_with_indices_backward(g, like, [2, 2], [2, 2], [0, 0], [1, 1], False, index)


__all__ = ["CUSPRunner", "age_tables", "demodulation", "resize_matrix", "stacked_style_affine"]
