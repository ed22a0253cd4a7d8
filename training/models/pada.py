"""PADA: Pluralistic Aging Diffusion Autoencoder (Li et al., ICCV 2023), on DiffAE ``ffhq256_autoenc``.

Design notes: docs/models/pada.md. Inference (section 1-2)::

    x_src [B,3,S,S] in [-1,1] --semantic encoder--> z_src [B,Z]
    prompt / reference --CLIP--> e_txt / e_img [.,D] --(+eps*s*eta | PAE mu + sigma*s*eta)--> e_age [B,D]
    e_age --mapper--> dz --gamma/beta--> z_age = gamma * (z_src - mu_src) / sigma_src + beta       Eq. (6)
    x_T [B,3,S,S] --T DDIM steps of the conditional UNet, condition z_age--> x0 [B,3,S,S] in [-1,1]

Module surface: :meth:`PADA.encode`, :meth:`PADA.text_embedding`, :meth:`PADA.image_embedding`,
:meth:`PADA.pae`, :meth:`PADA.modulate`, :meth:`PADA.invert`, :meth:`PADA.decode`. State-dict names: DiffAE's
under ``diffae.`` (its semantic encoder under ``diffae.encoder.``), then ``age_encoder.*``, ``modulation.*``,
``stats.{mean,std}``. CLIP is frozen, user-supplied and kept out of the state dict (:meth:`PADA.set_clip`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.clip_encoder import ClipEncoder, clip_config
from ..layers.ddim_schedule import DDIMSchedule
from ..layers.ddim_step import ddim_step
from ..layers.diffae import (
    AttentionBlock,
    EmbedSequential,
    EncoderHead,
    GroupNorm32,
    ResBlock,
    TimeEmbedding,
    zero_init_layers,
    zero_module,
)

# --- age groups and prompts (docs/models/pada.md section 2; FFHQ-AT) --------------------------------------------------
# Closed intervals in whole years (D11): 70 falls in 51-70; "70+" starts at 71.
AGE_GROUPS: tuple[tuple[float, float, str], ...] = (
    (0, 5, "0-5"),
    (6, 15, "6-15"),
    (16, 25, "16-25"),
    (26, 35, "26-35"),
    (36, 50, "36-50"),
    (51, 70, "51-70"),
    (71, math.inf, "70+"),
)
MAX_AGE = 120.0  # ages above this are refused as input mistakes
PROMPTS: dict[str, tuple[str, ...]] = {
    "female": (
        "a toddler girl's face",
        "woman's face in her tens",
        "woman's face in her twenties",
        "woman's face in her thirties",
        "woman's face in her forties",
        "woman's face in her sixties",
        "woman's face in her eighties",
    ),
    "male": (
        "a toddler boy's face",
        "man's face in his tens",
        "man's face in his twenties",
        "man's face in his thirties",
        "man's face in his forties",
        "man's face in his sixties",
        "man's face in his eighties",
    ),
}
GENDERS = ("female", "male", "neutral")


def age_group(age: float) -> int:
    """Index into AGE_GROUPS of an age in years (0 <= age <= MAX_AGE): the first group whose upper end >= age."""
    for index, (_, high, _) in enumerate(AGE_GROUPS):
        if age <= high:
            return index
    raise ValueError(f"age {age} is outside every group")


@dataclass(frozen=True)
class PADAConfig:
    """Sizes of PADA. ``paper()``: DiffAE ffhq256_autoenc + ViT-B/32 CLIP; ``tiny()``: every path, a few channels."""

    image_size: int = 256
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)  # UNet
    enc_channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4, 4)  # semantic encoder: one level deeper
    num_res_blocks: int = 2  # per level (decoder levels get one more)
    attention_resolutions: tuple[int, ...] = (16,)
    embed_channels: int = 512  # time embedding width
    z_channels: int = 512  # z_sem / z_age width (DiffAE enc_out_channels)
    dropout: float = 0.1  # DiffAE training dropout; inactive in eval
    clip: str = "vit_b32"  # CLIP preset for the random stand-in (training/layers/clip_encoder.clip_config)
    clip_dim: int = 512  # D, CLIP projection_dim
    hidden: int = 512  # PAE backbone and mapper hidden width (D5, D6)
    text_noise: float = 0.001  # epsilon of the text branch, e_age = e_txt + eps * s * eta [P section 4]
    steps: int = 25  # DDIM steps

    @classmethod
    def paper(cls) -> PADAConfig:
        return cls()

    @classmethod
    def tiny(cls) -> PADAConfig:
        return cls(
            image_size=32,
            model_channels=32,
            channel_mult=(1, 2),
            enc_channel_mult=(1, 2, 2),
            num_res_blocks=2,
            attention_resolutions=(16,),
            embed_channels=32,
            z_channels=32,
            clip="tiny",
            clip_dim=16,
            hidden=32,
            steps=3,
        )


# --- DiffAE ------------------------------------------------------------------------------------------------------
class SemanticEncoder(nn.Module):
    """DiffAE BeatGANsEncoderModel (use_time_condition False): x [B,3,S,S] in [-1,1] -> z_sem [B,Z], unnormalised.

    Conv3x3, then per level ``num_res_blocks`` plain ResBlocks (+ attention at ``attention_resolutions``) and a
    down ResBlock between levels; middle ResBlock, attention, ResBlock; head GN -> SiLU -> pool -> conv1x1.
    """

    def __init__(self, cfg: PADAConfig) -> None:
        super().__init__()
        ch = cfg.enc_channel_mult[0] * cfg.model_channels
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(3, ch, 3, padding=1))])
        res = cfg.image_size
        for level, mult in enumerate(cfg.enc_channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, mult * cfg.model_channels)]
                ch = mult * cfg.model_channels
                if res in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch))
                self.input_blocks.append(EmbedSequential(*layers))
            if level != len(cfg.enc_channel_mult) - 1:
                self.input_blocks.append(EmbedSequential(ResBlock(ch, ch, down=True)))
                res //= 2
        self.middle_block = EmbedSequential(ResBlock(ch), AttentionBlock(ch), ResBlock(ch))
        self.out = EncoderHead(ch, cfg.z_channels)

    def forward(self, x: Tensor) -> Tensor:  # [B, 3, S, S] -> [B, Z]
        h = x
        for block in self.input_blocks:
            h = block(h)  # [B, C, H, W]
        h = self.middle_block(h)  # [B, C, S/2^L, S/2^L]
        return self.out(h)  # [B, Z]


class DiffAE(nn.Module):
    """DiffAE BeatGANsAutoencModel: the conditional UNet predicting eps, and its semantic ``encoder``.

    Every ResBlock (42 in the paper config) is conditioned on the time embedding and on ``cond`` (z_sem for
    DiffAE, z_age for PADA). Output blocks concatenate the lateral skips last-in, first-out.
    """

    def __init__(self, cfg: PADAConfig) -> None:
        super().__init__()
        mc, emb, z = cfg.model_channels, cfg.embed_channels, cfg.z_channels

        def resblock(cin: int, cout: int, **kw: Any) -> ResBlock:
            return ResBlock(cin, cout, emb_channels=emb, cond_channels=z, dropout=cfg.dropout, **kw)

        self.time_embed = TimeEmbedding(mc, emb)
        ch = cfg.channel_mult[0] * mc
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(3, ch, 3, padding=1))])
        laterals = [ch]
        res = cfg.image_size
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [resblock(ch, mult * mc)]
                ch = mult * mc
                if res in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch))
                self.input_blocks.append(EmbedSequential(*layers))
                laterals.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(EmbedSequential(resblock(ch, ch, down=True)))
                laterals.append(ch)
                res //= 2
        self.middle_block = EmbedSequential(resblock(ch, ch), AttentionBlock(ch), resblock(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [resblock(ch + laterals.pop(), mult * mc)]
                ch = mult * mc
                if res in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(resblock(ch, ch, up=True))
                    res *= 2
                self.output_blocks.append(EmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), zero_module(nn.Conv2d(ch, 3, 3, padding=1)))
        self.encoder = SemanticEncoder(cfg)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """eps prediction. x: [B,3,S,S]; t: [B] original timesteps (0..999); cond: [B,Z]. Returns [B,3,S,S]."""
        emb = self.time_embed(t)  # [B, E]
        cond = cond.to(emb.dtype)  # [B, Z]
        skips = []
        h = x.to(emb.dtype)  # [B, 3, S, S]
        for block in self.input_blocks:
            h = block(h, emb, cond)  # [B, C, H, W]
            skips.append(h)
        h = self.middle_block(h, emb, cond)  # [B, C, H, W]
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, cond)  # [B, C, H, W]
        return self.out(h)  # [B, 3, S, S]


# --- PADA's own parts ---------------------------------------------------------------------------------------------
class Linear32(nn.Linear):
    """nn.Linear that always computes in float32 (PADA's layers run in fp32 even in a half-precision engine)."""

    def forward(self, x: Tensor) -> Tensor:  # [N, in] -> [N, out]
        bias = self.bias.float() if self.bias is not None else None
        return F.linear(x.float(), self.weight.float(), bias)  # [N, out]


class AgeEncoder(nn.Module):
    """Probabilistic Aging Embedding, image branch [P Eq. (5); D5]: e_img [N,D] -> (mu, logvar) [N,D] each.

    h = SiLU(L2(SiLU(L1(e)))), mu = L_mu(h), logvar = L_var(h). ``logvar`` starts at zero weight and bias
    2 ln(eps) (D7), so sigma = eps: image samples start at the text branch's intensity.
    """

    def __init__(self, clip_dim: int, hidden: int, text_noise: float) -> None:
        super().__init__()
        self.backbone = nn.Sequential(Linear32(clip_dim, hidden), nn.SiLU(), Linear32(hidden, hidden), nn.SiLU())
        self.mu = Linear32(hidden, clip_dim)
        self.logvar = Linear32(hidden, clip_dim)
        self.text_noise = text_noise
        self.reset_logvar()

    def reset_logvar(self) -> None:
        nn.init.zeros_(self.logvar.weight)
        nn.init.constant_(self.logvar.bias, 2.0 * math.log(self.text_noise))

    def forward(self, e_img: Tensor) -> tuple[Tensor, Tensor]:  # [N, D] -> ([N, D], [N, D])
        h = self.backbone(e_img)  # [N, H]
        return self.mu(h), self.logvar(h)  # [N, D], [N, D]


class LatentStats(nn.Module):
    """mu_src / sigma_src: per-channel mean and std of z_sem over FFHQ (DiffAE latent.pkl; D4). Buffers."""

    def __init__(self, z_channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(z_channels))  # [Z]
        self.register_buffer("std", torch.ones(z_channels))  # [Z]


class Modulation(nn.Module):
    """Mapper and adaptive modulation [P section 3.2.2, Eq. (6); D6, D7].

    dz = M2(SiLU(M1(e_age))); gamma = G2(SiLU(G1(dz))); beta = B2(SiLU(B1(dz)));
    z_age = gamma * (z_src - mu_src) / sigma_src + beta. G2 and B2 start at zero weight with biases sigma_src and
    mu_src (:meth:`reset_identity`), so z_age = z_src until trained.
    """

    def __init__(self, clip_dim: int, hidden: int, z_channels: int) -> None:
        super().__init__()
        self.mapper = nn.Sequential(Linear32(clip_dim, hidden), nn.SiLU(), Linear32(hidden, z_channels))
        self.gamma = nn.Sequential(Linear32(z_channels, z_channels), nn.SiLU(), Linear32(z_channels, z_channels))
        self.beta = nn.Sequential(Linear32(z_channels, z_channels), nn.SiLU(), Linear32(z_channels, z_channels))
        self.reset_identity(torch.zeros(z_channels), torch.ones(z_channels))

    @torch.no_grad()
    def reset_identity(self, mean: Tensor, std: Tensor) -> None:
        """D7: zero G2/B2 weights, biases std / mean, so that z_age = z_src."""
        nn.init.zeros_(self.gamma[2].weight)
        nn.init.zeros_(self.beta[2].weight)
        self.gamma[2].bias.copy_(std)
        self.beta[2].bias.copy_(mean)

    def forward(self, e_age: Tensor, z_src: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """e_age [N,D], z_src [N,Z], mean/std [Z] or [N,1] -> z_age [N,Z] float32."""
        dz = self.mapper(e_age)  # [N, Z]
        gamma = self.gamma(dz)  # [N, Z]
        beta = self.beta(dz)  # [N, Z]
        return gamma * (z_src.float() - mean.float()) / std.float() + beta  # [N, Z]


def pluralistic_noise(
    seed: int, num_samples: int, image_shape: Sequence[int], clip_dim: int, vary: str = "both"
) -> tuple[Tensor, Tensor]:
    """Per-sample noise of D10: sample k uses s_k = seed + k; x_T from a CPU generator seeded 2*s_k and eta from
    one seeded 2*s_k + 1, both float32. ``vary="low"`` holds eta at s_0 for every sample (only x_T varies),
    ``vary="high"`` holds x_T at s_0 (only eta varies), ``"both"`` varies both.

    Returns:
        (x_T Tensor[K, *image_shape], eta Tensor[K, D]) on the CPU; the same seed gives the same noise at any
        batch size and, once moved, on any device.
    """
    if vary not in ("both", "low", "high"):
        raise ValueError(f"vary must be 'both', 'low' or 'high', got {vary!r}")
    xs, etas = [], []
    for k in range(num_samples):
        s_x = seed if vary == "high" else seed + k
        s_e = seed if vary == "low" else seed + k
        gen_x = torch.Generator().manual_seed(2 * s_x)
        gen_e = torch.Generator().manual_seed(2 * s_e + 1)
        xs.append(torch.randn(tuple(image_shape), generator=gen_x))  # [3, S, S]
        etas.append(torch.randn(clip_dim, generator=gen_e))  # [D]
    return torch.stack(xs), torch.stack(etas)  # [K, 3, S, S], [K, D]


class PADA(nn.Module):
    """PADA: DiffAE + CLIP-guided age encoder + adaptive modulation. See the module docstring."""

    def __init__(self, config: PADAConfig) -> None:
        super().__init__()
        self.config = config
        self.diffae = DiffAE(config)
        self.age_encoder = AgeEncoder(config.clip_dim, config.hidden, config.text_noise)
        self.modulation = Modulation(config.clip_dim, config.hidden, config.z_channels)
        self.stats = LatentStats(config.z_channels)
        # CLIP is frozen, user-supplied and not part of PADA's weights: kept outside _modules so it stays out of
        # state_dict(), parameters() and precision conversion; moved to the input's device when used.
        self.__dict__["_clip"] = None
        self.__dict__["_text_cache"] = {}

    # --- helpers ---------------------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        """The UNet's parameter dtype (the precision the engine runs the networks in)."""
        return self.diffae.out[2].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.diffae.out[2].weight.device

    def zero_init_layers(self) -> list[nn.Module]:
        """Layers DiffAE zero-initialises: ResBlock out convs, attention proj_out (UNet and encoder), UNet out conv."""
        return [*zero_init_layers(self.diffae), self.diffae.out[2]]

    @torch.no_grad()
    def set_stats(self, mean: Tensor, std: Tensor, reset_modulation: bool = True) -> None:
        """Set mu_src / sigma_src ([Z] each); with ``reset_modulation`` also re-apply the identity init (D7)."""
        self.stats.mean.copy_(mean.reshape(-1))
        self.stats.std.copy_(std.reshape(-1))
        if reset_modulation:
            self.modulation.reset_identity(self.stats.mean, self.stats.std)

    # --- CLIP ------------------------------------------------------------------------------------------------
    def set_clip(self, clip: ClipEncoder) -> None:
        """Attach a CLIP whose projection width equals config.clip_dim (PADA's parts are sized by it)."""
        if clip.projection_dim != self.config.clip_dim:
            raise ValueError(
                f"this PADA was built for CLIP embeddings of width {self.config.clip_dim}, the CLIP given has "
                f"projection_dim {clip.projection_dim}"
            )
        self.__dict__["_clip"] = clip
        self._text_cache.clear()

    @property
    def clip(self) -> ClipEncoder:
        """The attached CLIP; without one, a random CLIP of ``config.clip`` (with a warning: it is meaningless)."""
        if self._clip is None:
            warnings.warn(
                "PADA has no CLIP attached: using a random CLIP, so text and reference embeddings are meaningless. "
                "Pass a Hugging Face CLIP directory (clip=DIR) for real results.",
                UserWarning,
                stacklevel=3,
            )
            self.set_clip(ClipEncoder.random(clip_config(self.config.clip)))
        clip = self._clip
        if clip.mean.device != self.device:
            clip.to(self.device)
            self._text_cache.clear()
        return clip

    @torch.no_grad()
    def text_embedding(self, prompts: Sequence[str]) -> Tensor:
        """L2-normalised CLIP text embeddings e_txt: N prompts -> Tensor[N, D] float32. Cached per prompt."""
        clip = self.clip
        missing = sorted({p for p in prompts if p not in self._text_cache})
        if missing:
            if len(self._text_cache) > 256:
                self._text_cache.clear()
            for prompt, emb in zip(missing, clip.encode_text(missing), strict=True):  # emb [D]
                self._text_cache[prompt] = emb
        return torch.stack([self._text_cache[p] for p in prompts])  # [N, D]

    def image_embedding(self, x_ref: Tensor) -> Tensor:
        """L2-normalised CLIP image embeddings e_img: Tensor[N,3,H,W] in [-1,1] -> Tensor[N,D] float32."""
        return self.clip.encode_image(x_ref.to(self.device))  # [N, D]

    # --- PADA ------------------------------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """Semantic encoder: x [B,3,S,S] in [-1,1] -> z_src [B,Z] float32."""
        return self.diffae.encoder(x.to(self.dtype)).float()  # [B, Z]

    def pae(self, e_img: Tensor) -> tuple[Tensor, Tensor]:
        """Probabilistic aging embedding of a reference: e_img [N,D] -> (mu, logvar) [N,D] float32."""
        return self.age_encoder(e_img)

    def modulate(self, e_age: Tensor, z_src: Tensor, stats: str = "dataset") -> Tensor:
        """Eq. (6): z_age [N,Z] from e_age [N,D] and z_src [N,Z]. ``stats="instance"`` uses each z_src's own
        mean and std over its Z channels instead of the dataset statistics (D4)."""
        if stats == "dataset":
            mean, std = self.stats.mean, self.stats.std  # [Z], [Z]
        elif stats == "instance":
            mean = z_src.float().mean(dim=1, keepdim=True)  # [N, 1]
            std = z_src.float().std(dim=1, keepdim=True)  # [N, 1]
        else:
            raise ValueError(f"stats must be 'dataset' or 'instance', got {stats!r}")
        return self.modulation(e_age, z_src, mean, std)  # [N, Z]

    def _eps(self, x: Tensor, t: int, cond: Tensor) -> Tensor:
        tt = torch.full((x.shape[0],), float(t), device=x.device)  # [N]
        return self.diffae(x.to(self.dtype), tt, cond)  # [N, 3, S, S]

    def decode(self, x_T: Tensor, z_age: Tensor, steps: int | None = None) -> Tensor:
        """Deterministic DDIM (eta = 0, clipped x0) from x_T at t = S_{T-1}: x_T [N,3,S,S], z_age [N,Z] ->
        x0 [N,3,S,S] float32 in [-1,1]. x_t and the DDIM arithmetic stay float32 (D24)."""
        schedule = DDIMSchedule.diffae(steps or self.config.steps)
        x = x_T.float()  # [N, 3, S, S]
        for t, abar, abar_prev in schedule.sampling_pairs():
            x = ddim_step(x, self._eps(x, t, z_age), abar, abar_prev, clip=True)  # [N, 3, S, S]
        return x

    def invert(self, x: Tensor, z_src: Tensor, steps: int | None = None) -> Tensor:
        """DiffAE stochastic encoding: deterministic DDIM inversion of x [N,3,S,S] in [-1,1] conditioned on
        z_src [N,Z] over the same respaced timesteps -> x_T [N,3,S,S] float32."""
        schedule = DDIMSchedule.diffae(steps or self.config.steps)
        h = x.float()  # [N, 3, S, S]
        for t, abar, abar_next in schedule.inversion_pairs():
            h = ddim_step(h, self._eps(h, t, z_src), abar, abar_next, clip=True)  # [N, 3, S, S]
        return h

    def forward(self, x: Tensor, e_age: Tensor, x_T: Tensor, steps: int | None = None) -> Tensor:
        """Age x [B,3,S,S] in [-1,1] towards e_age [B,D] from the start noise x_T [B,3,S,S]: -> [B,3,S,S]."""
        z_src = self.encode(x)  # [B, Z]
        return self.decode(x_T, self.modulate(e_age, z_src), steps)  # [B, 3, S, S]


__all__ = [
    "AGE_GROUPS",
    "GENDERS",
    "MAX_AGE",
    "PADA",
    "PROMPTS",
    "AgeEncoder",
    "DiffAE",
    "LatentStats",
    "Modulation",
    "PADAConfig",
    "SemanticEncoder",
    "age_group",
    "pluralistic_noise",
]
