"""``load(..., config=...)`` with an official checkpoint: applied when the weights fit it, refused otherwise;
the engine's config label names the layout it really has."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import pyagingrt
from pyagingrt.errors import CheckpointError

from ..models.test_acgan import official_generator_shapes, random_state
from ..models.test_ageflow import TINY as AGEFLOW_TINY
from ..models.test_ageflow import official_generator


def test_acgan_config_dict_is_applied_to_an_official_generator(tmp_path):
    path = tmp_path / "00100_netG.pth"
    torch.save(random_state(official_generator_shapes(8, 5, 2)), path)  # sizes inferred; the crop is not stored
    plain = pyagingrt.load("acgan", checkpoint=path, device="cpu")
    assert plain.input_size == 224
    assert plain.config_name is None  # an 8-wide, 2-block G is not the paper layout
    wanted = dataclasses.asdict(plain.config) | {"image_size": 64}
    with pytest.warns(UserWarning, match=r"image_size 224 -> 64"):
        engine = pyagingrt.load("acgan", checkpoint=path, device="cpu", config=wanted)
    assert engine.input_size == 64
    assert engine.age(torch.rand(1, 3, 64, 64), 40).shape == (1, 3, 64, 64)


def test_ageflow_config_dict_the_weights_cannot_fit_is_refused(tmp_path):
    path = tmp_path / "generator-100000"
    torch.manual_seed(1)
    torch.save(official_generator(AGEFLOW_TINY.levels, AGEFLOW_TINY.steps, AGEFLOW_TINY.hidden), path)
    assert pyagingrt.load("ageflow", checkpoint=path, device="cpu").config_name == "tiny"
    wider = dataclasses.asdict(AGEFLOW_TINY) | {"hidden": 64}
    with pytest.raises(CheckpointError, match=r"config= does not fit .*hidden 32 -> 64") as info:
        pyagingrt.load("ageflow", checkpoint=path, device="cpu", config=wider)
    assert "\n" not in str(info.value)
