"""AgeFlow training in two stages (docs/training-ageflow-pada.md, "AgeFlow").

``--stage flow``: the Glow G by maximum likelihood, Eq. (4). Input x = floor(v / 8) / 32 - 0.5 + U(0, 1/32)
(uniform dequantisation inside each 5-bit bin); the loss is bits/dim,
bpd = (D n_bits ln 2 - log p_Z(G(x)) - log|det dG/dx|) / (D ln 2), D = 3 S^2. The first batch of a run from
scratch initialises every ActNorm from its data and takes no optimiser step; gradients are clipped by value
at 5, then by global norm at 100; Adam. ``files.init_flow`` fine-tunes from an official ``generator-*`` flow
or a pyagingrt AgeFlow checkpoint instead of starting from scratch.

``--stage ictm``: G frozen (``files.flow``). Every training image and its horizontal flip is encoded once (bin
centres, no noise) into its top latent z_top; the cache lives in ``train.latent_cache`` and is keyed on the
flow's weights and the data set, so a second run on the same flow and data reuses it and a changed flow
encodes again. Mean latents per (group, attribute cell) steer the distillation target; the prior generator
starts from each group's elementwise mean and log-std of z_top. Per iteration one D step, then one step of T
and the prior generator on L_T = l_akd |z'_t - (z_s + s (zbar_{t,a} - zbar_{c,a}))| + l_al LSGAN + l_acl CE
+ l_cl consistency (Eqs. 6-10), with t uniform over all groups.

Both stages write a whole AgeFlow checkpoint (flow + ICTM + prior generator + D) that ``pyagingrt.load``
reads; after stage 1 its ICTM is still the identity.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from pyagingrt.models.ageflow import AGE_GROUPS, AgeFlowAdapter

from ..errors import TrainingError
from ..models.ageflow import AgeFlow, AgeFlowConfig, postprocess_output, quantize_input
from ..recipe import InferenceCheckpoint, Recipe, TrainContext, register_recipe

FLOW_TRAIN: dict[str, Any] = {
    "lr": 1e-5,
    "betas": [0.9, 0.999],
    "clip_value": 5.0,  # gradient clipping by value, then ...
    "clip_norm": 100.0,  # ... by global norm
}
ICTM_TRAIN: dict[str, Any] = {
    "lr_t": 1e-5,  # T and the prior generator
    "lr_d": 1e-4,
    "betas": [0.9, 0.999],
    "scale": 1.8,  # s of the distillation target (1.4 MORPH, 1.8 CACD / FFHQ-Aging)
    "weights": {"akd": 1.0, "al": 1.0, "acl": 1.0, "cl": 0.01},
    "d_acl": 0.1,  # weight of D's age classification on real latents
    "min_cell": 50,  # images a (group, attribute) cell needs for its own mean latent; else the group mean
    "latent_cache": None,  # folder of the encoded-latent cache; None: $XDG_CACHE_HOME/pyagingrt/ageflow-latents
    "encode_batch": 64,
}


def ages_to_groups(ages: Tensor) -> Tensor:
    """Ages in years [B] -> AgeFlow groups int64 [B]: floor(age) <= 30, 31-40, 41-50, >= 51 (no warnings)."""
    years = torch.floor(ages.double())
    lows = torch.tensor([g.low for g in AGE_GROUPS[1:]], dtype=torch.float64)
    return (years[:, None] >= lows[None, :]).sum(dim=1)


def dequantize(images: Tensor, n_bits: int, generator: torch.Generator) -> Tensor:
    """[0, 1] images [B, 3, S, S] -> model space with uniform noise inside each 2^-n_bits bin."""
    x = quantize_input(images, n_bits=n_bits, bin_centre=False)  # bin lower edges
    noise = torch.rand(x.shape, generator=generator) / 2**n_bits  # U(0, 1 / 2^n_bits)
    return x + noise.to(x.device)


def bits_per_dim(log_prob: Tensor, image_size: int, n_bits: int) -> Tensor:
    """-log-likelihood of the discrete image in bits per dimension, [B] (the constant counts the bin width)."""
    dims = 3 * image_size * image_size
    return (dims * n_bits * math.log(2.0) - log_prob) / (dims * math.log(2.0))


def _files_refusal(stage: str, key: str, what: str) -> str:
    return f"AgeFlow --stage {stage} needs {what}: --set files.{key}=PATH"


def load_flow_weights(path: Any, config: AgeFlowConfig, setting: str) -> dict[str, Tensor]:
    """G's weights (keys without ``flow.``) from a pyagingrt AgeFlow checkpoint or an official ``generator-*``
    file, checked against ``config``'s layout; TrainingError naming the file and setting otherwise."""
    from pyagingrt.checkpoint import load_checkpoint, read_header
    from pyagingrt.checkpoints.ageflow import convert_official_ageflow
    from pyagingrt.errors import CheckpointError

    file = Path(str(path))
    if not file.is_file():
        raise TrainingError(f"{setting}={path}: no such file")
    try:
        header = read_header(file)
        if header is not None:
            if header.model != "ageflow":
                raise TrainingError(f"{setting}={file} is a {header.model} checkpoint, not an AgeFlow one")
            _, state = load_checkpoint(file)
            found = AgeFlowAdapter().config_from_dict(header.config)
        else:
            found, state = convert_official_ageflow(file)
    except CheckpointError as exc:
        raise TrainingError(f"{setting}: {exc}") from exc
    layout = ("levels", "steps", "hidden", "n_bits")
    if any(getattr(found, k) != getattr(config, k) for k in layout):
        have = {k: getattr(found, k) for k in layout}
        want = {k: getattr(config, k) for k in layout}
        raise TrainingError(
            f"{setting}={file} holds a flow with {have}, but this run's model config has {want}; "
            "choose the matching --config or --set model.<key>=..."
        )
    return {k[len("flow.") :]: v for k, v in state.items() if k.startswith("flow.")}


def _clip_gradients(value: float, norm: float) -> Callable[[list[nn.Parameter]], None]:
    def clip(params: list[nn.Parameter]) -> None:
        torch.nn.utils.clip_grad_value_(params, value)
        torch.nn.utils.clip_grad_norm_(params, norm)

    return clip


@register_recipe
class AgeFlowRecipe(Recipe):
    name = "ageflow"
    stages = ("flow", "ictm")

    @classmethod
    def default_config(cls, preset: str, stage: str) -> dict[str, Any]:
        model = AgeFlowConfig.paper() if preset == "paper" else AgeFlowConfig.tiny()
        train = json.loads(json.dumps(FLOW_TRAIN if stage == "flow" else ICTM_TRAIN))
        files = {"init_flow": None} if stage == "flow" else {"flow": None}
        cfg: dict[str, Any] = {"model": AgeFlowAdapter().config_to_dict(model), "train": train, "files": files}
        if preset == "paper":  # effective batch 64; 1M iterations on CelebA then 50K per data set (flow), 50K (T)
            steps = 1_000_000 if stage == "flow" else 50_000
            cfg["loop"] = {"batch_size": 64, "steps": steps, "sample_every": 2000, "checkpoint_every": 5000}
            cfg["data"] = {"min_age": 15, "max_age": 100}
        else:  # every path in seconds on a CPU: 32x32, synthetic ages 21-60 spread over the four groups
            cfg["loop"] = {"batch_size": 16, "steps": 150, "sample_every": 0, "checkpoint_every": 0,
                           "num_workers": 0, "log_every": 10}  # fmt: skip
            cfg["data"] = {"min_age": 21, "max_age": 60}
            if stage == "flow":
                cfg["train"]["lr"] = 1e-3
            else:
                cfg["loop"].update(batch_size=32, steps=300)
                cfg["train"].update(lr_t=1e-3, lr_d=1e-3, min_cell=5, encode_batch=32)
        return cfg

    def __init__(self, config: dict[str, Any], ctx: TrainContext, stage: str) -> None:
        super().__init__(config, ctx, stage)
        self.model_config = AgeFlowAdapter().config_from_dict(config["model"])
        self.model = AgeFlow(self.model_config)
        files, t = config["files"], config["train"]
        betas = tuple(t["betas"])
        if stage == "flow":
            if files.get("init_flow"):
                flow_state = load_flow_weights(files["init_flow"], self.model_config, "files.init_flow")
                self.model.flow.load_state_dict(flow_state, strict=True)
            ctx.prepare(self.model)
            self.opt_flow = torch.optim.Adam(self.model.flow.parameters(), lr=t["lr"], betas=betas)
            self.clip = _clip_gradients(t["clip_value"], t["clip_norm"])
        else:
            if not files.get("flow"):
                raise TrainingError(
                    _files_refusal(stage, "flow", "the frozen flow G it translates in")
                    + " (the final.safetensors of --stage flow, or an official generator-* file)"
                )
            self.flow_path = Path(str(files["flow"]))
            flow_state = load_flow_weights(files["flow"], self.model_config, "files.flow")
            self.model.flow.load_state_dict(flow_state, strict=True)
            ctx.prepare(self.model)
            self.model.flow.eval().requires_grad_(False)
            self.opt_t = torch.optim.Adam(
                [*self.model.ictm.parameters(), *self.model.prior.parameters()], lr=t["lr_t"], betas=betas
            )
            self.opt_d = torch.optim.Adam(self.model.disc.parameters(), lr=t["lr_d"], betas=betas)
            self.prior_ready = False  # set once the prior table holds the group statistics
            self.cache_reused: bool | None = None
            self.cache_path: Path | None = None

    # --- state ----------------------------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        if self.stage == "flow":
            return {"flow": self.model.flow}
        return {"ictm": self.model.ictm, "prior": self.model.prior, "disc": self.model.disc}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if self.stage == "flow":
            return {"flow": self.opt_flow}
        return {"T": self.opt_t, "D": self.opt_d}

    def extra_state(self) -> dict[str, Any]:
        return {"prior_ready": self.prior_ready} if self.stage == "ictm" else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.stage == "ictm":
            self.prior_ready = bool(state.get("prior_ready", False))

    # --- stage 1: the flow ----------------------------------------------------------------------------------
    def _actnorm_pending(self) -> bool:
        from ..layers.glow import ActNorm

        return any(isinstance(m, ActNorm) and int(m.initialized) == 0 for m in self.model.flow.modules())

    def _flow_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        cfg, ctx = self.model_config, self.ctx
        x = dequantize(batch["image"], cfg.n_bits, ctx.generator).to(ctx.device)  # [B, 3, S, S]
        if self._actnorm_pending():  # data-dependent init on this batch; it takes no optimiser step
            with torch.no_grad():
                bpd = bits_per_dim(self.model.flow.log_prob(x), cfg.image_size, cfg.n_bits).mean()
            return {"bpd": bpd.detach(), "actnorm_init": torch.ones(())}
        # fp32 on every device (no autocast): 32 * levels additive steps compound half-precision rounding
        bpd = bits_per_dim(self.model.flow.log_prob(x), cfg.image_size, cfg.n_bits).mean()
        ctx.optimize("flow", self.opt_flow, bpd, clip=self.clip)
        return {"bpd": bpd.detach()}

    # --- stage 2: the latent cache --------------------------------------------------------------------------
    def prepare_data(self, dataset: Dataset) -> Dataset:
        if self.stage == "flow":
            return dataset
        latents = self._latent_cache(dataset)
        self.z = latents["z"].to(self.ctx.device)  # [N, 2, C, s, s]: image, flip
        self.groups = latents["group"].to(self.ctx.device)  # [N]
        self.attrs = latents["attr"].to(self.ctx.device)  # [N]
        self.means = self._mean_latents()  # [n, A, C, s, s]
        if not self.prior_ready:
            self._init_prior()
            self.prior_ready = True
        return _LatentItems(len(dataset))

    def _cache_key(self, dataset: Dataset) -> str:
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.flow.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        identity = {
            "class": type(dataset).__qualname__,
            "length": len(dataset),
            "fields": {k: v for k, v in sorted(vars(dataset).items()) if isinstance(v, str | int | float | bool)},
            "image_size": self.model_config.image_size,
            "n_bits": self.model_config.n_bits,
        }
        digest.update(json.dumps(identity, sort_keys=True, default=str).encode())
        return digest.hexdigest()

    def _latent_cache(self, dataset: Dataset) -> dict[str, Tensor]:
        """The cached latents of ``dataset`` under the current flow: read, or encoded and written (rank 0)."""
        from ..checkpointing import atomic_write_bytes

        folder = self.config["train"]["latent_cache"]
        if folder is None:
            base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
            folder = os.path.join(base, "pyagingrt", "ageflow-latents")
        key = self._cache_key(dataset)
        path = Path(folder) / f"latents-{key[:24]}.pt"
        self.cache_path = path
        self.cache_reused = path.is_file()
        if not self.cache_reused and self.ctx.rank == 0:
            latents = self._encode(dataset)
            latents["key"] = key
            atomic_write_bytes(path, lambda tmp: torch.save(latents, tmp))
        if self.ctx.distributed:
            dist.barrier()
        latents = torch.load(path, map_location="cpu", weights_only=True)
        if latents.get("key") != key:
            raise TrainingError(f"latent cache {path} belongs to another flow or data set; delete it")
        if self.config["loop"]["progress"] and self.ctx.rank == 0:
            state = "reused" if self.cache_reused else "written"
            print(f"ageflow: latent cache {state}: {path} ({latents['z'].shape[0]} images + flips)")
        return latents

    @torch.no_grad()
    def _encode(self, dataset: Dataset) -> dict[str, Tensor]:
        """z_top of every image and its horizontal flip (bin-centre inputs, no noise), with groups and cells."""
        cfg, loop = self.model_config, self.config["loop"]
        loader = DataLoader(dataset, batch_size=self.config["train"]["encode_batch"], num_workers=loop["num_workers"])
        flow = self.model.flow.eval()
        zs, groups, attrs = [], [], []
        bar = None
        if loop["progress"]:
            from tqdm import tqdm

            bar = tqdm(total=len(dataset), desc="ageflow: encoding latents", unit="img", dynamic_ncols=True)
        for batch in loader:
            x = quantize_input(batch["image"], n_bits=cfg.n_bits).to(self.ctx.device)  # [B, 3, S, S]
            pair = [flow.encode(v).top.float().cpu() for v in (x, x.flip(3))]  # [B, C, s, s] each
            zs.append(torch.stack(pair, dim=1))  # [B, 2, C, s, s]
            groups.append(ages_to_groups(batch["age"]))
            gender = batch.get("gender")
            attrs.append(gender.long().clamp(0, 1) if gender is not None else torch.zeros(len(x), dtype=torch.long))
            if bar is not None:
                bar.update(len(x))
        if bar is not None:
            bar.close()
        return {"z": torch.cat(zs), "group": torch.cat(groups), "attr": torch.cat(attrs)}

    def _mean_latents(self) -> Tensor:
        """zbar per (group, attribute cell) [n, A, C, s, s] over images and flips; a cell with fewer than
        ``min_cell`` images takes its group's mean (and an empty group the mean of all)."""
        n, cells = self.model_config.groups, 2
        z = self.z.mean(dim=1)  # [N, C, s, s]: the mean of an image and its flip
        overall = z.mean(dim=0)  # [C, s, s]
        means = overall.expand(n, cells, *overall.shape).clone()  # [n, A, C, s, s]
        for g in range(n):
            in_group = self.groups == g
            if not bool(in_group.any()):
                continue
            group_mean = z[in_group].mean(dim=0)  # [C, s, s]
            for a in range(cells):
                cell = in_group & (self.attrs == a)
                big = int(cell.sum()) >= self.config["train"]["min_cell"]
                means[g, a] = z[cell].mean(dim=0) if big else group_mean
        return means

    def _init_prior(self) -> None:
        """The prior table from each group's elementwise mean and log-std of z_top (images and flips)."""
        n = self.model_config.groups
        flat = self.z.flatten(0, 1)  # [2N, C, s, s]
        groups = self.groups.repeat_interleave(2)  # [2N]
        mean = torch.zeros(n, *flat.shape[1:], device=flat.device)
        log_std = torch.zeros_like(mean)
        for g in range(n):
            members = flat[groups == g]
            if len(members) > 1:
                mean[g] = members.mean(dim=0)
                log_std[g] = torch.log(members.std(dim=0).clamp_min(1e-4))
        self.model.prior.init_from_statistics(mean, log_std)

    # --- stage 2: T and D -----------------------------------------------------------------------------------
    def _ictm_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        ctx, t, n = self.ctx, self.config["train"], self.model_config.groups
        index = batch["index"].to(ctx.device)  # [B]
        size = index.shape[0]
        flip = torch.randint(0, 2, (size,), generator=ctx.generator).to(ctx.device)  # [B]
        z_s = self.z[index, flip]  # [B, C, s, s]
        c_s, a_s = self.groups[index], self.attrs[index]  # [B] each
        target = torch.randint(0, n, (size,), generator=ctx.generator).to(ctx.device)  # [B], uniform
        real = torch.randint(0, len(self.z), (size,), generator=ctx.generator).to(ctx.device)  # [B]
        real_flip = torch.randint(0, 2, (size,), generator=ctx.generator).to(ctx.device)
        z_real, c_real = self.z[real, real_flip], self.groups[real]  # [B, C, s, s], [B]

        # D: LSGAN real / translated + age classification of real latents (Eq. 11)
        with torch.no_grad():
            z_fake, _, _ = self.model.translate(z_s, target)  # [B, C, s, s]
        self.model.disc.requires_grad_(True)
        gan_real, age_real = self.model.disc(z_real)
        gan_fake, _ = self.model.disc(z_fake)
        loss_d_gan = 0.5 * ((gan_real - 1) ** 2).mean() + 0.5 * (gan_fake**2).mean()
        loss_d_age = F.cross_entropy(age_real, c_real)
        ctx.optimize("D", self.opt_d, loss_d_gan + t["d_acl"] * loss_d_age)

        # T and the prior generator (Eqs. 6-10)
        self.model.disc.requires_grad_(False)
        mu_t, rho_t = self.model.condition(target, z_s.dtype)  # [B, C, s, s] each
        z_t, mu_s, rho_s, _ = self.model.ictm(z_s, mu_t, rho_t)  # [B, C, s, s] each
        goal = z_s + t["scale"] * (self.means[target, a_s] - self.means[c_s, a_s])  # [B, C, s, s]
        loss_akd = (z_t - goal).abs().mean()
        gan, age = self.model.disc(z_t)
        loss_al = 0.5 * ((gan - 1) ** 2).mean()
        loss_acl = F.cross_entropy(age, target)
        with torch.no_grad():
            mu_c, rho_c = self.model.condition(c_s, z_s.dtype)  # the true source condition
        loss_cl = 0.5 * ((mu_s - mu_c) ** 2 + (rho_s - rho_c) ** 2).mean()
        w = t["weights"]
        loss_t = w["akd"] * loss_akd + w["al"] * loss_al + w["acl"] * loss_acl + w["cl"] * loss_cl
        ctx.optimize("T", self.opt_t, loss_t)
        self.model.disc.requires_grad_(True)
        return {
            "d_gan": loss_d_gan.detach(),
            "d_age": loss_d_age.detach(),
            "akd": loss_akd.detach(),
            "al": loss_al.detach(),
            "acl": loss_acl.detach(),
            "cl": loss_cl.detach(),
        }

    def train_step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        return self._flow_step(batch) if self.stage == "flow" else self._ictm_step(batch)

    # --- samples and checkpoint -----------------------------------------------------------------------------
    def sample_targets(self) -> list[float]:
        return [g.representative_age() for g in AGE_GROUPS]

    @torch.no_grad()
    def sample(self, images: Tensor, target_ages: Sequence[float]) -> Tensor:
        cfg = self.model_config
        modes = {name: m.training for name, m in self.modules().items()}
        self.train(False)  # eval: the 1x1 convs use their float64-built W and W^-1, as pyagingrt.load does
        try:
            x = quantize_input(images, n_bits=cfg.n_bits).to(self.ctx.device)  # [B, 3, S, S]
            rows = []
            for age in target_ages:
                groups = ages_to_groups(torch.full((x.shape[0],), float(age))).to(x.device)  # [B]
                rows.append(postprocess_output(self.model(x, groups).float(), n_bits=cfg.n_bits))
        finally:
            for name, module in self.modules().items():
                module.train(modes[name])
        return torch.stack(rows, dim=1).cpu()  # [B, T, 3, S, S]

    def train(self, mode: bool = True) -> None:
        super().train(mode)
        if self.stage == "ictm":
            self.model.flow.eval()  # frozen

    def inference_checkpoint(self) -> InferenceCheckpoint:
        state = {k: v.detach() for k, v in self.model.state_dict().items()}
        return InferenceCheckpoint("ageflow", dict(self.config["model"]), state)


class _LatentItems(Dataset):
    """What the ICTM stage's loader yields: only indices into the recipe's latent cache."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"index": torch.tensor(index, dtype=torch.int64)}
