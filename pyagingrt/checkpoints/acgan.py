"""Official AcGAN checkpoints (JensonZhu14/AcGAN ``{n:05d}_netG.pth`` / ``_netD.pth``) -> our modules' state dicts.

The official files are ``torch.save`` of DataParallel state dicts (every key starts with ``module.``), written
by PyTorch 1.3 in the legacy (non-zip) format. Rules (docs/models/acgan.md section 5):

1. read with ``torch.load(weights_only=True)`` on CPU, legacy or zip format; nothing in the file is executed;
2. strip ``module.`` only when every key has it (a mix is refused);
3. infer conv_dim, c_dim and repeat_num from the weights and check the layer index pattern;
4. refuse missing and unexpected keys (a G convolution bias included) and wrong shapes; drop InstanceNorm
   ``running_*`` / ``num_batches_tracked`` entries with a warning (statistics are per instance anyway);
5. refuse NaN / Inf, cast to float32;
6. a discriminator whose cond_layer has 4 outputs is either the 4-group variant or an ordinal head over
   5 groups: the caller decides (``c_dim`` or the matching generator), ordinal heads are refused;
7. the keys come out in the official registration order, so optimizer states still line up.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from pyagingrt.checkpoint import check_state_dict, torch_load_weights_only
from pyagingrt.errors import CheckpointError
from pyagingrt.training.models.acgan import AcGANConfig, Discriminator, Generator

_PREFIX = "module."
_STAT_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")
_RESIDUAL_KEY = re.compile(r"^main\.(\d+)\.main\.")
_MAIN_INDEX = re.compile(r"^main\.(\d+)\.")


def read_official(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Load an official state dict file with weights_only=True: {key: tensor}, ``module.`` not yet stripped."""
    obj = torch_load_weights_only(path)
    source = str(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source} holds a {type(obj).__name__}, not a state dict; pass an official {{n:05d}}_netG.pth file"
        )
    if "param_groups" in obj and "state" in obj:
        raise CheckpointError(
            f"{source} is an optimizer state (keys 'state', 'param_groups'); pass the {{n:05d}}_netG.pth file instead"
        )
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(
                f"{source} is not a flat state dict: entry {key!r} holds a {type(value).__name__}, not a tensor"
            )
    return dict(obj)


def strip_module_prefix(state: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """Remove DataParallel's ``module.`` when every key has it; refuse a mix of prefixed and bare keys."""
    prefixed = [k for k in state if k.startswith(_PREFIX)]
    if not prefixed:
        return dict(state)
    if len(prefixed) != len(state):
        bare = next(k for k in state if not k.startswith(_PREFIX))
        raise CheckpointError(
            f"{source} mixes keys with and without the DataParallel prefix '{_PREFIX}' (e.g. {prefixed[0]!r} and "
            f"{bare!r}); it was not written by one module. Re-save it from a single model."
        )
    return {k[len(_PREFIX) :]: v for k, v in state.items()}


def drop_norm_statistics(state: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """Remove InstanceNorm running statistics (unused: AcGAN normalises each image by its own statistics)."""
    dropped = [k for k in state if k.endswith(_STAT_SUFFIXES)]
    if dropped:
        warnings.warn(
            f"{source}: ignoring {len(dropped)} InstanceNorm running-statistics entries (e.g. {dropped[0]}); "
            "AcGAN normalises every image with its own statistics, as the official model does",
            UserWarning,
            stacklevel=3,
        )
    return {k: v for k, v in state.items() if not k.endswith(_STAT_SUFFIXES)}


def _require_float(state: Mapping[str, Tensor], source: str) -> None:
    for key, value in state.items():
        if not value.is_floating_point():
            raise CheckpointError(f"{source}: {key} has dtype {value.dtype}; every AcGAN weight is a float tensor")


def _indices(pattern: re.Pattern[str], keys: list[str]) -> list[int]:
    return sorted({int(m.group(1)) for k in keys if (m := pattern.match(k))})


def infer_generator_dims(state: Mapping[str, Tensor], source: str) -> tuple[int, int, int]:
    """(conv_dim, c_dim, repeat_num) of a generator state dict (``module.`` stripped), with the index pattern
    stem main.0, downsampling main.3 and main.6, residual main.9 ... 8+R, upsampling main.9+R and main.12+R."""
    if "main.0.weight" not in state:
        raise CheckpointError(f"{source} has no main.0.weight (the generator's stem conv); is it an AcGAN generator?")
    stem = state["main.0.weight"]
    if stem.dim() != 4 or stem.shape[1] < 4 or tuple(stem.shape[2:]) != (7, 7):
        raise CheckpointError(
            f"{source}: main.0.weight has shape {tuple(stem.shape)}; expected [conv_dim, 3 + c_dim, 7, 7]"
        )
    conv_dim, c_dim = int(stem.shape[0]), int(stem.shape[1]) - 3
    keys = list(state)
    residual = _indices(_RESIDUAL_KEY, keys)
    repeat = len(residual)
    if residual != list(range(9, 9 + repeat)):
        raise CheckpointError(
            f"{source}: residual blocks sit at main.{residual}; expected consecutive main.9 ... main.{8 + repeat}"
        )
    top = [i for i in _indices(_MAIN_INDEX, keys) if i not in residual]
    want = [0, 1, 3, 4, 6, 7, 9 + repeat, 10 + repeat, 12 + repeat, 13 + repeat]
    if top != want:
        odd = sorted(set(top) ^ set(want))
        raise CheckpointError(
            f"{source}: layer indices main.{top} do not follow the official Generator with {repeat} residual "
            f"blocks (expected main.{want}); indices that differ: {odd}"
        )
    return conv_dim, c_dim, repeat


def _refuse_generator_conv_bias(state: Mapping[str, Tensor], source: str) -> None:
    for key in state:
        weight = state.get(key.removesuffix("bias") + "weight") if key.endswith(".bias") else None
        if weight is not None and weight.dim() == 4:
            raise CheckpointError(
                f"{source}: {key} is a convolution bias, but every official AcGAN generator convolution has "
                "bias=False; this is not an official AcGAN generator"
            )


def _finish(module: torch.nn.Module, state: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """Check keys, shapes and finiteness against ``module``; return fp32 tensors in registration order."""
    check_state_dict(module, state, source)
    return {k: state[k].detach().to(torch.float32).contiguous() for k in module.state_dict()}


def _merge(config: AcGANConfig | None, source: str, **fields: int) -> AcGANConfig:
    if config is None:
        return dataclasses.replace(AcGANConfig.paper(), **fields)
    wrong = {k: (v, getattr(config, k)) for k, v in fields.items() if getattr(config, k) != v}
    if wrong:
        found = ", ".join(f"{k}={v} (config: {c})" for k, (v, c) in wrong.items())
        raise CheckpointError(f"{source} does not fit the requested config: the checkpoint has {found}")
    return config


def convert_generator(
    state: Mapping[str, Tensor], source: str, config: AcGANConfig | None = None
) -> tuple[AcGANConfig, dict[str, Tensor]]:
    """Official generator state dict -> (config, state dict of ``Generator(config)``).

    ``config`` None: the paper config (224 crop) with the inferred conv_dim / c_dim / repeat_num.
    Otherwise the inferred sizes must equal the config's.
    """
    state = drop_norm_statistics(strip_module_prefix(state, source), source)
    if "prob_layer.weight" in state or "cond_layer.weight" in state:
        raise CheckpointError(
            f"{source} is an AcGAN discriminator (it has prob_layer / cond_layer); the engine needs the generator, "
            "the {n:05d}_netG.pth file of the same run"
        )
    _refuse_generator_conv_bias(state, source)
    _require_float(state, source)
    conv_dim, c_dim, repeat = infer_generator_dims(state, source)
    config = _merge(config, source, g_conv_dim=conv_dim, c_dim=c_dim, g_repeat_num=repeat)
    with torch.device("meta"):
        module = Generator(config)
    return config, _finish(module, state, source)


def convert_discriminator(
    state: Mapping[str, Tensor],
    source: str,
    config: AcGANConfig | None = None,
    c_dim: int | None = None,
) -> tuple[AcGANConfig, dict[str, Tensor]]:
    """Official discriminator state dict -> (config, state dict of ``Discriminator(config)``).

    Args:
        state: the file's state dict.
        source: name for messages.
        config: image_size (and the G fields) to use; None: the paper config. D sizes are inferred and must
            equal the config's when one is given.
        c_dim: the number of age groups, or None. A cond_layer with n outputs is either n groups or an
            ordinal head over n + 1 groups; None is accepted only for n = 5 (no 6-group variant exists).
            Take it from the matching generator (``infer_generator_dims``) when unsure.
    """
    state = drop_norm_statistics(strip_module_prefix(state, source), source)
    if "img_reg.0.weight" in state or "attention_reg.0.weight" in state:
        raise CheckpointError(f"{source} is an AcGAN generator; convert it with convert_generator")
    _require_float(state, source)
    for key in ("main.0.weight", "cond_layer.weight"):
        if key not in state:
            raise CheckpointError(f"{source} has no {key}; is it an AcGAN discriminator?")
    convs = _indices(_MAIN_INDEX, list(state))
    repeat = len(convs)
    if convs != list(range(0, 2 * repeat, 2)):
        raise CheckpointError(f"{source}: convolutions at main.{convs}; expected main.0, main.2, ... (every other)")
    outputs = int(state["cond_layer.weight"].shape[0])
    if c_dim is None:
        if outputs != 5:
            raise CheckpointError(
                f"{source}: cond_layer.weight has {outputs} outputs, which is either c_dim={outputs} groups or an "
                f"ordinal head over {outputs + 1} groups; pass c_dim (or read it from the matching generator: "
                "main.0.weight.shape[1] - 3)"
            )
        c_dim = outputs
    if c_dim == outputs + 1:
        raise CheckpointError(
            f"{source}: cond_layer.weight has {outputs} = c_dim - 1 outputs, an ordinal-regression head "
            "(is_ordinal_reg=True); it is unsupported (disabled in both official configs, and its softmax cannot "
            "reach multi-hot targets)"
        )
    if c_dim != outputs:
        raise CheckpointError(f"{source}: cond_layer.weight has {outputs} outputs but c_dim is {c_dim}")
    fields = {"d_conv_dim": int(state["main.0.weight"].shape[0]), "d_repeat_num": repeat, "c_dim": c_dim}
    config = _merge(config, source, **fields)
    try:
        with torch.device("meta"):
            module = Discriminator(config)
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc}") from exc
    return config, _finish(module, state, source)


def convert_generator_file(
    path: str | os.PathLike[str], config: AcGANConfig | None = None
) -> tuple[AcGANConfig, dict[str, Tensor]]:
    """Read and convert an official ``{n:05d}_netG.pth``; see :func:`convert_generator`."""
    return convert_generator(read_official(path), str(Path(path)), config)


def convert_discriminator_file(
    path: str | os.PathLike[str],
    config: AcGANConfig | None = None,
    c_dim: int | None = None,
    generator: str | os.PathLike[str] | None = None,
) -> tuple[AcGANConfig, dict[str, Tensor]]:
    """Read and convert an official ``{n:05d}_netD.pth``; ``generator`` (the matching ``_netG.pth``) supplies
    c_dim when it is not given. See :func:`convert_discriminator`."""
    if c_dim is None and generator is not None:
        g_state = strip_module_prefix(read_official(generator), str(generator))
        c_dim = infer_generator_dims(g_state, str(generator))[1]
    return convert_discriminator(read_official(path), str(Path(path)), config, c_dim)
