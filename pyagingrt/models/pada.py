"""PADA adapter: text- or reference-guided, pluralistic aging with a DiffAE decoder (docs/models/pada.md).

Target ages map to the 7 FFHQ-AT groups by closed intervals in whole years (D11):

=====  ==========  ===============================================================
group  ages        prompt (female / male)
=====  ==========  ===============================================================
0      0-5         a toddler girl's face / a toddler boy's face
1      6-15        woman's face in her tens / man's face in his tens
2      16-25       ... twenties
3      26-35       ... thirties
4      36-50       ... forties
5      51-70       ... sixties (70 falls here)
6      71-120      ... eighties ("70+")
=====  ==========  ===============================================================

Ages outside [0, 120] raise InputError. ``gender="neutral"`` (the default) uses the renormalised mean of the
female and male prompt embeddings. ``text=`` replaces the age prompt by free text; ``reference=`` (an aligned
face) replaces both, through the probabilistic aging embedding. The target age is then not used.

Randomness (D10): the base seed is ``int(torch.randint(2**62, (1,), generator=generator))`` (the global torch
RNG when no generator is given); sample k uses s_k = seed + k, x_T from a CPU generator seeded 2*s_k and eta
from one seeded 2*s_k + 1. The noise therefore does not depend on the batch size, the image's place in the
batch, or the device.

Random weights (``build``): DiffAE zero-initialises every ResBlock's last conv, every attention ``proj_out``
and the UNet ``out`` conv, which would make a random UNet predict eps = 0 whatever its input. ``build``
re-initialises them with PyTorch's default conv init; it also gives the weights of the gamma/beta output layers
and of the PAE log-variance head PyTorch's default linear init (their biases keep the D7 values), so the target
age changes a random-weight engine's output. CLIP is attached by ``attach`` (``clip=`` a Hugging Face
directory); without one, a random CLIP of the config's size is used, with a warning.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import AgingError, CheckpointError, InputError, RandomWeightsWarning
from .base import AgeGroup, ModelAdapter, OptionSpec

_X_T_MODES = ("random", "invert")
_VARY = ("both", "low", "high")
_STATS = ("dataset", "instance")
_MAX_STEPS = 1000  # DiffAE's training timesteps


def _pada() -> Any:
    from ..training.models import pada

    return pada


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class PADAAdapter(ModelAdapter):
    """Runs :class:`pyagingrt.training.models.pada.PADA`; see the module docstring for ages, prompts and seeds."""

    name: ClassVar[str] = "pada"
    title: ClassVar[str] = "PADA (Li et al., ICCV 2023)"
    config_names: ClassVar[tuple[str, ...]] = ("paper", "tiny")
    stochastic: ClassVar[bool] = True
    options: ClassVar[tuple[OptionSpec, ...]] = (
        OptionSpec("gender", "neutral", "female, male or neutral (one, or one per image): picks the age prompt"),
        OptionSpec("text", None, 'free-text target (one, or one per image), e.g. "man\'s face in his sixties"'),
        OptionSpec("reference", None, "reference face Tensor[3,H,W] or [B,3,H,W] in [0,1]; replaces age and text"),
        OptionSpec("num_samples", 1, "K samples per image; the output is [B,K,3,S,S] when K > 1"),
        OptionSpec("vary", "both", "both, low (only x_T varies between samples) or high (only the embedding)"),
        OptionSpec("s", 1.0, "diversity scale of the aging embedding (0: its mean)"),
        OptionSpec("steps", None, "DDIM steps (default: the config's, 25 for paper)"),
        OptionSpec("x_T", "random", "random (the paper) or invert (DDIM inversion of the input; 2x cost)"),
        OptionSpec("invert_steps", None, "DDIM steps of the inversion (default: steps)"),
        OptionSpec("stats", "dataset", "z_sem statistics of Eq. (6): dataset (latent.pkl) or instance"),
    )
    load_options: ClassVar[tuple[OptionSpec, ...]] = (
        OptionSpec("clip", None, "Hugging Face CLIP directory (ViT-B/32 for paper); none: a random CLIP, meaningless"),
        OptionSpec(
            "latent",
            None,
            "DiffAE latent.pkl / latent.ckpt (z_sem statistics) when converting; default: beside the .ckpt",
        ),
    )

    # --- configs -------------------------------------------------------------------------------------------
    def make_config(self, name: str) -> Any:
        cfg = _pada().PADAConfig
        if name == "paper":
            return cfg.paper()
        if name == "tiny":
            return cfg.tiny()
        raise InputError(f"pada has no config {name!r}; choose one of: {', '.join(self.config_names)}")

    def config_from_dict(self, data: Mapping[str, Any]) -> Any:
        cfg_cls = _pada().PADAConfig
        fields = {f.name: f for f in dataclasses.fields(cfg_cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise InputError(f"pada config has unknown field(s) {', '.join(unknown)}; known: {', '.join(fields)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cfg_cls(**values)

    # --- modules -------------------------------------------------------------------------------------------
    def build(self, config: Any) -> nn.Module:
        """PADA with random weights, the zero-initialised layers re-randomised (see the module docstring)."""
        module = _pada().PADA(config)
        for layer in module.zero_init_layers():
            layer.reset_parameters()
        for layer in (module.modulation.gamma[2], module.modulation.beta[2], module.age_encoder.logvar):
            bias = layer.bias.detach().clone()
            layer.reset_parameters()
            with torch.no_grad():
                layer.bias.copy_(bias)
        return module.eval()

    def attach(self, module: nn.Module, config: Any, **load_options: Any) -> None:
        """Attach CLIP: ``clip=DIR`` loads a Hugging Face directory offline; none gives a random CLIP (warned)."""
        unknown = sorted(set(load_options) - {o.name for o in self.load_options})
        if unknown:
            raise InputError(f"pada does not take load option(s) {', '.join(unknown)}; allowed: clip, latent")
        directory = load_options.get("clip")
        try:
            from ..training.layers.clip_encoder import ClipEncoder, clip_config

            if directory is None:
                warnings.warn(
                    "pada: no CLIP directory given (clip=DIR), so a random CLIP is used and text and reference "
                    "targets are meaningless. Pass a Hugging Face CLIP directory for real results.",
                    RandomWeightsWarning,
                    stacklevel=2,
                )
                clip = ClipEncoder.random(clip_config(config.clip))
            else:
                clip = ClipEncoder.from_pretrained(directory)
        except ImportError as exc:
            raise AgingError(
                f"PADA needs the transformers package for CLIP ({exc}); install it with pip install 'pyagingrt[clip]'"
            ) from exc
        except (OSError, ValueError) as exc:  # FileNotFoundError names the missing file
            raise CheckpointError(
                f"cannot load CLIP from {directory}: {exc}. Give a Hugging Face CLIP directory (config.json, "
                "model.safetensors, vocab.json, merges.txt), e.g. a save_pretrained copy of "
                "openai/clip-vit-base-patch32."
            ) from exc
        if clip.projection_dim != config.clip_dim:
            raise CheckpointError(
                f"the CLIP in {directory} has projection_dim {clip.projection_dim}, but this PADA was built for "
                f"{config.clip_dim}-dimensional CLIP embeddings; give the CLIP it was trained with "
                f"({'ViT-B/32' if config.clip_dim == 512 else 'projection_dim ' + str(config.clip_dim)})."
            )
        module.set_clip(clip.to(module.device))

    def input_size(self, config: Any) -> int:
        return int(config.image_size)

    def age_groups(self, config: Any) -> tuple[AgeGroup, ...]:
        pada = _pada()
        groups = []
        for i, (low, high, label) in enumerate(pada.AGE_GROUPS):
            groups.append(AgeGroup(i, float(low), pada.MAX_AGE if math.isinf(high) else float(high), label))
        return tuple(groups)

    def validate_ages(self, config: Any, ages: Tensor) -> Tensor:
        """Ages in years (float64 [B]) -> group indices (int64 [B]); InputError outside [0, 120]."""
        pada = _pada()
        ages = torch.as_tensor(ages, dtype=torch.float64).reshape(-1)
        bad = ~torch.isfinite(ages) | (ages < 0) | (ages > pada.MAX_AGE)
        if bool(bad.any()):
            raise InputError(
                f"PADA target ages must lie in [0, {pada.MAX_AGE:g}] years; got {ages[bad].tolist()}. "
                "Ages map to the groups 0-5, 6-15, 16-25, 26-35, 36-50, 51-70, 70+."
            )
        return torch.tensor([pada.age_group(float(a)) for a in ages], dtype=torch.long)

    # --- options -------------------------------------------------------------------------------------------
    def validate_options(self, config: Any, batch: int, options: dict[str, Any]) -> dict[str, Any]:
        pada = _pada()
        opts = super().validate_options(config, batch, options)
        opts["gender"] = self._per_image(opts["gender"], "gender", batch)
        for g in opts["gender"]:
            if g not in pada.GENDERS:
                raise InputError(f"pada option gender must be one of {', '.join(pada.GENDERS)}; got {g!r}")
        if opts["text"] is not None:
            opts["text"] = self._per_image(opts["text"], "text", batch)
            if any(not isinstance(t, str) or not t.strip() for t in opts["text"]):
                raise InputError("pada option text must be non-empty strings (one, or one per image)")
        if opts["reference"] is not None:
            opts["reference"] = self._check_reference(opts["reference"], batch)
        for name in ("num_samples", "steps", "invert_steps"):
            value = opts[name]
            if value is None and name != "num_samples":
                continue
            limit = _MAX_STEPS if name != "num_samples" else 1024
            if not _is_int(value) or not 1 <= value <= limit:
                raise InputError(f"pada option {name} must be an integer in [1, {limit}]; got {value!r}")
        opts["steps"] = opts["steps"] or config.steps
        opts["invert_steps"] = opts["invert_steps"] or opts["steps"]
        for name, allowed in (("vary", _VARY), ("x_T", _X_T_MODES), ("stats", _STATS)):
            if opts[name] not in allowed:
                raise InputError(f"pada option {name} must be one of {', '.join(allowed)}; got {opts[name]!r}")
        s = opts["s"]
        if isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s) or s < 0:
            raise InputError(f"pada option s (diversity scale) must be a finite number >= 0; got {s!r}")
        opts["s"] = float(s)
        return opts

    @staticmethod
    def _per_image(value: Any, name: str, batch: int) -> list[Any]:
        if isinstance(value, str):
            return [value] * batch
        if isinstance(value, Sequence) and len(value) == batch:
            return list(value)
        raise InputError(f"pada option {name} must be one string or a list of {batch} (one per image); got {value!r}")

    @staticmethod
    def _check_reference(ref: Any, batch: int) -> Tensor:
        if not isinstance(ref, Tensor) or not ref.is_floating_point():
            raise InputError(f"pada option reference must be a float Tensor[3,H,W] or [B,3,H,W]; got {type(ref)}")
        if ref.dim() == 3:
            ref = ref[None]  # [1, 3, H, W]
        if ref.dim() != 4 or ref.shape[1] != 3 or ref.shape[0] not in (1, batch):
            raise InputError(
                f"pada option reference must have shape [3,H,W], [1,3,H,W] or [{batch},3,H,W] (RGB); "
                f"got {tuple(ref.shape)}"
            )
        if not bool(torch.isfinite(ref).all()) or ref.min() < 0 or ref.max() > 1:
            raise InputError("pada option reference must hold finite values in [0, 1] (an aligned RGB face)")
        return ref

    # --- running -------------------------------------------------------------------------------------------
    def ensure_clip(self, module: nn.Module) -> None:
        """Attach the random CLIP (with its warning) if none is attached yet."""
        if module._clip is None:
            self.attach(module, module.config)

    def prompts(self, groups: Tensor, genders: Sequence[str]) -> list[list[str]]:
        """The prompt(s) of each image: one, or the female and male prompts for ``neutral`` (D11)."""
        table = _pada().PROMPTS
        out = []
        for group, gender in zip(groups.tolist(), genders, strict=True):
            names = ("female", "male") if gender == "neutral" else (gender,)
            out.append([table[name][group] for name in names])
        return out

    def text_targets(self, module: nn.Module, groups: Tensor, options: dict[str, Any]) -> Tensor:
        """e_txt per image [B, D]: the free text, or the group prompt (neutral: renormalised mean of both)."""
        if options["text"] is not None:
            return module.text_embedding(options["text"])  # [B, D]
        per_image = self.prompts(groups.cpu(), options["gender"])
        embs = []
        for prompts in per_image:
            e = module.text_embedding(prompts)  # [1 or 2, D], unit-norm rows
            embs.append(e[0] if len(prompts) == 1 else F.normalize(e.mean(dim=0), dim=0))  # [D]
        return torch.stack(embs)  # [B, D]

    @staticmethod
    def base_seed(generator: torch.Generator | None) -> int:
        """The base seed s of D10, drawn from ``generator`` (or the global torch RNG when None)."""
        return int(torch.randint(2**62, (1,), generator=generator))

    def run(
        self,
        module: nn.Module,
        images: Tensor,
        targets: Tensor,
        generator: torch.Generator | None,
        options: dict[str, Any],
    ) -> Tensor:
        """Age images [B,3,S,S] in [0,1] -> [B,3,S,S] (K = 1) or [B,K,3,S,S] float32 in [0,1]."""
        pada = _pada()
        cfg = module.config
        batch, k = images.shape[0], options["num_samples"]
        device = images.device
        self.ensure_clip(module)
        x_rand, eta = pada.pluralistic_noise(
            self.base_seed(generator), k, images.shape[1:], cfg.clip_dim, options["vary"]
        )  # [K, 3, S, S], [K, D] on CPU
        eta = eta.to(device).repeat(batch, 1)  # [B*K, D], row b*K + k is sample k
        with torch.no_grad():
            x = images.float().mul(2.0).sub(1.0).to(module.dtype)  # [B, 3, S, S] in [-1, 1]
            z_src = module.encode(x)  # [B, Z]
            if options["reference"] is not None:
                ref = options["reference"].to(device).float() * 2.0 - 1.0  # [1 or B, 3, H, W]
                mu, logvar = module.pae(module.image_embedding(ref))  # [1 or B, D] each
                mu = mu.expand(batch, -1).repeat_interleave(k, dim=0)  # [B*K, D]
                sigma = torch.exp(logvar / 2).expand(batch, -1).repeat_interleave(k, dim=0)  # [B*K, D]
                e_age = mu + sigma * options["s"] * eta  # [B*K, D], Eq. (5) reparameterised
            else:
                e_txt = self.text_targets(module, targets, options).repeat_interleave(k, dim=0)  # [B*K, D]
                e_age = e_txt + cfg.text_noise * options["s"] * eta  # [B*K, D]
            z_age = module.modulate(e_age, z_src.repeat_interleave(k, dim=0), options["stats"])  # [B*K, Z]
            if options["x_T"] == "invert":
                x_T = module.invert(x, z_src, options["invert_steps"]).repeat_interleave(k, dim=0)  # [B*K,3,S,S]
            else:
                x_T = x_rand.to(device).repeat(batch, 1, 1, 1)  # [B*K, 3, S, S]
            x0 = module.decode(x_T, z_age, options["steps"])  # [B*K, 3, S, S] in [-1, 1]
        out = ((x0.float() + 1.0) / 2.0).clamp(0.0, 1.0)  # [B*K, 3, S, S]
        return out.reshape(batch, k, *out.shape[1:]) if k > 1 else out  # [B, K, 3, S, S] or [B, 3, S, S]

    # --- checkpoints ---------------------------------------------------------------------------------------
    def convert_official(
        self, path: Path, config_name: str | None = None, **load_options: Any
    ) -> tuple[Any, dict[str, Tensor]]:
        """DiffAE ``ffhq256_autoenc/last.ckpt`` (+ ``latent.pkl`` or ``latent.ckpt``, default: beside it) -> PADA
        state dict.

        PADA's own layers get the identity init (D7), so the result decodes like DiffAE autoencoding.
        """
        from ..checkpoints.pada import convert_diffae_checkpoint

        config = self.make_config(config_name or "paper")
        state_dict, _info = convert_diffae_checkpoint(path, config, load_options.get("latent"))
        return config, state_dict

    # --- information ---------------------------------------------------------------------------------------
    def flops_per_image(self, module: nn.Module, config: Any) -> float:
        """Semantic encoder once + ``config.steps`` UNet evaluations (x_T random), counted on the meta device.
        CLIP (user-supplied; prompt embeddings are cached) and PADA's MLPs (< 0.01 GFLOP) are not counted."""
        from torch.utils.flop_counter import FlopCounterMode

        size = self.input_size(config)
        with torch.device("meta"):
            meta = _pada().PADA(config)
            x = torch.zeros(1, 3, size, size)
            with FlopCounterMode(display=False) as enc_counter, torch.no_grad():
                z = meta.encode(x)
            with FlopCounterMode(display=False) as unet_counter, torch.no_grad():
                meta.diffae(x, torch.zeros(1), z)
        return float(enc_counter.get_total_flops() + config.steps * unet_counter.get_total_flops())


__all__ = ["PADAAdapter"]
