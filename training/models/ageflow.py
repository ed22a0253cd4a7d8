"""AgeFlow (Huang, Chen, Zhang, Shan, IJCAI 2021): Glow flow G, ICTM T, prior generator, latent discriminator D.

Inference (docs/models/ageflow.md section 2, mode ``ictm``): x = quantise(crop); (z_0..z_{L-2}, z_top) = G(x);
(mu_t, rho_t) = PriorGen(onehot(g)); (z'_t, mu'_s, rho'_s) = T(z_top, mu_t, rho_t); y = G^-1(z_0.., z'_t).
The lower latents pass through unchanged (``lower_latents="raw"``, the default), or as prior-standardised
eps_l that are rebuilt from the split priors of the decoded levels (``"eps"``, section 2).

G follows the official code (Hzzone/AgeFlow ``flow/``): its module tree is ``blocks.{l}.flows.{k}...`` and
``blocks.{l}.prior``, so an official ``generator-*`` state dict loads into ``AgeFlow.flow`` after the
``module.`` prefix is stripped. Only G is published; T, the prior generator and D are specified by the paper
text plus the project's decisions (section 3.2, 3.3). Fixes of the official code kept here (section 7):
the true logdet (``official_logdet=True`` reproduces the doubled ActNorm term), ActNorm init only in
training mode, W^-1 built once in float64 (see ``training/layers/glow.py``), inputs never modified, decode
with explicit latents.

Pixels live in model space [-0.5, 0.5): 5-bit bins of width 1/32, inference uses bin centres.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from ..layers.glow import FlowStep, GlowLevel, InvConv2dLU, gaussian_log_p

LOWER_LATENT_MODES = ("raw", "eps")


@dataclass(frozen=True)
class AgeFlowConfig:
    """Sizes of G, T, the prior generator and D (docs/models/ageflow.md sections 3-4).

    ``image_size`` fixes the top latent's side (image_size / 2^levels), which sizes T and the prior table;
    G itself is fully convolutional.
    """

    image_size: int = 256
    levels: int = 6
    steps: int = 32
    hidden: int = 512
    ictm_flows: int = 32
    ictm_hidden: int = 512
    ictm_attention: int = 32
    groups: int = 4
    disc_hidden: int = 512
    n_bits: int = 5

    def __post_init__(self) -> None:
        if self.levels < 2:
            raise ValueError(f"AgeFlow needs levels >= 2 (the top level is sized from the last split), got {self}")
        if self.image_size % (2**self.levels) != 0:
            raise ValueError(f"image_size {self.image_size} must be divisible by 2^levels = {2**self.levels}")
        if self.ictm_flows < 2 or self.ictm_flows % 2 != 0:
            raise ValueError(f"ictm_flows must be even (T starts as the identity), got {self.ictm_flows}")
        if min(self.steps, self.hidden, self.ictm_hidden, self.ictm_attention, self.groups, self.disc_hidden) < 1:
            raise ValueError(f"every AgeFlow size must be positive, got {self}")
        if not 1 <= self.n_bits <= 8:
            raise ValueError(f"n_bits must lie in 1..8, got {self.n_bits}")

    @classmethod
    def paper(cls) -> AgeFlowConfig:
        """256x256, 6 levels x 32 steps, width 512; T 32 flows: G 177,559,056, T 264,365,056 parameters."""
        return cls()

    @classmethod
    def tiny(cls) -> AgeFlowConfig:
        """32x32, 3 levels x 2 steps, width 32; T 2 flows of width 32: G 112,656, T 169,744 parameters."""
        return cls(image_size=32, levels=3, steps=2, hidden=32, ictm_flows=2, ictm_hidden=32, ictm_attention=8,
                   disc_hidden=32)  # fmt: skip

    @classmethod
    def jacobian(cls) -> AgeFlowConfig:
        """8x8, 2 levels x 2 steps, width 16: 192 input values, small enough for a full autograd Jacobian."""
        return cls(image_size=8, levels=2, steps=2, hidden=16, ictm_flows=2, ictm_hidden=16, ictm_attention=4,
                   disc_hidden=16)  # fmt: skip

    @property
    def top_channels(self) -> int:
        """Channels of z_top: 3 * 2^(levels+1) (384 for the paper config)."""
        return 3 * 2 ** (self.levels + 1)

    @property
    def top_size(self) -> int:
        """Side of z_top: image_size / 2^levels (4 for the paper config)."""
        return self.image_size // 2**self.levels

    def latent_shapes(self) -> list[tuple[int, int, int]]:
        """(C, H, W) of z_0 .. z_{L-2}, then z_top; they hold 3 * image_size^2 values in all."""
        shapes = [(6 * 2**l, self.image_size >> (l + 1), self.image_size >> (l + 1)) for l in range(self.levels - 1)]
        return [*shapes, (self.top_channels, self.top_size, self.top_size)]


# --- pixels <-> model space ----------------------------------------------------------------------------
def quantize_input(images: Tensor, *, n_bits: int = 5, bin_centre: bool = True) -> Tensor:
    """Images -> model space, never modifying ``images``.

    uint8 v is used as is; float u in [0, 1] is first rounded to v = round(255 u). Then k = v >> (8 - n_bits)
    and x = (k + 32 delta) / 2^n_bits - 0.5 with delta = 1/64 (the bin centre, ``bin_centre=True``) or 0
    (the official code's bin lower edge).

    Args:
        images: Tensor[B, 3, H, W], uint8 or float in [0, 1].

    Returns:
        Tensor[B, 3, H, W] float32 in [-0.5, 0.5).
    """
    if images.dtype == torch.uint8:
        v = images.to(torch.int64)  # [B, 3, H, W]
    else:
        v = torch.round(images.float() * 255.0).clamp(0, 255).to(torch.int64)  # [B, 3, H, W]
    k = v >> (8 - n_bits)  # [B, 3, H, W] in 0 .. 2^n_bits - 1
    offset = 0.5 if bin_centre else 0.0  # 32 * delta, in units of one bin
    return (k.to(torch.float32) + offset) / 2**n_bits - 0.5  # [B, 3, H, W]


def postprocess_output(y: Tensor, *, n_bits: int = 5, quantize: bool = False) -> Tensor:
    """Model space -> [0, 1].

    Continuous (default): clamp(256 (y + 0.5), 0, 255) / 255. ``quantize=True`` gives the official 5-bit
    form clamp(8 floor(2^n_bits (y + 0.5)), 0, 255) / 255 for n_bits = 5.

    Args:
        y: Tensor[B, 3, H, W] float.

    Returns:
        Tensor[B, 3, H, W] in y's dtype, in [0, 1].
    """
    if quantize:
        v = torch.floor((y + 0.5) * 2**n_bits) * 2 ** (8 - n_bits)  # [B, 3, H, W]
    else:
        v = (y + 0.5) * 256.0  # [B, 3, H, W]
    return v.clamp(0.0, 255.0) / 255.0  # [B, 3, H, W]


# --- G -------------------------------------------------------------------------------------------------
@dataclass
class GlowLatents:
    """What G.encode returns: ``lower`` z_0..z_{L-2} (raw, or eps when standardised), ``top`` z_top
    [B, C_top, s, s], ``logdet`` [B], and ``log_p`` [B] (sum of the prior log-densities) when requested."""

    lower: list[Tensor]
    top: Tensor
    logdet: Tensor
    log_p: Tensor | None = None
    standardized: bool = False


class Glow(nn.Module):
    """The flow G: ``levels`` multi-scale levels of ``steps`` ActNorm -> LU 1x1 -> additive coupling steps."""

    def __init__(self, config: AgeFlowConfig) -> None:
        super().__init__()
        self.config = config
        levels = []
        in_channels = 3
        for l in range(config.levels):
            split = l < config.levels - 1
            levels.append(GlowLevel(in_channels, config.steps, config.hidden, split))
            in_channels *= 2  # a split level passes on half of its 4x channels
        self.blocks = nn.ModuleList(levels)

    def encode(
        self, x: Tensor, *, official_logdet: bool = False, with_log_p: bool = False, standardize: bool = False
    ) -> GlowLatents:
        """x [B, 3, S, S] in model space -> latents (raw z_l unless ``standardize``; z_top always raw).

        ``official_logdet`` adds the ActNorm term a second time, as the official FlowStep does (section 7
        item 1); ``with_log_p`` evaluates the priors (not needed for inference).
        """
        batch = x.shape[0]
        logdet = x.new_zeros(())
        log_p = x.new_zeros(batch)  # [B]
        lower: list[Tensor] = []
        h = x  # [B, C_in, H, W]
        for level in self.blocks:
            kept, z, ld = level(h)  # [B, C/2, H/2, W/2] or None, [B, C_z, H/2, W/2]
            logdet = logdet + ld
            if official_logdet:
                for flow in level.flows:
                    logdet = logdet + flow.actnorm.logdet(z.shape[2], z.shape[3])
            needs_prior = with_log_p or (standardize and kept is not None)
            mean, log_sd = level.prior_params(kept, z.shape) if needs_prior else (None, None)  # like z
            if with_log_p:
                log_p = log_p + gaussian_log_p(z, mean, log_sd).flatten(1).sum(1)  # [B]
            if kept is None:
                top = z  # [B, C_top, s, s]
            else:
                lower.append((z - mean) * torch.exp(-log_sd) if standardize else z)  # [B, C_z, H/2, W/2]
                h = kept
        return GlowLatents(lower, top, logdet * x.new_ones(batch), log_p if with_log_p else None, standardize)

    def decode(self, lower: list[Tensor], top: Tensor, *, standardized: bool = False) -> Tensor:
        """Exact inverse of encode: (z_0..z_{L-2} or eps, z_top) -> x [B, 3, S, S]."""
        if len(lower) != len(self.blocks) - 1:
            raise ValueError(f"decode needs {len(self.blocks) - 1} lower latents, got {len(lower)}")
        h = self.blocks[-1].reverse(None, top)  # [B, C_top / 4, 2s, 2s]
        for level, z in zip(reversed(self.blocks[:-1]), reversed(lower), strict=True):
            if standardized:
                mean, log_sd = level.prior_params(h, z.shape)  # like z
                z = mean + torch.exp(log_sd) * z  # [B, C_z, h, w]
            h = level.reverse(h, z)  # [B, C_in, 2h, 2w]
        return h

    def log_prob(self, x: Tensor, *, official_logdet: bool = False) -> Tensor:
        """log p_Z(G(x)) + log|det dG/dx| per image, [B] (Eq. 4 without the dequantisation constant)."""
        latents = self.encode(x, official_logdet=official_logdet, with_log_p=True)
        return latents.log_p + latents.logdet  # [B]


# --- T, prior generator, D -----------------------------------------------------------------------------
class ICTM(nn.Module):
    """Invertible conditional translation module T on u = (z | mu | rho), [B, 3 C_top, s, s].

    ``flows`` steps, each an LU 1x1 conv initialised to the channel reversal and an additive coupling whose
    network has channel attention before its zero conv; no ActNorm. An even number of reversals and zero
    convs make T exactly the identity at init (docs/models/ageflow.md section 3.2).
    """

    def __init__(self, channels: int, flows: int, hidden: int, attention: int) -> None:
        super().__init__()
        self.channels = channels
        self.flows = nn.ModuleList(
            FlowStep(3 * channels, hidden, actnorm=False, invconv_init="reverse", attention=attention)
            for _ in range(flows)
        )

    def forward(self, z: Tensor, mu: Tensor, rho: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(z_s, mu_t, rho_t), each [B, C_top, s, s] -> (z'_t, mu'_s, rho'_s, logdet [B])."""
        u = torch.cat([z, mu, rho], dim=1)  # [B, 3 C_top, s, s]
        logdet = u.new_zeros(())
        for flow in self.flows:
            u, ld = flow(u)  # [B, 3 C_top, s, s]
            logdet = logdet + ld
        z_t, mu_s, rho_s = u.split(self.channels, dim=1)  # [B, C_top, s, s] each
        return z_t, mu_s, rho_s, logdet * u.new_ones(u.shape[0])

    def reverse(self, z_t: Tensor, mu_s: Tensor, rho_s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """T^-1: (z'_t, mu'_s, rho'_s) -> (z_s, mu_t, rho_t), each [B, C_top, s, s]."""
        u = torch.cat([z_t, mu_s, rho_s], dim=1)  # [B, 3 C_top, s, s]
        for flow in reversed(self.flows):
            u = flow.reverse(u)  # [B, 3 C_top, s, s]
        z, mu, rho = u.split(self.channels, dim=1)  # [B, C_top, s, s] each
        return z, mu, rho


class PriorGenerator(nn.Module):
    """Bias-free Linear(n -> 2 C s^2): a table [n, 2, C, s, s] of (mu, rho = log sigma) per age group.

    Starts at zero (the standard normal for every group) until :meth:`init_from_statistics` loads the
    per-group mean and log-std of z_top (docs/models/ageflow.md section 6.3).
    """

    def __init__(self, groups: int, channels: int, size: int) -> None:
        super().__init__()
        self.shape = (channels, size, size)
        self.linear = nn.Linear(groups, 2 * channels * size * size, bias=False)
        nn.init.zeros_(self.linear.weight)

    @torch.no_grad()
    def init_from_statistics(self, mean: Tensor, log_std: Tensor) -> None:
        """mean, log_std: [n, C, s, s] per-group statistics of z_top."""
        table = torch.stack([mean, log_std], dim=1).flatten(1)  # [n, 2 C s^2]
        self.linear.weight.copy_(table.T)

    def forward(self, onehot: Tensor) -> tuple[Tensor, Tensor]:
        """onehot [B, n] -> (mu, rho), each [B, C, s, s]."""
        out = self.linear(onehot)  # [B, 2 C s^2]
        mu, rho = out.view(onehot.shape[0], 2, *self.shape).unbind(1)  # [B, C, s, s] each
        return mu, rho


class LatentDiscriminator(nn.Module):
    """D on the flattened z_top (training only): two spectrally normalised Linear(-> hidden) + LeakyReLU(0.2),
    then an LSGAN head Linear(hidden -> 1) and an age head Linear(hidden -> n) (docs/models/ageflow.md section 3.3)."""

    def __init__(self, features: int, hidden: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            spectral_norm(nn.Linear(features, hidden)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Linear(hidden, hidden)),
            nn.LeakyReLU(0.2),
        )
        self.gan_head = nn.Linear(hidden, 1)
        self.age_head = nn.Linear(hidden, groups)

    def forward(self, z_top: Tensor) -> tuple[Tensor, Tensor]:
        """z_top [B, C, s, s] -> (LSGAN score [B], age logits [B, n])."""
        h = self.body(z_top.flatten(1))  # [B, hidden]
        return self.gan_head(h).squeeze(1), self.age_head(h)


# --- the whole model -----------------------------------------------------------------------------------
@dataclass
class AgingResult:
    """Output of :meth:`AgeFlow.age`: the aged image in model space plus what undoing it needs."""

    image: Tensor  # [B, 3, S, S]
    lower: list[Tensor]  # z_0..z_{L-2} (or eps), unchanged from the input
    top: Tensor  # z'_t [B, C_top, s, s]
    mu_source: Tensor  # mu'_s [B, C_top, s, s]
    rho_source: Tensor  # rho'_s [B, C_top, s, s]
    standardized: bool


class AgeFlow(nn.Module):
    """G (``flow``), T (``ictm``), the prior generator (``prior``) and D (``disc``, training only)."""

    def __init__(self, config: AgeFlowConfig) -> None:
        super().__init__()
        self.config = config
        c, s = config.top_channels, config.top_size
        self.flow = Glow(config)
        self.ictm = ICTM(c, config.ictm_flows, config.ictm_hidden, config.ictm_attention)
        self.prior = PriorGenerator(config.groups, c, s)
        self.disc = LatentDiscriminator(c * s * s, config.disc_hidden, config.groups)

    @torch.no_grad()
    def prepare_inference(self) -> None:
        """Build every 1x1 conv's W and W^-1 (float64) now, so no later eval pass inverts a matrix.

        Optional: eval passes build them lazily on first use after the weights change.
        """
        for module in self.modules():
            if isinstance(module, InvConv2dLU):
                module.prepare_inference()

    def condition(self, target: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Target group indices [B] (int64) -> (mu_t, rho_t), each [B, C_top, s, s] in ``dtype``."""
        onehot = F.one_hot(target, self.config.groups).to(dtype)  # [B, n]
        return self.prior(onehot)

    def translate(self, z_top: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(z_s [B, C_top, s, s], target [B]) -> (z'_t, mu'_s, rho'_s), each [B, C_top, s, s]."""
        mu_t, rho_t = self.condition(target, z_top.dtype)  # [B, C_top, s, s] each
        z_t, mu_s, rho_s, _ = self.ictm(z_top, mu_t, rho_t)
        return z_t, mu_s, rho_s

    def age(self, x: Tensor, target: Tensor, *, lower_latents: str = "raw") -> AgingResult:
        """Mode ``ictm``: x [B, 3, S, S] (model space) aged to ``target`` [B] (group indices)."""
        if lower_latents not in LOWER_LATENT_MODES:
            raise ValueError(f"lower_latents must be one of {LOWER_LATENT_MODES}, got {lower_latents!r}")
        standardize = lower_latents == "eps"
        latents = self.flow.encode(x, standardize=standardize)
        z_t, mu_s, rho_s = self.translate(latents.top, target)  # [B, C_top, s, s] each
        y = self.flow.decode(latents.lower, z_t, standardized=standardize)  # [B, 3, S, S]
        return AgingResult(y, latents.lower, z_t, mu_s, rho_s, standardize)

    def undo(self, y: Tensor, result: AgingResult) -> Tensor:
        """Un-age: re-encode the continuous y [B, 3, S, S], apply T^-1 with (mu'_s, rho'_s), decode with the
        same lower latents (docs/models/ageflow.md section 2). Returns x [B, 3, S, S] in model space."""
        z_t = self.flow.encode(y).top  # [B, C_top, s, s]
        z_s, _, _ = self.ictm.reverse(z_t, result.mu_source, result.rho_source)  # [B, C_top, s, s]
        return self.flow.decode(result.lower, z_s, standardized=result.standardized)  # [B, 3, S, S]

    def forward(self, x: Tensor, target: Tensor, lower_latents: str = "raw") -> Tensor:
        """x [B, 3, S, S] in model space, target [B] group indices -> aged y [B, 3, S, S] in model space."""
        return self.age(x, target, lower_latents=lower_latents).image


__all__ = [
    "ICTM",
    "LOWER_LATENT_MODES",
    "AgeFlow",
    "AgeFlowConfig",
    "AgingResult",
    "Glow",
    "GlowLatents",
    "LatentDiscriminator",
    "PriorGenerator",
    "postprocess_output",
    "quantize_input",
]
