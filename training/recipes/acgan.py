"""AcGAN training: the official per-iteration recipe (docs/training.md, "AcGAN").

Per iteration, with x_s the batch, y_s its group and y_t a target drawn uniformly from the other groups:
D1 (WGAN critic on x_s and the detached x_t, plus the group cross-entropy on x_s), D2 (the gradient penalty on
x_s / x_t mixtures, a second Adam step on D), and every ``g_every``-th iteration of an epoch a G step on a fresh
G pass with the same y_t. Adam(lr 1e-4, betas 0.5 / 0.999) for both; the learning rates decay x0.9 every 10
epochs. The losses are ``training/losses/acgan.py``; ages map to groups with the inference side's table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from pyagingrt.models.acgan import AcGANAdapter

from ..losses.acgan import AcGANLossWeights, d_loss_step1, g_loss, gradient_penalty
from ..models.acgan import AcGANConfig, Discriminator, Generator, init_weights, mask_blend
from ..recipe import InferenceCheckpoint, Recipe, TrainContext, register_recipe

TRAIN_DEFAULTS: dict[str, Any] = {
    "lr_g": 1e-4,
    "lr_d": 1e-4,
    "betas": [0.5, 0.999],
    "lr_decay": 0.9,  # StepLR factor ...
    "lr_decay_epochs": 10,  # ... every this many epochs
    "g_every": 2,  # one G step every g_every iterations, counted within the epoch (iterations 2, 4, ...)
    "init_std": 0.02,
    "weights": dataclasses.asdict(AcGANLossWeights()),
    "ce": "logits",  # or "official": log(softmax + 1e-10)
    "mask_form": "mean",  # or "l2" (the paper's E||A||_2)
    "smooth_form": "tv1",  # or "tv2" (the paper's squared differences)
}


def ages_to_groups(ages: Tensor, c_dim: int) -> Tensor:
    """Ages in years Tensor[B] -> group indices int64 [B] (the inference table: whole years, halves up)."""
    from pyagingrt.models.acgan import group_edges

    whole = torch.floor(ages.double() + 0.5)
    edges = torch.tensor(group_edges(c_dim), dtype=torch.float64)
    return (whole[:, None] >= edges[None, :]).sum(dim=1)


@register_recipe
class AcGANRecipe(Recipe):
    name = "acgan"

    @classmethod
    def default_config(cls, preset: str, stage: str) -> dict[str, Any]:
        model = AcGANConfig.paper() if preset == "paper" else AcGANConfig.tiny()
        cfg: dict[str, Any] = {"model": AcGANAdapter().config_to_dict(model), "train": dict(TRAIN_DEFAULTS)}
        cfg["train"]["weights"] = dict(TRAIN_DEFAULTS["weights"])
        if preset == "paper":  # official Morph config: batch 32, 40 epochs
            cfg["loop"] = {"batch_size": 32, "epochs": 40, "sample_every": 1000, "checkpoint_every": 2000}
        else:  # every code path in seconds on a CPU: 48x48, synthetic ages 10-60 over the five groups
            cfg["loop"] = {
                "batch_size": 16,
                "steps": 300,
                "sample_every": 100,
                "checkpoint_every": 100,
                "num_workers": 0,
                "log_every": 10,
            }
            cfg["data"] = {"min_age": 10, "max_age": 60}
        return cfg

    def __init__(self, config: dict[str, Any], ctx: TrainContext, stage: str) -> None:
        super().__init__(config, ctx, stage)
        self.model_config = AcGANAdapter().config_from_dict(config["model"])
        t = config["train"]
        self.c_dim = self.model_config.c_dim
        self.weights = AcGANLossWeights(**t["weights"])
        self.G = ctx.prepare(init_weights(Generator(self.model_config), std=t["init_std"]))
        self.D = ctx.prepare(init_weights(Discriminator(self.model_config), std=t["init_std"]))
        betas = tuple(t["betas"])
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=t["lr_g"], betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=t["lr_d"], betas=betas)
        self.decay_every = max(int(t["lr_decay_epochs"] * ctx.steps_per_epoch), 1)

    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"G": self.opt_g, "D": self.opt_d}

    def set_learning_rates(self, step: int) -> None:
        """StepLR as a pure function of the step: lr * lr_decay ** (step // (lr_decay_epochs * steps_per_epoch))."""
        t = self.config["train"]
        factor = t["lr_decay"] ** (step // self.decay_every)
        for opt, base in ((self.opt_g, t["lr_g"]), (self.opt_d, t["lr_d"])):
            for group in opt.param_groups:
                group["lr"] = base * factor

    def _one_hot(self, groups: Tensor) -> Tensor:
        return torch.nn.functional.one_hot(groups, self.c_dim).float().to(self.ctx.device)

    def train_step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        ctx, t = self.ctx, self.config["train"]
        self.set_learning_rates(step)
        x = ctx.images(batch["image"]) * 2 - 1  # [B, 3, S, S] in [-1, 1]
        y_s = ages_to_groups(batch["age"], self.c_dim)  # [B]
        y_t = (y_s + torch.randint(1, self.c_dim, y_s.shape, generator=ctx.generator)) % self.c_dim  # another group
        c_s, c_t = self._one_hot(y_s), self._one_hot(y_t)  # [B, K]

        # D1: critic + classification on real images, critic on the (detached) aged ones.
        self.D.requires_grad_(True)
        with ctx.autocast():
            with torch.no_grad():
                color, attention = self.G(x, c_t)
                x_t = mask_blend(x, attention, color)  # [B, 3, S, S]
            loss_d1, parts = d_loss_step1(self.D, x, c_s, x_t, self.weights, t["ce"])
        ctx.optimize("D", self.opt_d, loss_d1)
        # D2: gradient penalty (fp32: a double backward), a second step on D.
        gp = gradient_penalty(self.D, x.float(), x_t.float(), weight=self.weights.gp, generator=ctx.generator)
        ctx.optimize("D", self.opt_d, gp)
        losses = {**parts, "d_gp": gp.detach()}

        if (step % ctx.steps_per_epoch) % t["g_every"] == t["g_every"] - 1:
            self.D.requires_grad_(False)
            with ctx.autocast():
                color, attention = self.G(x, c_t)
                x_t = mask_blend(x, attention, color)
                loss_g, g_parts = g_loss(
                    self.D, x_t, c_t, attention, self.weights, t["ce"], t["mask_form"], t["smooth_form"]
                )
            ctx.optimize("G", self.opt_g, loss_g)
            self.D.requires_grad_(True)
            losses.update(g_parts)
        return losses

    def sample_targets(self) -> list[float]:
        return [g.representative_age() for g in AcGANAdapter().age_groups(self.model_config)]

    @torch.no_grad()
    def sample(self, images: Tensor, target_ages: Sequence[float]) -> Tensor:
        x = images.to(self.ctx.device) * 2 - 1
        rows = []
        for age in target_ages:
            groups = ages_to_groups(torch.full((x.shape[0],), float(age)), self.c_dim).to(x.device)
            out, _, _ = self.G.generate(x, groups)
            rows.append((out.float() + 1) / 2)
        return torch.stack(rows, dim=1).clamp(0, 1)  # [B, T, 3, S, S]

    def inference_checkpoint(self) -> InferenceCheckpoint:
        return InferenceCheckpoint("acgan", dict(self.config["model"]), self.G.state_dict())
