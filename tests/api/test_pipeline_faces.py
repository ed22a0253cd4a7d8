"""The photo pipeline end to end with test engines: detect -> align -> model -> paste-back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyagingrt.errors import InputError, NoFaceError
from pyagingrt.pipeline.align import Alignment
from pyagingrt.pipeline.faces import FacePipeline, is_stochastic, run_engine
from tests.api.pipeline_adapters import load_test_engine, register_test_models

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture
def engines(monkeypatch):
    register_test_models(monkeypatch)
    return {name: load_test_engine(name, size=64) for name in ("identity", "noisy")}


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


@pytest.mark.parametrize("alignment", [Alignment("ffhq"), Alignment("template", 0.1)])
def test_identity_model_gives_the_photo_back(engines, astronaut, alignment):
    pipe = FacePipeline(engines["identity"], alignment=alignment)
    out = pipe.age(astronaut, 70)
    assert out.shape == astronaut.shape
    assert out.dtype == np.uint8
    diff = np.abs(out.astype(int) - astronaut.astype(int))
    changed = diff.max(axis=2) > 0
    assert changed.mean() < 0.1  # only the face region (~5% of this portrait) is touched
    # What is left is the error of resampling twice (photo -> 64 px crop -> photo) inside the mask: the crop is
    # coarser than the face, so the photo's finest detail is lost there. Measured: mean ~0.4 level over the
    # photo; a broken transform (crop pasted off by a few pixels, or flipped) gives > 3.
    assert diff.mean() < 1.0
    # the crop keeps what a 64 px image can hold: the face region, low-passed, matches closely
    blur = np.abs(torch.nn.functional.avg_pool2d(torch.from_numpy(diff).permute(2, 0, 1).float()[None], 9, 1).numpy())
    assert blur.max() < 40


def test_no_face_raises(engines):
    pipe = FacePipeline(engines["identity"])
    with pytest.raises(NoFaceError, match="no face found"):
        pipe.age(np.full((120, 160, 3), 200, np.uint8), 70)


def test_bad_photo_and_face_choice_raise(engines, astronaut):
    with pytest.raises(InputError, match="uint8 RGB arrays"):
        FacePipeline(engines["identity"]).age(astronaut.astype(np.float32), 70)
    with pytest.raises(InputError, match="face 2 was asked for but only 1"):
        FacePipeline(engines["identity"], face=2).age(astronaut, 70)
    with pytest.raises(InputError, match="'all', 'largest' or a number"):
        FacePipeline(engines["identity"], face="everyone")


def test_stochastic_model_gives_the_same_face_for_the_same_seed(engines, astronaut):
    pipe = FacePipeline(engines["noisy"])
    first, again = pipe.age(astronaut, 70, seed=3), pipe.age(astronaut, 70, seed=3)
    np.testing.assert_array_equal(first, again)
    other = pipe.age(astronaut, 70, seed=4)
    assert np.abs(other.astype(int) - first.astype(int)).max() > 20  # the seed matters (noise std 0.2)


def test_stochastic_engine_gets_one_call_per_seed(engines):
    """Two identical crops in one batch with the same seed must come out identical, even though this model
    draws a batch's noise in sequence (so a shared call would give them different noise)."""
    engine = engines["noisy"]
    assert is_stochastic(engine)
    assert not is_stochastic(engines["identity"])
    crops = torch.rand(1, 3, 64, 64).expand(3, -1, -1, -1).contiguous()
    out = run_engine(engine, crops, 70, [5, 5, 6], {})
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)
    assert not torch.equal(out[0], out[2])
