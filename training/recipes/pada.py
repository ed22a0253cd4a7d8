"""PADA training in two stages (docs/training-ageflow-pada.md, "PADA").

``--stage diffae``: DiffAE itself, for a user without the official ``ffhq256_autoenc`` weights. The semantic
encoder and the conditional UNet learn together with DiffAE's objective: t uniform over the 1000 training
steps, x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) n, loss = mean (UNet(x_t, t, Enc(x_0)) - n)^2; Adam, gradient
norm clipped at 1, an EMA copy that the checkpoint holds. Every checkpoint also carries the z_sem statistics
(``stats.mean`` / ``stats.std``: per-channel mean and std of the EMA encoder's z_sem over the data set, up to
``train.stats_images`` images), DiffAE's ``latent.pkl`` in the project's format; PADA's modulation starts as the
identity relative to them.

``--stage aging``: the age encoder (PAE) and the mapper + adaptive modulation, on a frozen DiffAE
(``files.diffae``: a ``--stage diffae`` checkpoint or the official ``last.ckpt``, with ``files.latent``) and a
frozen CLIP (``files.clip``, a Hugging Face directory), judged by a frozen DEX (``files.dex``) and ArcFace
IR-SE50 (``files.arcface``). A judge that is not given stops the run with a message naming the setting;
nothing is ever replaced by random weights. One iteration: with probability ``recon_prob`` the whole batch is a
reconstruction batch (reference = source); otherwise each reference is drawn from a uniformly chosen age
group. Each sample takes the image branch (mu + sigma eta of the reference's CLIP embedding) or, with
probability 1 - ``image_branch_prob``, the text branch (the reference's label prompt + eps eta). t is uniform
over the inference timesteps; the frozen UNet's x0 predictions under z_src and z_age feed Eq. (12):
L = L_age + 0.6 L_clip + 0.01 L_tKL + 0.2 L_id + 0.01 L_norm + 0.1 L_rec.

The data sets' ``gender`` field picks the label prompt: 1 = male, 0 = female.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from pyagingrt.models.pada import PADAAdapter

from ..errors import TrainingError
from ..layers.ddim_schedule import DDIMSchedule, linear_alpha_bars
from ..models.pada import AGE_GROUPS, PADA, PROMPTS, age_group
from ..recipe import InferenceCheckpoint, Recipe, TrainContext, register_recipe

DIFFAE_TRAIN: dict[str, Any] = {
    "lr": 1e-4,
    "betas": [0.9, 0.999],
    "ema_decay": 0.9999,
    "grad_clip": 1.0,  # global gradient norm
    "stats_images": 20000,  # images behind the z_sem statistics of each checkpoint
}
AGING_TRAIN: dict[str, Any] = {
    "lr": 1e-4,
    "betas": [0.9, 0.999],
    "recon_prob": 0.167,  # share of reconstruction batches (reference = source)
    "image_branch_prob": 0.5,  # share of samples conditioned through the reference's PAE (else text)
    "margin": 0.15,  # m of the age triplet, Eq. (8)
    "weights": {"age": 1.0, "clip": 0.6, "kl": 0.01, "id": 0.2, "norm": 0.01, "rec": 0.1},  # Eq. (12)
    "norm_on": "z_age",  # L_norm on z_age itself (the paper's Eq. 10) or on "delta" = z_age - z_src
}
AGING_FILES = {"diffae": None, "latent": None, "clip": None, "dex": None, "arcface": None}
FILE_HELP = {
    "diffae": "the DiffAE weights (the final.safetensors of --stage diffae, or DiffAE's ffhq256_autoenc last.ckpt)",
    "clip": "the CLIP it was built for, as a Hugging Face directory (e.g. a save_pretrained copy of "
    "openai/clip-vit-base-patch32)",
    "dex": "the DEX VGG-16 age classifier weights (IMDB-WIKI, keys conv1_1 ... fc8_101) that judge L_age",
    "arcface": "the ArcFace IR-SE50 weights (pSp's model_ir_se50.pth) that judge L_id",
}


def _required(files: dict[str, Any], key: str) -> Path:
    value = files.get(key)
    if not value:
        raise TrainingError(
            f"PADA --stage aging needs {FILE_HELP[key]}: --set files.{key}=PATH. "
            "It is never replaced by random weights."
        )
    path = Path(str(value))
    if not path.exists():
        raise TrainingError(f"files.{key}={value}: no such file or directory ({FILE_HELP[key]})")
    return path


def load_dex(path: Path) -> nn.Module:
    """A frozen DEX from a user's file; its layout (the released VGG-16, or the tests' tiny one) from its shapes."""
    from pyagingrt.checkpoints.cusp import load_dex_file
    from pyagingrt.errors import CheckpointError

    from ..layers.dex import DEX, DEXConfig

    try:
        state = load_dex_file(path)
    except CheckpointError as exc:
        raise TrainingError(f"files.dex: {exc}") from exc
    for config in (DEXConfig.paper(), DEXConfig.tiny()):
        with torch.device("meta"):
            expected = DEX(config).state_dict()
        if set(expected) == set(state) and all(expected[k].shape == state[k].shape for k in state):
            dex = DEX(config)
            dex.load_state_dict(state)
            return dex.eval().requires_grad_(False)
    raise TrainingError(f"files.dex={path} does not hold DEX VGG-16 weights (keys conv1_1 ... fc8_101, 101 ages)")


def _prompt(group: int, gender: int) -> str:
    return PROMPTS["male" if int(gender) == 1 else "female"][group]


class _EMA(nn.Module):
    """An exponential moving average of a module's parameters (buffers copied)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, source: nn.Module, decay: float) -> None:
        for ema, live in zip(self.module.parameters(), source.parameters(), strict=True):
            ema.lerp_(live.detach(), 1.0 - decay)
        for ema, live in zip(self.module.buffers(), source.buffers(), strict=True):
            ema.copy_(live)

    def train(self, mode: bool = True) -> _EMA:
        return super().train(False)


@register_recipe
class PADARecipe(Recipe):
    name = "pada"
    stages = ("aging", "diffae")

    @classmethod
    def default_config(cls, preset: str, stage: str) -> dict[str, Any]:
        adapter = PADAAdapter()
        model = adapter.make_config("paper" if preset == "paper" else "tiny")
        train = json.loads(json.dumps(AGING_TRAIN if stage == "aging" else DIFFAE_TRAIN))
        files = dict(AGING_FILES) if stage == "aging" else {}
        cfg: dict[str, Any] = {"model": adapter.config_to_dict(model), "train": train, "files": files}
        if preset == "paper":
            if stage == "aging":  # batch 24, 20 epochs of FFHQ-AT
                cfg["loop"] = {"batch_size": 24, "epochs": 20, "sample_every": 2000, "checkpoint_every": 5000}
            else:  # DiffAE ffhq256_autoenc: batch 64, 200M samples
                cfg["loop"] = {"batch_size": 64, "steps": 3_125_000, "sample_every": 10000,
                               "checkpoint_every": 20000}  # fmt: skip
        else:  # 32x32 tiny DiffAE, synthetic ages 16-70 over four prompt groups
            cfg["loop"] = {"batch_size": 16, "steps": 200, "sample_every": 0, "checkpoint_every": 0,
                           "num_workers": 0, "log_every": 10}  # fmt: skip
            cfg["data"] = {"min_age": 16, "max_age": 70}
            if stage == "diffae":
                cfg["train"].update(lr=1e-3, ema_decay=0.9, stats_images=512)
            else:
                cfg["loop"].update(batch_size=8, steps=120)
                cfg["train"]["lr"] = 1e-3
        return cfg

    def __init__(self, config: dict[str, Any], ctx: TrainContext, stage: str) -> None:
        super().__init__(config, ctx, stage)
        self.adapter = PADAAdapter()
        self.model_config = self.adapter.config_from_dict(config["model"])
        self.model = PADA(self.model_config)
        t = config["train"]
        self.dataset: Dataset | None = None
        if stage == "diffae":
            ctx.prepare(self.model.diffae)
            self.ema = _EMA(self.model.diffae)
            self.opt = torch.optim.Adam(self.model.diffae.parameters(), lr=t["lr"], betas=tuple(t["betas"]))
            self.alpha_bars = linear_alpha_bars().float()  # [1000]
        else:
            files = config["files"]
            paths = {key: _required(files, key) for key in ("diffae", "clip", "dex", "arcface")}
            self._load_base(paths["diffae"], files.get("latent"))
            self.model.set_clip(self._load_clip(paths["clip"]))
            self.dex = load_dex(paths["dex"]).to(ctx.device)
            self.arcface = self._load_arcface(paths["arcface"]).to(ctx.device)
            ctx.prepare(self.model)
            self.model.diffae.eval().requires_grad_(False)
            self.model.stats.requires_grad_(False)
            trained = [*self.model.age_encoder.parameters(), *self.model.modulation.parameters()]
            self.opt = torch.optim.Adam(trained, lr=t["lr"], betas=tuple(t["betas"]))
            schedule = DDIMSchedule.diffae(self.model_config.steps)
            self.timesteps = torch.tensor(schedule.timesteps)  # [T]
            self.alpha_bars = torch.tensor(schedule.alpha_bars, dtype=torch.float32)  # [T]

    # --- frozen parts of the aging stage --------------------------------------------------------------------
    def _load_base(self, path: Path, latent: Any) -> None:
        from pyagingrt.checkpoint import load_checkpoint, read_header
        from pyagingrt.checkpoints.pada import convert_diffae_checkpoint
        from pyagingrt.errors import CheckpointError

        try:
            header = read_header(path)
            if header is not None:
                if header.model != "pada":
                    raise TrainingError(f"files.diffae={path} is a {header.model} checkpoint, not a PADA / DiffAE one")
                if self.adapter.config_from_dict(header.config) != self.model_config:
                    raise TrainingError(
                        f"files.diffae={path} was trained with model config {header.config}, not this run's "
                        f"{self.config['model']}; choose the matching --config or --set model.<key>=..."
                    )
                _, state = load_checkpoint(path)
            else:
                state, _ = convert_diffae_checkpoint(path, self.model_config, latent)
        except CheckpointError as exc:
            raise TrainingError(f"files.diffae: {exc}") from exc
        self.model.load_state_dict(state, strict=True)

    def _load_clip(self, folder: Path) -> Any:
        from ..layers.clip_encoder import ClipEncoder

        try:
            clip = ClipEncoder.from_pretrained(folder)
        except ImportError as exc:
            raise TrainingError(f"PADA needs transformers for CLIP ({exc}): pip install 'pyagingrt[clip]'") from exc
        except (OSError, ValueError) as exc:
            raise TrainingError(f"files.clip={folder}: {exc}") from exc
        if clip.projection_dim != self.model_config.clip_dim:
            raise TrainingError(
                f"files.clip={folder} has projection_dim {clip.projection_dim}; this PADA config is built for "
                f"{self.model_config.clip_dim} (model.clip_dim)"
            )
        return clip.to(self.ctx.device)

    @staticmethod
    def _load_arcface(path: Path) -> nn.Module:
        from ..layers.arcface import load_arcface

        try:
            return load_arcface(path)
        except (OSError, ValueError, RuntimeError) as exc:
            raise TrainingError(f"files.arcface: {exc}") from exc

    # --- state ----------------------------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        if self.stage == "diffae":
            return {"diffae": self.model.diffae, "ema": self.ema}
        return {"age_encoder": self.model.age_encoder, "modulation": self.model.modulation}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"pada" if self.stage == "aging" else "diffae": self.opt}

    def prepare_data(self, dataset: Dataset) -> Dataset:
        self.dataset = dataset
        if self.stage == "aging":
            ages = getattr(dataset, "ages", None)
            if ages is None:  # read the labels once
                ages = torch.stack([torch.as_tensor(dataset[i]["age"]) for i in range(len(dataset))])
            groups = torch.tensor([age_group(float(a)) for a in ages])  # [N]
            self.by_group = [torch.nonzero(groups == g).flatten() for g in range(len(AGE_GROUPS))]
            self.by_group = [members for members in self.by_group if len(members)]
        return dataset

    # --- stage diffae ---------------------------------------------------------------------------------------
    def _diffae_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        ctx, t = self.ctx, self.config["train"]
        x0 = ctx.images(batch["image"]) * 2 - 1  # [B, 3, S, S] in [-1, 1]
        steps = torch.randint(0, len(self.alpha_bars), (x0.shape[0],), generator=ctx.generator)  # [B]
        noise = torch.randn(x0.shape, generator=ctx.generator).to(ctx.device)  # [B, 3, S, S]
        abar = self.alpha_bars[steps].to(ctx.device)[:, None, None, None]  # [B, 1, 1, 1]
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise  # [B, 3, S, S]
        diffae = self.model.diffae
        with ctx.autocast():
            eps = diffae(x_t, steps.to(ctx.device).float(), diffae.encoder(x0))  # [B, 3, S, S]
        loss = F.mse_loss(eps.float(), noise)
        ctx.optimize("diffae", self.opt, loss, clip=lambda ps: torch.nn.utils.clip_grad_norm_(ps, t["grad_clip"]))
        self.ema.update(diffae, t["ema_decay"])
        return {"eps_mse": loss.detach()}

    @torch.no_grad()
    def _latent_statistics(self, encoder: nn.Module) -> tuple[Tensor, Tensor]:
        """Per-channel mean and std of z_sem over (a seeded subset of) the data set: [Z], [Z]."""
        assert self.dataset is not None
        count = min(len(self.dataset), int(self.config["train"]["stats_images"]))
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(0))[:count].tolist()
        loader = DataLoader(torch.utils.data.Subset(self.dataset, order), batch_size=64)
        zs = [encoder(batch["image"].to(self.ctx.device) * 2 - 1).float() for batch in loader]
        z = torch.cat(zs)  # [N, Z]
        return z.mean(dim=0).cpu(), z.std(dim=0).clamp_min(1e-6).cpu()

    # --- stage aging ----------------------------------------------------------------------------------------
    def _references(self, size: int) -> tuple[Tensor, Tensor, Tensor]:
        """``size`` reference images (group uniform, then image uniform within it), their ages and genders."""
        gen = self.ctx.generator
        picks = []
        for g in torch.randint(0, len(self.by_group), (size,), generator=gen).tolist():
            members = self.by_group[g]
            picks.append(int(members[torch.randint(0, len(members), (1,), generator=gen)]))
        items = [self.dataset[i] for i in picks]
        genders = torch.stack([torch.as_tensor(item.get("gender", 0)) for item in items])
        return torch.stack([item["image"] for item in items]), torch.stack([item["age"] for item in items]), genders

    def _x0(self, x_t: Tensor, abar: Tensor, steps: Tensor, cond: Tensor) -> Tensor:
        """DiffAE's x0 prediction, Eq. (3) unclipped: [B, 3, S, S]."""
        eps = self.model.diffae(x_t, steps.float(), cond).float()  # [B, 3, S, S]
        return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()

    def _aging_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        ctx, t, w = self.ctx, self.config["train"], self.config["train"]["weights"]
        gen, dev, model = ctx.generator, ctx.device, self.model
        x_src = ctx.images(batch["image"]) * 2 - 1  # [B, 3, S, S]
        size = x_src.shape[0]
        genders = batch.get("gender", torch.zeros(size, dtype=torch.long))
        src_prompts = [_prompt(age_group(float(a)), g) for a, g in zip(batch["age"], genders, strict=True)]
        recon = bool(torch.rand((), generator=gen) < t["recon_prob"])
        if recon:
            x_ref, ref_prompts = x_src, src_prompts
        else:
            ref_images, ref_ages, ref_genders = self._references(size)
            x_ref = ctx.images(ref_images) * 2 - 1  # [B, 3, S, S]
            ref_prompts = [_prompt(age_group(float(a)), g) for a, g in zip(ref_ages, ref_genders, strict=True)]

        with torch.no_grad():
            z_src = model.encode(x_src)  # [B, Z]
            e_img = model.image_embedding(x_ref)  # [B, D]
            e_txt = model.text_embedding(ref_prompts).to(dev)  # [B, D]
            e_txt_src = model.text_embedding(src_prompts).to(dev)  # [B, D]
        image_branch = (torch.rand(size, generator=gen) < t["image_branch_prob"]).to(dev)  # [B]
        eta = torch.randn(e_img.shape, generator=gen).to(dev)  # [B, D]
        mu, logvar = model.pae(e_img)  # [B, D] each
        e_age = torch.where(
            image_branch[:, None], mu + torch.exp(logvar / 2) * eta, e_txt + self.model_config.text_noise * eta
        )  # [B, D]
        z_age = model.modulate(e_age, z_src)  # [B, Z]

        k = torch.randint(0, len(self.timesteps), (size,), generator=gen)  # [B]
        steps, abar = self.timesteps[k].to(dev), self.alpha_bars[k].to(dev)[:, None, None, None]
        noise = torch.randn(x_src.shape, generator=gen).to(dev)
        x_t = abar.sqrt() * x_src + (1 - abar).sqrt() * noise  # [B, 3, S, S]
        with ctx.autocast():
            with torch.no_grad():
                x0_src = self._x0(x_t, abar, steps, z_src)  # [B, 3, S, S]
            x0_tar = self._x0(x_t, abar, steps, z_age)  # gradients reach z_age through the frozen UNet

            zero = x_src.new_zeros(())
            if recon:
                loss_age = loss_clip = zero
                loss_rec = ((x0_src - x0_tar) ** 2).mean()
            else:
                f_src, f_tar = self.dex(x0_src), self.dex(x0_tar)  # [B, 101]
                with torch.no_grad():
                    f_ref = self.dex(x_ref)
                triplet = F.cosine_similarity(f_src, f_tar) - F.cosine_similarity(f_ref, f_tar) + t["margin"]
                loss_age = triplet.clamp_min(0).mean()
                d_img = model.clip.encode_image(x0_tar) - model.clip.encode_image(x0_src)  # [B, D]
                loss_clip = (1 - F.cosine_similarity(d_img, e_txt - e_txt_src)).mean()
                loss_rec = zero
            id_src, id_tar = self.arcface(x0_src), self.arcface(x0_tar)  # [B, E]
            loss_id = (1 - F.cosine_similarity(id_src, id_tar)).mean()
        if bool(image_branch.any()):
            var = torch.exp(logvar[image_branch])
            kl = 0.5 * (var - logvar[image_branch] - 1).sum(dim=1)  # [b]
            kl = kl + 1 - F.cosine_similarity(mu[image_branch], e_txt[image_branch])
            loss_kl = (kl + (mu[image_branch] - e_img[image_branch]).norm(dim=1)).mean()
        else:
            loss_kl = zero
        normed = z_age - z_src if t["norm_on"] == "delta" else z_age
        loss_norm = (normed**2).sum(dim=1).mean()
        loss = (
            w["age"] * loss_age
            + w["clip"] * loss_clip
            + w["kl"] * loss_kl
            + w["id"] * loss_id
            + w["norm"] * loss_norm
            + w["rec"] * loss_rec
        )
        ctx.optimize("pada", self.opt, loss)
        out = {"total": loss, "id": loss_id, "kl": loss_kl, "norm": loss_norm}
        out.update({"rec": loss_rec} if recon else {"age": loss_age, "clip": loss_clip})
        return {k: v.detach() for k, v in out.items()}

    def train_step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        return self._diffae_step(batch) if self.stage == "diffae" else self._aging_step(batch)

    def train(self, mode: bool = True) -> None:
        super().train(mode)
        if self.stage == "aging":
            self.model.diffae.eval()  # frozen (and no dropout)

    # --- samples and checkpoint -----------------------------------------------------------------------------
    def sample_targets(self) -> list[float]:
        return [g.representative_age() for g in self.adapter.age_groups(self.model_config)]

    def _inference_model(self) -> PADA:
        if self.stage == "aging":
            return self.model
        with torch.random.fork_rng(devices=[]):  # building draws random weights: keep the run's RNG (exact resume)
            torch.manual_seed(0)
            model = PADA(self.model_config)
        model.diffae.load_state_dict(self.ema.module.state_dict())
        model.set_stats(*self._latent_statistics(self.ema.module.encoder))
        return model

    @torch.no_grad()
    def sample(self, images: Tensor, target_ages: Sequence[float], **options: Any) -> Tensor:
        """Age ``images`` to each target with the age prompts (inference path of pyagingrt.load, seed 0)."""
        model = self._inference_model().to(self.ctx.device)
        modes = {name: m.training for name, m in self.modules().items()}
        self.train(False)
        model.eval()
        if self.stage == "diffae" and model._clip is None:
            model.set_clip(self._autoencoding_clip())
        try:
            rows = []
            for age in target_ages:
                groups = self.adapter.validate_ages(self.model_config, torch.full((len(images),), float(age)))
                opts = self.adapter.validate_options(self.model_config, len(images), dict(options))
                out = self.adapter.run(
                    model, images.to(self.ctx.device), groups, torch.Generator().manual_seed(0), opts
                )
                rows.append(out.float().cpu())
        finally:
            for name, module in self.modules().items():
                module.train(modes[name])
        return torch.stack(rows, dim=1)  # [B, T, 3, S, S]

    def _autoencoding_clip(self) -> Any:
        """A DiffAE alone has no CLIP; its modulation is the identity, so any CLIP of the right width gives the
        same autoencoding. The random one of the config is used (its embeddings never reach the output)."""
        from ..layers.clip_encoder import ClipEncoder, clip_config

        return ClipEncoder.random(clip_config(self.model_config.clip))

    def inference_checkpoint(self) -> InferenceCheckpoint:
        model = self._inference_model()
        state = {k: v.detach() for k, v in model.state_dict().items()}
        return InferenceCheckpoint("pada", self.adapter.config_to_dict(self.model_config), state)
