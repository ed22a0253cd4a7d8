"""PADA's native runner: DiffAE sampling rewritten for inference (docs/models/pada.md sections 4 and 10).

Rewrites, each exact in real arithmetic (fp32 results differ from the torch backend only by rounding order):

1. **Hoisted time path** (docs/models/pada.md 10 item 1). The T scheduled timesteps are fixed, so the time MLP and every
   conditioned ResBlock's ``emb_layers`` depend on the step alone. :func:`time_table` evaluates them once per
   ``steps`` (at build for the config's steps, otherwise in ``prepare`` on first use) and folds them with the
   ResBlock's second GroupNorm affine (g, beta): ``gain = g * (1 + s_t)``, ``shift = beta * (1 + s_t) + b_t``,
   fp32 tables [T, sum C] with all 42 blocks (paper) side by side.
2. **Hoisted condition path** (docs/models/pada.md 10 item 2). ``cond_emb_layers(SiLU(z))`` does not depend on the step:
   one GEMM per call against the 42 weights concatenated (:func:`condition_scale`, [N, Z] x [Z, sum C]). With the
   time table it gives each block's folded affine for every step at once (:func:`modulation_tables`):
   ``GN_b(h) * (1 + s_t) + b_t) * (1 + s_c) = norm(h) * a + b`` with ``a = gain * (1 + s_c)`` and
   ``b = shift * (1 + s_c)`` (docs/models/pada.md 10 item 3), so a step slices its rows and launches no small kernels.
3. **Fused GroupNorm + affine + SiLU** (D24, docs/models/pada.md 10 item 3): one ``agingrt::group_norm_act`` per norm
   (:func:`group_norm_act`, :func:`modulated_group_norm_act`): fp32 statistics, the folded per-(n, c) affine and
   SiLU in fp32 in one pass, the result stored in the engine dtype and layout for the next conv. The GN affines
   the runner applies itself are fp32 copies made once at build.
4. **Phase-decomposed up-ResBlocks** (docs/models/pada.md 10 item 4, ``phase_up``): nearest x2 followed by conv3x3
   equals four 2x2 convolutions of the low-resolution input whose taps are the conv's taps summed per phase
   (:func:`phase_weights`): 16 instead of 36 multiply-adds per 2x2 output block, and no 4x upsampled tensor.
   On by default; its speed against cuDNN's plain conv on the upsampled tensor still needs a GPU measurement.
5. **Attention through SDPA** (docs/models/pada.md 10 item 5): ``v softmax((q C^-1/4)^T (k C^-1/4))^T`` is SDPA with
   scale 1/sqrt(C) on token-major q, k, v; the qkv and proj_out 1x1 convs become linear layers on [N, T, C] tokens,
   a free view of a channels_last activation.
6. **Fused DDIM step**: each update through ``pyagingrt.ops.ddim_step`` (clip=True, DiffAE's clip_denoised),
   x_t and its arithmetic in fp32, eps in the engine dtype (D24); inversion is the same op with abar_next.
7. **Pluralistic batching** (docs/models/pada.md 10 item 8): the K samples of an image share its z_src (and, for
   ``x_T="invert"``, its inversion): the encoder runs at batch B and the UNet at batch B*K.
8. **Graph-safe forward**: ``prepare`` does all host work: the seed rule (D10, the same draws as the torch
   backend), CLIP text embeddings (the 7 groups x 3 genders cached per CLIP at build, free text in PADA's
   prompt cache) and reference embeddings with the PAE, returning [B, ...] tensors (x_T [B, K, 3, S, S], eta
   [B, K, D]); ``forward`` (encoder, modulation, inversion, all sampling steps) launches device work only, so
   one CUDA graph per (batch bucket, :meth:`PADARunner.graph_key`) replays the whole call.
9. **Precision and layout**: UNet and encoder weights in the engine dtype (fp16/bf16 on CUDA), channels_last
   on CUDA; the time/condition tables, CLIP, the PAE and the modulation in fp32.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._extension import has_native
from ..errors import InputError
from ..ops.ddim_step import ddim_step
from ..ops.group_norm_act import group_norm_act as fused_group_norm_act
from ..training.layers.ddim_schedule import DDIMSchedule
from ..training.layers.diffae import AttentionBlock, EmbedSequential, ResBlock
from ..training.models.pada import GENDERS, PADA, DiffAE, pluralistic_noise
from .runner import NativeRunner, check_target_indices


# --- rewrites 1-2: hoisted time and condition paths ----------------------------------------------------------------
@dataclass(frozen=True)
class TimeTable:
    """The folded GN_b affine of every conditioned ResBlock at every scheduled step (rewrite 1)."""

    schedule: DDIMSchedule
    gain: Tensor  # [T, sum C] fp32: g * (1 + s_t); row k is timestep schedule.timesteps[k]
    shift: Tensor  # [T, sum C] fp32: beta * (1 + s_t) + b_t


def conditioned_resblocks(unet: DiffAE) -> list[ResBlock]:
    """The UNet's conditioned ResBlocks in forward order (input, middle, output blocks): 42 for paper."""
    blocks = [*unet.input_blocks, unet.middle_block, *unet.output_blocks]
    return [layer for block in blocks for layer in block if isinstance(layer, ResBlock) and layer.conditioned]


def block_offsets(blocks: Sequence[ResBlock]) -> list[int]:
    """Start column of each block in the concatenated [*, sum C] tables."""
    widths = [int(b.out_layers[0].num_channels) for b in blocks]
    return [sum(widths[:i]) for i in range(len(widths))]


@torch.no_grad()
def time_table(unet: DiffAE, blocks: Sequence[ResBlock], schedule: DDIMSchedule) -> TimeTable:
    """Rewrite 1 from the master UNet: the time MLP and each ``emb_layers`` for all T timesteps at once.

    Returns:
        TimeTable with gain, shift Tensor[T, sum C] in the UNet's dtype (fp32: the engine's master) and device.
    """
    weight = unet.out[2].weight
    t = torch.tensor(schedule.timesteps, dtype=torch.float32, device=weight.device)  # [T] original timesteps
    emb = unet.time_embed(t)  # [T, E] in the UNet's dtype (fp32 for the engine's master copy)
    gains, shifts = [], []
    for block in blocks:
        scale_t, shift_t = block.emb_layers(emb).chunk(2, dim=1)  # [T, C] each, scale first
        norm = block.out_layers[0]
        gains.append(norm.weight * (1 + scale_t))  # [T, C]
        shifts.append(norm.bias * (1 + scale_t) + shift_t)  # [T, C]
    return TimeTable(schedule, torch.cat(gains, dim=1), torch.cat(shifts, dim=1))  # [T, sum C] each


def condition_weights(blocks: Sequence[ResBlock]) -> tuple[Tensor, Tensor]:
    """The blocks' ``cond_emb_layers`` Linear weights stacked: (weight [sum C, Z], bias [sum C]), their dtype."""
    linears = [block.cond_emb_layers[1] for block in blocks]
    weight = torch.cat([lin.weight.detach() for lin in linears], dim=0)  # [sum C, Z]
    bias = torch.cat([lin.bias.detach() for lin in linears], dim=0)  # [sum C]
    return weight, bias


def condition_scale(cond: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Rewrite 2: ``1 + cond_emb_layers(SiLU(cond))`` of all blocks in one GEMM.

    Args:
        cond: Tensor[N, Z] (z_age, or z_src for the inversion).
        weight, bias: from :func:`condition_weights`.

    Returns:
        Tensor[N, sum C] in weight's dtype (fp32 in the engine).
    """
    return torch.addmm(bias, F.silu(cond.to(weight.dtype)), weight.t()).add_(1.0)  # [N, sum C]


def modulation_tables(table: TimeTable, cond_scale: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample, per-step folded affine: (a, b), each Tensor[N, T, sum C]
    in the tables' dtype (docs/models/pada.md 10 item 3)."""
    a = table.gain[None] * cond_scale[:, None]  # [N, T, sum C]
    b = table.shift[None] * cond_scale[:, None]  # [N, T, sum C]
    return a, b


# --- rewrite 3: GroupNorm in fp32 ----------------------------------------------------------------------------------
def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp16/bf16/fp32 activations (D24); fp64 stays fp64 (tests check the algebra in float64)."""
    return torch.promote_types(dtype, torch.float32)


def group_norm_act(
    x: Tensor,
    norm: nn.GroupNorm,
    dtype: torch.dtype,
    act: bool = True,
    affine: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """GN with its own affine (then SiLU), fp32 statistics and maths, one fused op.

    Args:
        x: Tensor[N, C, H, W], any float dtype and memory format.
        norm: the GroupNorm (its group count, eps and, without ``affine``, its weight and bias).
        dtype: the dtype of the result (the engine dtype).
        act: SiLU after the affine.
        affine: (weight, bias), each Tensor[C] in :func:`accumulation_dtype` (precomputed at build), or None to
            convert the norm's own.

    Returns:
        Tensor[N, C, H, W] in ``dtype`` and x's memory format.
    """
    acc = accumulation_dtype(x.dtype)
    weight, bias = affine if affine is not None else (norm.weight.to(acc), norm.bias.to(acc))  # [C] each
    h = fused_group_norm_act(x, norm.num_groups, weight, bias, norm.eps, "silu" if act else "none")  # [N, C, H, W]
    return h.to(dtype)  # [N, C, H, W]; a no-op when x is already in the engine dtype


def modulated_group_norm_act(x: Tensor, norm: nn.GroupNorm, a: Tensor, b: Tensor, dtype: torch.dtype) -> Tensor:
    """SiLU(norm(x) * a + b), GN statistics and affine in fp32 (rewrites 2-3).

    Args:
        x: Tensor[N, C, H, W], any float dtype and memory format.
        norm: the block's GN_b (only its group count and eps are used: the affine is folded into a, b).
        a, b: Tensor[N, C] from :func:`modulation_tables` at one step (fp32 in the engine); a column slice of the
            [N, sum C] table is read in place.

    Returns:
        Tensor[N, C, H, W] in ``dtype`` and x's memory format.
    """
    acc = accumulation_dtype(x.dtype)
    h = fused_group_norm_act(x, norm.num_groups, a.to(acc), b.to(acc), norm.eps, "silu")  # [N, C, H, W]
    return h.to(dtype)  # [N, C, H, W]


# --- rewrite 4: phase-decomposed nearest x2 + conv3x3 --------------------------------------------------------------
# Output phase p of nearest x2 + conv3x3 reads input rows i - 1, i, i (p = 0) or i, i, i + 1 (p = 1), so the
# kernel's 3 taps along an axis fold into 2: (start, length) of the taps summed into each of the 2.
_PHASE_TAPS = (((0, 1), (1, 2)), ((0, 2), (2, 1)))


def _fold_taps(weight: Tensor, dim: int, phase: int) -> Tensor:
    """Sum the 3 taps of ``weight`` along ``dim`` into the 2 taps of ``phase``."""
    return torch.stack([weight.narrow(dim, start, n).sum(dim) for start, n in _PHASE_TAPS[phase]], dim=dim)


def phase_weights(weight: Tensor) -> Tensor:
    """2x2 kernels of the four output phases of nearest x2 followed by conv3x3 (padding 1).

    Args:
        weight: Tensor[Cout, Cin, 3, 3].

    Returns:
        Tensor[2, 2, Cout, Cin, 2, 2]: [p, q] is the kernel of output phase (row p, column q).
    """
    rows = [_fold_taps(weight, 2, p) for p in (0, 1)]  # [Cout, Cin, 2, 3] each
    return torch.stack([torch.stack([_fold_taps(r, 3, q) for q in (0, 1)]) for r in rows])  # [2, 2, Co, Ci, 2, 2]


def upsample_conv3x3(x: Tensor, phases: Tensor, bias: Tensor | None) -> Tensor:
    """conv3x3(nearest_x2(x)) with padding 1 as four 2x2 convs (rewrite 4).

    Args:
        x: Tensor[N, Cin, H, W].
        phases: Tensor[2, 2, Cout, Cin, 2, 2] from :func:`phase_weights`, x's dtype.
        bias: Tensor[Cout] or None.

    Returns:
        Tensor[N, Cout, 2H, 2W] in x's memory format.
    """
    n, _, hh, ww = x.shape
    padded = F.pad(x, (1, 1, 1, 1))  # [N, Cin, H + 2, W + 2]; zero rows -1 and H, as zero padding upsampled
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    out = x.new_empty(n, phases.shape[2], 2 * hh, 2 * ww).contiguous(memory_format=fmt)  # [N, Cout, 2H, 2W]
    grid = out.unflatten(3, (ww, 2)).unflatten(2, (hh, 2))  # [N, Cout, H, 2, W, 2] view of out
    for p in (0, 1):
        for q in (0, 1):
            window = padded[:, :, p : p + hh + 1, q : q + ww + 1]  # [N, Cin, H + 1, W + 1]
            grid[:, :, :, p, :, q] = F.conv2d(window, phases[p, q], bias)  # [N, Cout, H, W]
    return out


def _per_sample(t: Tensor, k: int) -> Tensor:
    """Row b -> rows b*K .. b*K + K-1 (repeat_interleave by expand: no repeats tensor, no host sync)."""
    return t[:, None].expand(t.shape[0], k, *t.shape[1:]).flatten(0, 1)  # [B*K, ...]


# --- the runner ------------------------------------------------------------------------------------------------------
class PADARunner(NativeRunner):
    """PADA with hoisted time/condition paths, fp32 GroupNorm, SDPA attention and one graph-safe forward (see the
    module docstring for each rewrite).

    Keyword options (defaults by device; tests set them to run the CUDA choices on CPU):
        channels_last: NHWC activations and weights (default: CUDA).
        phase_up: phase-decomposed up-ResBlock convs (default: on).
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
        phase_up: bool = True,
    ) -> None:
        super().__init__(adapter, module, config, device, dtype)
        if not isinstance(module, PADA):
            raise TypeError(f"PADARunner needs the PADA module, got {type(module).__name__}")
        self.master = module  # fp32: CLIP, PAE, modulation, the time MLP for new tables
        self.channels_last = device.type == "cuda" if channels_last is None else channels_last
        self.phase_up = phase_up
        self.acc = accumulation_dtype(dtype)  # GN, tables, x_t and the DDIM arithmetic (D24)
        # The compiled op when the extension is built, else its oracle (the same maths): said, never hidden.
        self.ddim_impl = "native" if has_native() else "torch"
        with torch.no_grad():
            self._build(module)
        self.register_tensors()  # the condition weights become buffers: the runner is the inference graph's module

    # --- build ---------------------------------------------------------------------------------------------
    def _build(self, module: PADA) -> None:
        self.module = copy.deepcopy(module.diffae).to(device=self.device, dtype=self.dtype)  # UNet + encoder
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.module.eval().requires_grad_(False)
        # The GN affines the runner applies itself (in_layers, attention, out), in the accumulation dtype once,
        # held as buffers of the runner's copy of each GroupNorm.
        for m in self.module.modules():
            if isinstance(m, nn.GroupNorm) and m.affine:
                m.register_buffer("acc_weight", m.weight.detach().to(self.acc))  # [C]
                m.register_buffer("acc_bias", m.bias.detach().to(self.acc))  # [C]
        self.master_blocks = conditioned_resblocks(module.diffae)
        self.blocks = conditioned_resblocks(self.module)
        self.slots = {
            id(block): (offset, int(block.out_layers[0].num_channels))
            for block, offset in zip(self.blocks, block_offsets(self.blocks), strict=True)
        }
        weight, bias = condition_weights(self.master_blocks)
        self.cond_weight = weight.to(self.device, self.acc)  # [sum C, Z]
        self.cond_bias = bias.to(self.device, self.acc)  # [sum C]
        for block in self.blocks:  # rewrite 4's kernels, a buffer of the runner's copy of each up-block
            phases = phase_weights(block.in_layers[2].weight.to(self.acc)).to(self.dtype) if self.phase_up else None
            block.register_buffer("up_phases", phases if block.up else None)  # [2, 2, Co, Ci, 2, 2]
        self._schedules: dict[int, DDIMSchedule] = {}  # by steps; their tables are buffers (time_table)
        self.table(self.config.steps)
        self.prompt_table: dict[tuple[int, str], Tensor] = {}
        self.prompt_clip: object | None = None
        if module._clip is not None:  # the 7 groups x 3 genders at build (docs/models/pada.md 10 item 8)
            for group in range(len(self.adapter.age_groups(self.config))):
                for gender in GENDERS:
                    self._prompt(group, gender)

    def table(self, steps: int) -> TimeTable:
        """The hoisted time table of a ``steps``-step schedule, built on first use (host side only)."""
        if steps not in self._schedules:
            table = time_table(self.master.diffae, self.master_blocks, DDIMSchedule.diffae(steps))
            self.register_buffer(f"time_gain_{steps}", table.gain.to(self.acc))  # [T, sum C]
            self.register_buffer(f"time_shift_{steps}", table.shift.to(self.acc))  # [T, sum C]
            self._schedules[steps] = table.schedule
        return self.time_table(steps)

    def time_table(self, steps: int) -> TimeTable:
        """A built ``steps``-step table, its tensors read from the module's buffers (so they follow ``.to()``)."""
        gain, shift = getattr(self, f"time_gain_{steps}"), getattr(self, f"time_shift_{steps}")
        return TimeTable(self._schedules[steps], gain, shift)

    @property
    def tables(self) -> dict[int, TimeTable]:
        """The built time tables by steps."""
        return {steps: self.time_table(steps) for steps in self._schedules}

    # --- host side -------------------------------------------------------------------------------------------
    def _prompt_embeddings(self, groups: Sequence[int], genders: Sequence[str]) -> Tensor:
        """e_txt [B, D] of each image's (group, gender), cached per CLIP (rewrite 8)."""
        return torch.stack([self._prompt(group, gender) for group, gender in zip(groups, genders, strict=True)])

    def _prompt(self, group: int, gender: str) -> Tensor:
        """e_txt [D] of one (group, gender): the adapter's own maths (neutral: renormalised mean), so bitwise equal."""
        if self.prompt_clip is not self.master._clip:  # a new CLIP invalidates the table
            self.prompt_table.clear()
            self.prompt_clip = self.master._clip
        key = (int(group), gender)
        if key not in self.prompt_table:
            options = {"text": None, "gender": [gender]}
            self.prompt_table[key] = self.adapter.text_targets(self.master, torch.tensor([key[0]]), options)[0]  # [D]
        return self.prompt_table[key]

    def prepare(
        self, images: Tensor, targets: Tensor, generator: torch.Generator | None, options: dict[str, Any]
    ) -> dict[str, Tensor]:
        """Host work: noise by the seed rule, CLIP embeddings, the PAE. Returns, on the runner's device,
        {"images": float32 [B, 3, S, S] in [0, 1], "e_mean": [B, D], "e_scale": [B, D], "eta": [B, K, D]} and,
        when x_T is random, "x_T": [B, K, 3, S, S]; e_age = e_mean + e_scale * eta. Options were validated by
        the adapter; the tables for ``steps`` / ``invert_steps`` are built here on first use."""
        size, k = self.config.image_size, options["num_samples"]
        batch = images.shape[0]
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise InputError(
                f"PADA ({size}x{size} config) needs aligned crops of shape [B, 3, {size}, {size}], got "
                f"{tuple(images.shape)}; align and resize faces to {size}x{size} first (pyagingrt.pipeline)"
            )
        check_target_indices(targets, batch, None, "PADA")  # the adapter's text/prompt tables give the range
        self.table(options["steps"])
        if options["x_T"] == "invert":
            self.table(options["invert_steps"])
        self.adapter.ensure_clip(self.master)
        # D10, exactly as the torch backend draws it: one base seed from the generator, per-sample CPU seeds.
        seed = self.adapter.base_seed(generator)
        x_rand, eta = pluralistic_noise(seed, k, images.shape[1:], self.config.clip_dim, options["vary"])
        e_mean, e_scale = self._embedding(targets, options, batch)  # [B, D] each
        inputs = {
            "images": images.to(self.device, torch.float32),  # [B, 3, S, S]
            "e_mean": e_mean,  # [B, D]
            "e_scale": e_scale,  # [B, D]
            "eta": eta.to(self.device).expand(batch, -1, -1).contiguous(),  # [B, K, D]
        }
        if options["x_T"] == "random":
            inputs["x_T"] = x_rand.to(self.device).expand(batch, *x_rand.shape).contiguous()  # [B, K, 3, S, S]
        return inputs

    def _embedding(self, targets: Tensor, options: dict[str, Any], batch: int) -> tuple[Tensor, Tensor]:
        """(e_mean, e_scale), float32 [B, D] each, with e_age = e_mean + e_scale * eta (P section 3.2.1)."""
        master, s = self.master, options["s"]
        with torch.no_grad():
            if options["reference"] is not None:
                ref = options["reference"].to(self.device).float() * 2.0 - 1.0  # [1 or B, 3, H, W] in [-1, 1]
                mu, logvar = master.pae(master.image_embedding(ref))  # [1 or B, D] each
                sigma = torch.exp(logvar / 2)  # [1 or B, D]
                return mu.expand(batch, -1), (sigma * s).expand(batch, -1)  # Eq. (5), reparameterised
            if options["text"] is not None:
                e_txt = master.text_embedding(options["text"])  # [B, D], cached per prompt by PADA
            else:
                e_txt = self._prompt_embeddings(targets.cpu().tolist(), options["gender"])  # [B, D]
        e_txt = e_txt.to(self.device)  # [B, D]
        return e_txt, torch.full_like(e_txt, self.config.text_noise * s)  # [B, D] each

    def graph_key(self, options: dict[str, Any]) -> Hashable:
        """Only what changes the device work: text, gender, reference, s and vary reach forward as tensors."""
        invert = options["x_T"] == "invert"
        invert_steps = options["invert_steps"] if invert else 0
        return options["num_samples"], options["steps"], invert, invert_steps, options["stats"]

    # --- device side -----------------------------------------------------------------------------------------
    def forward(self, inputs: dict[str, Tensor], options: dict[str, Any]) -> Tensor:
        """Encoder, modulation, (inversion,) the DDIM loop: Tensor[B, 3, S, S], or [B, K, 3, S, S] for K > 1,
        float32 in [0, 1]. No host synchronisation (CUDA-graph safe)."""
        images = inputs["images"]  # [B, 3, S, S]
        batch, k = images.shape[0], options["num_samples"]
        x = images.float().mul(2.0).sub(1.0)  # [B, 3, S, S] in [-1, 1], as the torch backend computes it
        z_src = self.encode(x)  # [B, Z], once per image (rewrite 7)
        e_age = inputs["e_mean"][:, None] + inputs["e_scale"][:, None] * inputs["eta"]  # [B, K, D]
        z_age = self.master.modulate(e_age.flatten(0, 1), _per_sample(z_src, k), options["stats"])  # [B*K, Z]
        if options["x_T"] == "invert":
            x_T = _per_sample(self.invert(x, z_src, options["invert_steps"]), k)  # [B*K, 3, S, S]
        else:
            x_T = inputs["x_T"].flatten(0, 1)  # [B*K, 3, S, S]
        x0 = self.decode(x_T, z_age, options["steps"])  # [B*K, 3, S, S] in [-1, 1]
        out = ((x0 + 1.0) / 2.0).clamp(0.0, 1.0)  # [B*K, 3, S, S]
        return out.reshape(batch, k, *out.shape[1:]) if k > 1 else out  # [B, K, 3, S, S] or [B, 3, S, S]

    def encode(self, x: Tensor) -> Tensor:
        """Semantic encoder: x [B, 3, S, S] in [-1, 1] -> z_src [B, Z] float32."""
        return self.module.encoder(self._layout(x)).float()  # [B, Z]

    def decode(self, x_T: Tensor, z: Tensor, steps: int) -> Tensor:
        """DDIM sampling (eta = 0, clipped x0), steps k = T-1 .. 0: x_T [N, 3, S, S], z [N, Z] -> x0 fp32."""
        table = self.time_table(steps)
        a, b = modulation_tables(table, condition_scale(z, self.cond_weight, self.cond_bias))  # [N, T, sum C]
        x = x_T.to(self.acc)  # [N, 3, S, S] fp32 (D24)
        for row, (_, abar, abar_prev) in zip(reversed(range(steps)), table.schedule.sampling_pairs(), strict=True):
            eps = self.eps(x, a[:, row], b[:, row])  # [N, 3, S, S] in the engine dtype
            x = ddim_step(x, eps, abar, abar_prev, clip=True, impl=self.ddim_impl)  # [N, 3, S, S]
        return x

    def invert(self, x: Tensor, z: Tensor, steps: int) -> Tensor:
        """DDIM inversion (k = 0 .. T-1, abar_next): x [N, 3, S, S] in [-1, 1], z_src [N, Z] -> x_T fp32."""
        table = self.time_table(steps)
        a, b = modulation_tables(table, condition_scale(z, self.cond_weight, self.cond_bias))  # [N, T, sum C]
        h = x.to(self.acc)  # [N, 3, S, S]
        for row, (_, abar, abar_next) in enumerate(table.schedule.inversion_pairs()):
            h = ddim_step(h, self.eps(h, a[:, row], b[:, row]), abar, abar_next, clip=True, impl=self.ddim_impl)
        return h

    def eps(self, x_t: Tensor, a: Tensor, b: Tensor) -> Tensor:
        """One UNet evaluation with hoisted tables: x_t [N, 3, S, S], a / b float32 [N, sum C] (one step's rows of
        :func:`modulation_tables`) -> eps [N, 3, S, S] in the engine dtype."""
        unet = self.module
        skips = []
        h = self._layout(x_t)  # [N, 3, S, S]
        for block in unet.input_blocks:
            h = self._sequence(block, h, a, b)  # [N, C, H, W]
            skips.append(h)
        h = self._sequence(unet.middle_block, h, a, b)  # [N, C, H, W]
        for block in unet.output_blocks:
            h = self._sequence(block, torch.cat([h, skips.pop()], dim=1), a, b)  # [N, C, H, W]
        norm, _, conv = unet.out
        return conv(self._norm(h, norm))  # [N, 3, S, S]

    # --- helpers -------------------------------------------------------------------------------------------
    def _layout(self, x: Tensor) -> Tensor:
        x = x.to(self.dtype)  # [N, C, H, W]
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _norm(self, x: Tensor, norm: nn.GroupNorm, act: bool = True) -> Tensor:
        """GN with its own (build-time fp32) affine, then SiLU when ``act``: [N, C, H, W] -> the same."""
        affine = (norm.acc_weight, norm.acc_bias) if hasattr(norm, "acc_weight") else None  # [C] each
        return group_norm_act(x, norm, self.dtype, act, affine)  # [N, C, H, W]

    def _sequence(self, block: EmbedSequential, h: Tensor, a: Tensor, b: Tensor) -> Tensor:
        for layer in block:
            if isinstance(layer, ResBlock):
                offset, width = self.slots[id(layer)]
                h = self._resblock(layer, h, a[:, offset : offset + width], b[:, offset : offset + width])
            elif isinstance(layer, AttentionBlock):
                h = self._attention(layer, h)  # [N, C, H, W]
            else:
                h = layer(h)  # the stem conv, [N, C, S, S]
        return h

    def _resblock(self, block: ResBlock, x: Tensor, a: Tensor, b: Tensor) -> Tensor:
        """Conditioned ResBlock with the step's folded affine a, b [N, C']: [N, C, H, W] -> [N, C', H', W']."""
        norm, _, conv = block.in_layers
        h = self._norm(x, norm)  # [N, C, H, W]
        if block.up:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # [N, C, 2H, 2W]
            phases = block.up_phases
            if phases is None:
                h = conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))  # [N, C', 2H, 2W]
            else:
                h = upsample_conv3x3(h, phases, conv.bias)  # [N, C', 2H, 2W]
        elif block.down:
            x = F.avg_pool2d(x, kernel_size=2, stride=2)  # [N, C, H/2, W/2]
            h = conv(F.avg_pool2d(h, kernel_size=2, stride=2))  # [N, C', H/2, W/2]
        else:
            h = conv(h)  # [N, C', H, W]
        h = modulated_group_norm_act(h, block.out_layers[0], a, b, self.dtype)  # [N, C', H', W']
        h = block.out_layers[3](h)  # [N, C', H', W']; dropout is the identity in eval
        return h.add_(block.skip_connection(x))  # [N, C', H', W']

    def _attention(self, block: AttentionBlock, x: Tensor) -> Tensor:
        """One-head self-attention over H*W tokens through SDPA (rewrite 5): [N, C, H, W] -> the same."""
        n, c, hh, ww = x.shape
        h = self._norm(x, block.norm, act=False)  # [N, C, H, W]
        tokens = h.permute(0, 2, 3, 1).reshape(n, 1, hh * ww, c)  # [N, 1, T, C]; a view when channels_last
        qkv = F.linear(tokens, block.qkv.weight[:, :, 0], block.qkv.bias)  # [N, 1, T, 3C]
        q, k, v = qkv.split(c, dim=-1)  # [N, 1, T, C] each
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(c))  # [N, 1, T, C]
        out = F.linear(out[:, 0], block.proj_out.weight[:, :, 0], block.proj_out.bias)  # [N, T, C]
        return x + out.reshape(n, hh, ww, c).permute(0, 3, 1, 2)  # [N, C, H, W]


__all__ = [
    "PADARunner",
    "TimeTable",
    "accumulation_dtype",
    "condition_scale",
    "condition_weights",
    "conditioned_resblocks",
    "group_norm_act",
    "modulated_group_norm_act",
    "modulation_tables",
    "phase_weights",
    "time_table",
    "upsample_conv3x3",
]
