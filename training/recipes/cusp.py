"""CUSP training: the official StyleGAN2-ADA-based recipe (docs/training.md, "CUSP").

Per iteration (the StyleGAN2-ADA phases Gmain, Dmain, Dreg):

* G: three generator calls with fresh per-sample blur widths and decoder noise, y_r = T(x, a_s),
  y_t = T(x, a_t), y_c = T(y_t, a_s); loss 10 |y_r - x| + 10 |y_c - x| + softplus(-D(y_t, a_t))
  + 0.06 MeanVar(DEX(y_t), a_t) + 1 * mean of the squared activations of every encoder/decoder conv.
* D: softplus(D(T(x, a_t'), a_t')) + softplus(-D(x, a_s)) with a fresh a_t'; every 16th iteration a separate
  lazy R1 step, 16 * (0.56 / 2) ||grad_x D(x, a_s)||^2.
* G_ema with a 5 kimg half-life; it is the weights the inference checkpoint holds.

Adam(beta1 0, beta2 0.99, eps 1e-8), base lr 0.0025 with StyleGAN2's lazy-regularisation scaling: G
lr 0.0025 * 4/5 and beta2 0.99^(4/5), D lr 0.0025 * 16/17 and beta2 0.99^(16/17). The frozen DEX (given by
file: ``--set files.dex=PATH``) makes the structure mask inside G (guided backprop) and judges the age of y_t
(plain ReLUs, gradients flow to y_t). Targets: the soft-margin sampler over 20..69 for one-hot ages
(attr_dim 101), uniform clusters for the 10-cluster model.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyagingrt.models.cusp import LS_CLUSTERS, CUSPAdapter

from ..errors import TrainingError
from ..layers.dex import DEX
from ..losses.cusp import (
    cluster_age_loss,
    d_logistic_loss,
    g_logistic_loss,
    mean_variance_loss,
    r1_penalty,
    sample_sigmas,
    soft_margin_ages,
)
from ..models.cusp import CUSP, CUSPConfig
from ..models.cusp_discriminator import CUSPDiscriminator
from ..recipe import InferenceCheckpoint, Recipe, TrainContext, register_recipe

TRAIN_DEFAULTS: dict[str, Any] = {
    "lr": 0.0025,
    "betas": [0.0, 0.99],
    "eps": 1e-8,
    "g_reg_interval": 4,  # StyleGAN2 lazy-regularisation scaling of G's lr and beta2 (G has no regulariser)
    "d_reg_interval": 16,  # lazy R1 every this many iterations
    "r1_gamma": 0.56,
    "ema_kimg": 5.0,  # G_ema half-life in thousands of images
    "weights": {"rec": 10.0, "cyc": 10.0, "adv": 1.0, "age": 0.06, "act": 1.0},
    "mean_var": [0.2, 0.05],  # mean and variance weights of the age loss
    "double_softmax": True,  # the official age loss applies softmax twice
    "target_ages": [20, 70],  # the soft-margin sampler's range [low, high) for one-hot ages
    "noise": "random",  # decoder noise in training: random (as official) or const
    "d_map_layers": 8,
}


def _dex_refusal(path: Any) -> str:
    return (
        f"CUSP training needs the frozen DEX age classifier (VGG-16, IMDB-WIKI) as a weights file: "
        f"--set files.dex=PATH (got {path!r}); it is never replaced by random weights"
    )


@register_recipe
class CUSPRecipe(Recipe):
    name = "cusp"
    presets = ("paper", "paper256", "tiny")
    fp16_ok = False  # fp16 autocast over every layer gives NaN in the first forward; bf16 and fp32 train

    @classmethod
    def default_config(cls, preset: str, stage: str) -> dict[str, Any]:
        model = {"paper": CUSPConfig.paper224, "paper256": CUSPConfig.paper256, "tiny": CUSPConfig.tiny}[preset]()
        train = copy.deepcopy(TRAIN_DEFAULTS)
        cfg: dict[str, Any] = {"model": CUSPAdapter().config_to_dict(model), "train": train, "files": {"dex": None}}
        if preset == "paper":  # FFHQ-RR: 65 epochs at batch 18 (the paper's values)
            cfg["loop"] = {"batch_size": 18, "epochs": 65, "sample_every": 1000, "checkpoint_every": 2000}
            cfg["data"] = {"min_age": 20, "max_age": 69}
        elif preset == "paper256":  # FFHQ-LS: 140 epochs at batch 16, 10 age clusters
            cfg["loop"] = {"batch_size": 16, "epochs": 140, "sample_every": 1000, "checkpoint_every": 2000}
        else:
            train["d_map_layers"] = 2
            train["ema_kimg"] = 0.02
            cfg["loop"] = {
                "batch_size": 8,
                "steps": 200,
                "sample_every": 100,
                "checkpoint_every": 100,
                "num_workers": 0,
                "log_every": 10,
            }
            cfg["data"] = {"min_age": 20, "max_age": 69}
        return cfg

    @classmethod
    def image_size(cls, config: dict[str, Any]) -> int:
        return int(config["model"]["resolution"])

    def __init__(self, config: dict[str, Any], ctx: TrainContext, stage: str) -> None:
        super().__init__(config, ctx, stage)
        t = config["train"]
        self.model_config = CUSPAdapter().config_from_dict(config["model"])
        dex_state = self._load_dex(config["files"]["dex"])
        self.G = CUSP(self.model_config)
        self.G.dex.load_state_dict(dex_state)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.D = CUSPDiscriminator(self.model_config, map_layers=t["d_map_layers"])
        self.age_judge = DEX(self.model_config.dex)  # plain ReLUs: its gradient reaches y_t
        self.age_judge.load_state_dict(dex_state)
        self.age_judge.eval().requires_grad_(False)
        for m in (self.G, self.G_ema, self.D, self.age_judge):
            ctx.prepare(m)
        g_params = [p for n, p in self.G.named_parameters() if not n.startswith("dex.")]
        beta1, beta2 = t["betas"]
        g_ratio = t["g_reg_interval"] / (t["g_reg_interval"] + 1)
        d_ratio = t["d_reg_interval"] / (t["d_reg_interval"] + 1)
        self.opt_g = torch.optim.Adam(
            g_params, lr=t["lr"] * g_ratio, betas=(beta1**g_ratio, beta2**g_ratio), eps=t["eps"]
        )
        self.opt_d = torch.optim.Adam(
            self.D.parameters(), lr=t["lr"] * d_ratio, betas=(beta1**d_ratio, beta2**d_ratio), eps=t["eps"]
        )
        self._activations: list[Tensor] | None = None
        for name, module in self.G.named_modules():
            if _is_regularised_conv(name):
                module.register_forward_hook(self._collect_activation)

    # --- setup ------------------------------------------------------------------------------------------
    def _load_dex(self, path: Any) -> dict[str, Tensor]:
        from pyagingrt.checkpoints.cusp import load_dex_file

        if not path:
            raise TrainingError(_dex_refusal(path))
        if not Path(str(path)).is_file():
            raise TrainingError(_dex_refusal(path) + f"; {path} does not exist")
        state = load_dex_file(str(path))
        probe = DEX(self.model_config.dex)
        expected = probe.state_dict()
        bad = sorted(set(expected) ^ set(state)) + sorted(
            k for k in set(expected) & set(state) if expected[k].shape != state[k].shape
        )
        if bad:
            raise TrainingError(
                f"DEX weights {path} do not fit model.dex of this config (keys or shapes differ: {', '.join(bad[:4])})"
            )
        return state

    def _collect_activation(self, module: nn.Module, args: Any, output: Tensor) -> None:
        if self._activations is not None:
            self._activations.append(output.float().square().mean())

    # --- state ------------------------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, "G_ema": self.G_ema, "D": self.D}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"G": self.opt_g, "D": self.opt_d}

    def train(self, mode: bool = True) -> None:
        self.G.train(mode)
        self.D.train(mode)
        self.G.dex.eval()
        self.G_ema.eval()

    # --- ages -------------------------------------------------------------------------------------------
    def group_edges(self) -> list[float]:
        if self.clusters:
            return super().group_edges()
        return [float(a) for a in range(10, 100, 10)]  # decades: one row per class would be 101 rows

    @property
    def clusters(self) -> bool:
        return self.model_config.attr_dim == len(LS_CLUSTERS)

    def _classes(self, ages: Tensor) -> Tensor:
        """Ages in years [B] -> class indices int64 [B] (years for attr_dim 101, clusters for 10)."""
        years = ages.double().floor().long()
        if not self.clusters:
            return years.clamp(0, self.model_config.attr_dim - 1)
        highs = torch.tensor([hi if math.isfinite(hi) else 10_000 for _, hi in LS_CLUSTERS])
        return (years[:, None] > highs[None]).sum(dim=1).clamp(max=len(LS_CLUSTERS) - 1)

    def _targets(self, source: Tensor) -> Tensor:
        if self.clusters:
            return torch.randint(0, len(LS_CLUSTERS), source.shape, generator=self.ctx.generator)
        low, high = self.config["train"]["target_ages"]
        return soft_margin_ages(source, self.ctx.generator, low, high)

    def _generate(self, g: CUSP, x: Tensor, classes: Tensor, noise_mode: str | None = None) -> Tensor:
        """One training call: fresh blur widths (and noise) per sample from the recipe's generator."""
        ctx, batch = self.ctx, x.shape[0]
        sigma_m, sigma_g = sample_sigmas(batch, self.model_config.resolution, ctx.generator)
        mode = noise_mode or self.config["train"]["noise"]
        noise = None
        if mode == "random":
            seeds = torch.randint(0, 2**62, (batch,), generator=ctx.generator).tolist()
            noise = g.make_noise(seeds, x.device)
        onehot = F.one_hot(classes.to(x.device), self.model_config.attr_dim).float()
        return g(x, onehot, sigma_m, sigma_g, noise_mode=mode, noise=noise)

    # --- training ---------------------------------------------------------------------------------------
    def train_step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        ctx, t = self.ctx, self.config["train"]
        w = t["weights"]
        x = ctx.images(batch["image"]) * 2 - 1  # [B, 3, H, H]
        a_s = self._classes(batch["age"])  # [B]
        a_t = self._targets(batch["age"])  # [B]
        dev = x.device

        # Gmain
        self.D.requires_grad_(False)
        self._activations = []
        with ctx.autocast():
            y_r = self._generate(self.G, x, a_s)
            y_t = self._generate(self.G, x, a_t)
            y_c = self._generate(self.G, y_t, a_s)
            rec = (y_r.float() - x.float()).abs().mean()
            cyc = (y_c.float() - x.float()).abs().mean()
            adv = g_logistic_loss(self.D(y_t, a_t.to(dev).float()))
            logits = self.age_judge(y_t)
            if self.clusters:
                age = cluster_age_loss(logits, a_t.to(dev), LS_CLUSTERS)
            else:
                age = mean_variance_loss(logits, a_t.to(dev), *t["mean_var"], double_softmax=t["double_softmax"])
        act = torch.stack(self._activations).mean()
        self._activations = None
        loss_g = w["rec"] * rec + w["cyc"] * cyc + w["adv"] * adv + w["age"] * age + w["act"] * act
        ctx.optimize("G", self.opt_g, loss_g)
        self.D.requires_grad_(True)
        losses = {"g_rec": rec, "g_cyc": cyc, "g_adv": adv, "g_age": age, "g_act": act}

        # Dmain
        a_t2 = self._targets(batch["age"])
        with ctx.autocast():
            with torch.no_grad():
                fake = self._generate(self.G, x, a_t2)
            loss_d = d_logistic_loss(self.D(x, a_s.to(dev).float()), self.D(fake, a_t2.to(dev).float()))
        ctx.optimize("D", self.opt_d, loss_d)
        losses["d_adv"] = loss_d
        # Dreg: lazy R1 in fp32
        if step % t["d_reg_interval"] == 0:
            r1 = r1_penalty(self.D, x.float(), a_s.to(dev).float(), t["r1_gamma"])
            ctx.optimize("D", self.opt_d, r1 * t["d_reg_interval"])
            losses["d_r1"] = r1
        self._update_ema()
        return {k: v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def _update_ema(self) -> None:
        t = self.config["train"]
        batch = self.config["loop"]["batch_size"]
        beta = 0.5 ** (batch / max(t["ema_kimg"] * 1000, 1e-8))
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters(), strict=True):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
            b_ema.copy_(b)

    # --- samples and checkpoint -------------------------------------------------------------------------
    def sample_targets(self) -> list[float]:
        if self.clusters:
            return [g.representative_age() for g in CUSPAdapter().age_groups(self.model_config)][3::2]
        low, high = self.config["train"]["target_ages"]
        return [float(low), float(low + (high - low) // 3), float(low + 2 * (high - low) // 3), float(high - 1)]

    @torch.no_grad()
    def sample(self, images: Tensor, target_ages: Sequence[float]) -> Tensor:
        cfg = self.model_config
        x = images.to(self.ctx.device) * 2 - 1
        batch = x.shape[0]
        sigma_m = torch.full((batch,), cfg.default_sigma_m, dtype=torch.float64)
        sigma_g = torch.full((batch,), cfg.default_sigma_g, dtype=torch.float64)
        rows = []
        for years in target_ages:
            classes = self._classes(torch.full((batch,), float(years)))
            onehot = F.one_hot(classes.to(x.device), cfg.attr_dim).float()
            y = self.G_ema(x, onehot, sigma_m, sigma_g, noise_mode="const")
            rows.append((y.float().clamp(-1, 1) + 1) / 2)
        return torch.stack(rows, dim=1)  # [B, T, 3, H, H]

    def inference_checkpoint(self) -> InferenceCheckpoint:
        return InferenceCheckpoint("cusp", dict(self.config["model"]), self.G_ema.state_dict())


def _is_regularised_conv(name: str) -> bool:
    """The convs whose outputs the activation regulariser squares: encoder convs and decoder conv0 / conv1."""
    parts = name.split(".")
    if len(parts) == 2 and parts[0] in ("content_enc", "style_enc") and parts[1].startswith("conv"):
        return True
    return len(parts) == 3 and parts[0] == "image_dec" and parts[2] in ("conv0", "conv1")
