"""CUSP: Custom Structure Preservation in Face Aging (Gomez-Trenado et al., ECCV 2022); docs/models/cusp.md.

Forward (docs/models/cusp.md section 3), x in [-1, 1] RGB [B, 3, H, H]:
  1. content encoder E_c -> c_1..c_n (H/2 .. H/2^n); style encoder E_s -> v = spatial mean of its last map;
  2. ws = interleave(w_a = M_a(onehot(age)), w_s = M_s(v)) -> [B, 3n, w_dim], block i reads (w_a, w_s, w_s);
  3. structure mask M = guided-backprop mask of the frozen DEX (Eq. (1)), area-resized to S = H/4;
  4. skip blur of c_2: F_g = F * k(sigma_g), F~ = M~ (F_g * k(sigma_m)) + (1 - M~) F_g  (the trained order);
  5. decoder: StyleGAN2 'skip' blocks from c_n, the blurred c_2 concatenated before the block whose input is S.

State-dict keys are the official ``G_ema`` names (``content_enc.conv0.weight``, ``image_dec.b14.conv0.affine.
weight``, ...) plus ``dex.*``; tensors are stored unscaled and the runtime gains are applied in forward, so the
converter copies official tensors unchanged. The official ``blur_list`` bank is not stored: kernels are built
from sigma (docs/models/cusp.md section 3.5 [D]).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.dex import DEX, DEXConfig
from ..layers.guided_backprop_mask import GuidedReLU, structure_mask
from ..layers.masked_gaussian_blur import masked_gaussian_blur
from ..layers.modulated_conv2d import modulated_conv2d
from ..layers.stylegan2 import Conv2dLayer, FullyConnectedLayer, MappingNetwork, fir_filter, lrelu_act, upfirdn2d
from ..layers.stylegan2 import upsample2d as rgb_upsample2d

NoiseMode = Literal["const", "random", "none"]
ModconvForm = Literal["scaled", "grouped"]
SKIP_LEVEL = 2  # only c_2 reaches the decoder (official skip_layers = [2])
MASK_MODES = ("official", "paper")


@dataclass(frozen=True)
class CUSPConfig:
    """Sizes of one CUSP generator (+ its DEX). Channel rules follow the official code:
    encoder level i (0-based) has min(enc_channel_base * 2^i, enc_channel_max) channels; decoder block at
    resolution R has min(channel_base // R, channel_max)."""

    resolution: int = 224
    n_downsample: int = 5
    enc_channel_base: int = 64
    enc_channel_max: int = 512
    channel_base: int = 32768
    channel_max: int = 512
    w_dim: int = 512
    map_layers: int = 8
    attr_dim: int = 101
    conv_clamp: float | None = 256.0
    dex: DEXConfig = field(default_factory=DEXConfig.paper)
    dex_outclass: Literal["all", "max"] = "all"  # L = sum of logits (paper) or the top-1 logit
    # how the structure mask is computed (docs/models/cusp.md, "Mask modes"): "paper" = guided ReLU backward and
    # the intended 29-tap mask blur; "official" = what the released G_ema computes: plain ReLU backward and the
    # official code's full 1731-tap blur
    mask: Literal["paper", "official"] = "paper"
    default_sigma_m: float = 9.0  # input-image pixels; the paper's custom preset
    default_sigma_g: float = 0.0

    @classmethod
    def paper224(cls) -> CUSPConfig:
        """FFHQ-RR weights: 224x224, one-hot over ages 0..100; G has 32,287,149 parameters."""
        return cls()

    @classmethod
    def paper256(cls) -> CUSPConfig:
        """FFHQ-LS weights: 256x256, 10 age clusters; G has 31,648,537 parameters."""
        return cls(resolution=256, attr_dim=10, default_sigma_m=8.0, default_sigma_g=4.5)

    @classmethod
    def tiny(cls, attr_dim: int = 101) -> CUSPConfig:
        """Every code path (odd 7x7 base, up-convs, skip concat, double blur, DEX resize) with a few channels."""
        return cls(
            resolution=56,
            n_downsample=3,
            enc_channel_base=8,
            enc_channel_max=32,
            channel_base=448,
            channel_max=32,
            w_dim=32,
            map_layers=2,
            attr_dim=attr_dim,
            dex=DEXConfig.tiny(),
        )

    # --- derived sizes ---------------------------------------------------------------------------------
    @property
    def base_resolution(self) -> int:
        return self.resolution >> self.n_downsample

    @property
    def skip_resolution(self) -> int:
        """S = H / 4, the side of c_2 and of the resized mask."""
        return self.resolution >> SKIP_LEVEL

    @property
    def enc_channels(self) -> tuple[int, ...]:
        return tuple(min(self.enc_channel_base << i, self.enc_channel_max) for i in range(self.n_downsample))

    @property
    def block_resolutions(self) -> tuple[int, ...]:
        return tuple(self.base_resolution << (i + 1) for i in range(self.n_downsample))

    def dec_channels(self, res: int) -> int:
        return min(self.channel_base // res, self.channel_max)

    @property
    def sigma_max(self) -> float:
        """Largest accepted sigma in input pixels: max(9, H/25) (docs/models/cusp.md section 2.1)."""
        return max(9.0, self.resolution / 25)

    @property
    def gb_kernel_size(self) -> int:
        """k_gb = 2 floor(29 H / 448) + 1 (29 at 224) in mask mode "paper"; the official code's as-written
        2 floor(224 H / 58) + 1 (1731 at 224, 1977 at 256) in mode "official"."""
        if self.mask == "official":
            return 2 * math.floor(self.resolution * 224 / 29 / 2) + 1
        return 2 * math.floor(29 * self.resolution / 448) + 1

    @property
    def guided_relu(self) -> bool:
        """Whether the mask's backward through the DEX ReLUs is guided (mode "paper") or plain (mode "official")."""
        return self.mask == "paper"

    @property
    def gb_sigma(self) -> float:
        """sigma_gb = 0.3 (k_gb / 2 - 1) + 0.8 (4.85 at 224)."""
        return 0.3 * (self.gb_kernel_size / 2 - 1) + 0.8

    @staticmethod
    def from_dict(data: dict) -> CUSPConfig:
        """Inverse of dataclasses.asdict (JSON lists back to tuples)."""
        fields = dict(data)
        if fields.pop("gb_kernel", "intended") != "intended":  # the field mask replaced (configs saved before it)
            raise TypeError("gb_kernel 'as_written' is now mask='official' (which also sets the plain ReLU backward)")
        if fields.get("mask", "paper") not in MASK_MODES:
            raise TypeError(f"mask must be one of {', '.join(MASK_MODES)}, got {fields['mask']!r}")
        dex = dict(fields.pop("dex", {}) or {})
        if "conv_channels" in dex:
            dex["conv_channels"] = tuple(tuple(g) for g in dex["conv_channels"])
        return CUSPConfig(**fields, dex=DEXConfig(**dex))

    def replace(self, **changes) -> CUSPConfig:
        return dataclasses.replace(self, **changes)


def skip_blur_kernel_size(skip_size: int) -> int:
    """K = 2 floor(S / 6) + 1 from the actual skip side S (19 at S = 56)."""
    return 2 * (skip_size // 6) + 1


class ImageEncoder(nn.Module):
    """n stride-2 ``Conv2dLayer``s; returns every map: [B, c_i, H / 2^(i+1), ...] for i = 0..n-1."""

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.num_layers = len(channels)
        in_ch = 3
        for i, out_ch in enumerate(channels):
            setattr(self, f"conv{i}", Conv2dLayer(in_ch, out_ch))
            in_ch = out_ch

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for i in range(self.num_layers):
            x = getattr(self, f"conv{i}")(x)  # [B, c_i, H/2^(i+1), W/2^(i+1)]
            feats.append(x)
        return feats


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (demodulated, no biases: the official ``--bias False``), noise, lrelu*sqrt2, clamp.

    ``up=2`` (conv0): transposed conv R/2 -> R+1, then FIR f*4 with padding 1 -> R.
    Keys: ``weight`` [O, I, 3, 3], ``affine.weight`` [I, w_dim], ``noise_const`` [R, R], ``noise_strength`` [],
    ``resample_filter`` [4, 4].
    """

    def __init__(
        self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: int, conv_clamp: float | None
    ) -> None:
        super().__init__()
        self.up, self.resolution, self.conv_clamp = up, resolution, conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias=False)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))  # [O, I, 3, 3]
        self.register_buffer("resample_filter", fir_filter())  # [4, 4]
        self.register_buffer("noise_const", torch.randn(resolution, resolution))  # [R, R]
        self.noise_strength = nn.Parameter(torch.zeros([]))  # []

    def forward(self, x: Tensor, w: Tensor, noise_mode: NoiseMode, noise: Tensor | None, form: ModconvForm) -> Tensor:
        """x: [B, I, R/up, R/up], w: [B, w_dim], noise: [B, 1, R, R] for 'random' -> [B, O, R, R]."""
        styles = self.affine(w)  # [B, I]
        if self.up == 2:
            x = modulated_conv2d(x, self.weight, styles, up=2, form=form)  # [B, O, R+1, R+1]
            x = upfirdn2d(x, self.resample_filter, padding=(1, 1, 1, 1), gain=4.0)  # [B, O, R, R]
        else:
            x = modulated_conv2d(x, self.weight, styles, padding=1, form=form)  # [B, O, R, R]
        if noise_mode == "const":
            x = x + self.noise_const.to(x.dtype) * self.noise_strength  # [B, O, R, R]
        elif noise_mode == "random":
            if noise is None:
                raise ValueError("noise_mode 'random' needs a noise map [B, 1, R, R] per layer")
            x = x + noise.to(x.dtype) * self.noise_strength  # [B, O, R, R]
        elif noise_mode != "none":
            raise ValueError(f"noise_mode must be 'const', 'random' or 'none', got {noise_mode!r}")
        return lrelu_act(x, clamp=self.conv_clamp)  # [B, O, R, R]


class ToRGBLayer(nn.Module):
    """1x1 modulated conv without demodulation, styles scaled by 1/sqrt(C_in), bias, clamp.

    Keys: ``weight`` [3, I, 1, 1], ``bias`` [3], ``affine.weight`` [I, w_dim], ``affine.bias`` [I] (init 1).
    """

    def __init__(self, in_channels: int, w_dim: int, conv_clamp: float | None) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(3, in_channels, 1, 1))  # [3, I, 1, 1]
        self.bias = nn.Parameter(torch.zeros(3))  # [3]
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: Tensor, w: Tensor, form: ModconvForm) -> Tensor:
        """x: [B, I, R, R], w: [B, w_dim] -> [B, 3, R, R]."""
        styles = self.affine(w) * self.weight_gain  # [B, I]
        y = modulated_conv2d(x, self.weight, styles, demodulate=False, form=form)  # [B, 3, R, R]
        y = y + self.bias.to(y.dtype)[None, :, None, None]  # [B, 3, R, R]
        return y if self.conv_clamp is None else y.clamp(-self.conv_clamp, self.conv_clamp)


class SynthesisBlock(nn.Module):
    """conv0 (up x2, age style), conv1 (image style), toRGB (image style); 'skip' RGB path."""

    def __init__(
        self, in_channels: int, out_channels: int, w_dim: int, resolution: int, conv_clamp: float | None
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, up=1, conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(out_channels, w_dim, conv_clamp)
        self.register_buffer("resample_filter", fir_filter())  # [4, 4]

    def forward(
        self,
        x: Tensor,
        img: Tensor | None,
        ws: Tensor,
        noise_mode: NoiseMode,
        noise: dict[str, Tensor] | None,
        form: ModconvForm,
    ) -> tuple[Tensor, Tensor]:
        """x: [B, I, R/2, R/2], img: [B, 3, R/2, R/2] or None, ws: [B, 3, w_dim] -> x [B, O, R, R], img [B, 3, R, R]."""
        noise = noise or {}
        name = f"b{self.resolution}"
        x = self.conv0(x, ws[:, 0], noise_mode, noise.get(f"{name}.conv0"), form)  # [B, O, R, R]
        x = self.conv1(x, ws[:, 1], noise_mode, noise.get(f"{name}.conv1"), form)  # [B, O, R, R]
        y = self.torgb(x, ws[:, 2], form).float()  # [B, 3, R, R]; the RGB path accumulates in fp32
        if img is not None:
            img = rgb_upsample2d(img, self.resample_filter.float())  # [B, 3, R, R]
            y = img + y  # [B, 3, R, R]
        return x, y


class ImageDecoder(nn.Module):
    """StyleGAN2 'skip' decoder from c_n; the blurred skip is concatenated before block ``skip_block``."""

    def __init__(self, config: CUSPConfig, skip_channels: int) -> None:
        super().__init__()
        self.block_resolutions = config.block_resolutions
        # the block whose input has the skip's resolution S (b112 at 224)
        self.skip_block = config.block_resolutions.index(config.skip_resolution * 2)
        in_ch = config.enc_channels[-1]
        for i, res in enumerate(self.block_resolutions):
            out_ch = config.dec_channels(res)
            extra = skip_channels if i == self.skip_block else 0
            setattr(self, f"b{res}", SynthesisBlock(in_ch + extra, out_ch, config.w_dim, res, config.conv_clamp))
            in_ch = out_ch

    def forward(
        self,
        x: Tensor,
        skip: Tensor,
        ws: Tensor,
        noise_mode: NoiseMode = "const",
        noise: dict[str, Tensor] | None = None,
        form: ModconvForm = "scaled",
    ) -> Tensor:
        """x: c_n [B, C, R0, R0], skip: [B, C2, S, S], ws: [B, 3n, w_dim] -> img [B, 3, H, H] float32."""
        img = None
        for i, res in enumerate(self.block_resolutions):
            if i == self.skip_block:
                x = torch.cat([x, skip.to(x.dtype)], dim=1)  # [B, C + C2, S, S]
            x, img = getattr(self, f"b{res}")(x, img, ws[:, 3 * i : 3 * i + 3], noise_mode, noise, form)
        return img


class CUSP(nn.Module):
    """The CUSP generator with its frozen DEX for the structure mask (GuidedReLU everywhere in mask mode "paper",
    plain ReLU in mode "official")."""

    def __init__(self, config: CUSPConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or CUSPConfig.paper224()
        if config.resolution % (1 << config.n_downsample) or config.n_downsample <= SKIP_LEVEL:
            raise ValueError(f"resolution {config.resolution} must be divisible by 2^n_downsample, n_downsample > 2")
        n = config.n_downsample
        self.content_enc = ImageEncoder(config.enc_channels)
        self.style_enc = ImageEncoder(config.enc_channels)
        self.style_map = MappingNetwork(config.enc_channels[-1], config.w_dim, config.map_layers, num_ws=2 * n)
        self.attr_map = MappingNetwork(config.attr_dim, config.w_dim, config.map_layers, num_ws=n)
        self.image_dec = ImageDecoder(config, skip_channels=config.enc_channels[SKIP_LEVEL - 1])
        self.dex = DEX(config.dex)  # plain nn.ReLU: the official G_ema's backward
        if config.guided_relu:
            self.dex.set_relu(GuidedReLU)
        self.dex.requires_grad_(False)  # frozen: only the input gradient is taken

    # --- parts ------------------------------------------------------------------------------------------
    def mapping(self, v: Tensor, onehot: Tensor) -> Tensor:
        """Style vector v [B, C_n] and one-hot age [B, attr_dim] -> ws [B, 3n, w_dim], (w_a, w_s, w_s) per block."""
        w_s = self.style_map(v)  # [B, 2n, w_dim]
        w_a = self.attr_map(onehot.to(w_s.dtype))  # [B, n, w_dim]
        ws = torch.stack([w_a, w_s[:, 0::2], w_s[:, 1::2]], dim=2)  # [B, n, 3, w_dim]
        return ws.flatten(1, 2)  # [B, 3n, w_dim]

    def structure_mask(self, x: Tensor) -> Tensor:
        """Guided-backprop mask M of the DEX, Eq. (1): x [B, 3, H, H] in [-1, 1] -> [B, 1, H, H] in [0, 1].

        Same result as the oracle ``guided_backprop_mask(self.dex, x, ...)``; the gradient is taken at a
        non-leaf copy of x so that module-tracking modes (FlopCounterMode) can follow the backward pass.
        """
        cfg = self.config
        with torch.inference_mode(False), torch.enable_grad():
            leaf = x.detach().clone().requires_grad_(True)  # a normal tensor even under inference_mode
            xg = leaf.clone()  # [B, 3, H, H]
            logits = self.dex(xg)  # [B, classes]
            objective = logits.sum() if cfg.dex_outclass == "all" else logits.max(dim=1).values.sum()
            (grad,) = torch.autograd.grad(objective, xg)  # [B, 3, H, H]
        # the statistics (std, 2*std + 1e-15) stay in float32 at least: 1e-15 vanishes in half precision
        stats_dtype = torch.promote_types(grad.dtype, torch.float32)
        mask = structure_mask(grad.detach().to(stats_dtype), cfg.gb_kernel_size, cfg.gb_sigma)  # [B, 1, H, H]
        return mask.to(x.dtype)

    def skip_blur(self, feats: Tensor, mask: Tensor, sigma_m: Tensor, sigma_g: Tensor) -> Tensor:
        """F~ = M~ (F_g * k(s_m)) + (1 - M~) F_g with F_g = F * k(s_g), as two masked_gaussian_blur calls.

        Args:
            feats: c_2, Tensor[B, C, S, S].
            mask: M~, Tensor[B, 1, S, S] in [0, 1].
            sigma_m, sigma_g: Tensor[B] in input-image pixels; sigma_hat = sigma * S / H skip pixels.
        """
        size = feats.shape[-1]
        kernel = skip_blur_kernel_size(size)
        scale = size / self.config.resolution
        s_m = sigma_m.double().cpu() * scale  # [B]
        s_g = sigma_g.double().cpu() * scale  # [B]
        blurred_g = masked_gaussian_blur(feats, mask, s_g, s_g, kernel)  # [B, C, S, S]
        return masked_gaussian_blur(blurred_g, mask, s_m, torch.zeros_like(s_m), kernel)  # [B, C, S, S]

    def make_noise(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> dict[str, Tensor]:
        """Per-sample noise for noise_mode 'random' (docs/models/cusp.md 2.2): sample b draws [1, 1, R, R] per layer
        from a CPU generator seeded with seeds[b], in the order
        b{R0}.conv0, b{R0}.conv1, b{R1}.conv0, ...; then moved."""
        per_layer: dict[str, list[Tensor]] = {}
        for seed in seeds:
            gen = torch.Generator().manual_seed(int(seed))
            for res in self.config.block_resolutions:
                for conv in ("conv0", "conv1"):
                    per_layer.setdefault(f"b{res}.{conv}", []).append(torch.randn(1, 1, res, res, generator=gen))
        return {k: torch.cat(v).to(device) for k, v in per_layer.items()}  # each [B, 1, R, R]

    # --- forward ----------------------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        onehot: Tensor,
        sigma_m: Tensor,
        sigma_g: Tensor,
        noise_mode: NoiseMode = "const",
        noise: dict[str, Tensor] | None = None,
        form: ModconvForm = "scaled",
    ) -> Tensor:
        """Age a batch.

        Args:
            x: Tensor[B, 3, H, H] RGB in [-1, 1].
            onehot: Tensor[B, attr_dim] target age one-hot.
            sigma_m: Tensor[B] extra blur inside the mask, input-image pixels (0 = none).
            sigma_g: Tensor[B] blur everywhere, input-image pixels.
            noise_mode: 'const' (stored maps), 'random' (``noise`` from ``make_noise``) or 'none'.
            noise: per-layer maps {"b{R}.conv{0,1}": [B, 1, R, R]} for 'random'.
            form: modulated-conv form, 'scaled' or 'grouped' (equal results).

        Returns:
            Tensor[B, 3, H, H] float32, nominally [-1, 1], not clamped (only the +-256 toRGB clamps bound it).
        """
        feats = self.content_enc(x)  # c_1..c_n, c_i: [B, C_i, H/2^i, H/2^i]
        v = self.style_enc(x)[-1].mean(dim=(2, 3))  # [B, C_n]
        ws = self.mapping(v, onehot)  # [B, 3n, w_dim]
        skip = feats[SKIP_LEVEL - 1]  # c_2: [B, C_2, S, S]
        size = skip.shape[-1]
        if bool((sigma_m > 0).any()):
            mask = self.structure_mask(x)  # [B, 1, H, H]
            mask = F.avg_pool2d(mask, self.config.resolution // size).to(skip.dtype)  # [B, 1, S, S] area resize
        else:
            # sigma_m = 0 everywhere: the blend ignores M (and the DEX pass is skipped exactly)
            mask = skip.new_zeros(skip.shape[0], 1, size, size)  # [B, 1, S, S]
        skip = self.skip_blur(skip, mask, sigma_m, sigma_g)  # [B, C_2, S, S]
        return self.image_dec(feats[-1], skip, ws, noise_mode, noise, form)  # [B, 3, H, H]


def generator_parameter_count(model: CUSP) -> int:
    """Parameters of G alone (the DEX excluded), as counted in docs/models/cusp.md section 3.7."""
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith("dex."))


__all__ = ["CUSP", "MASK_MODES", "SKIP_LEVEL", "CUSPConfig", "generator_parameter_count", "skip_blur_kernel_size"]
