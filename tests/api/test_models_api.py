"""Every model through the public API on its tiny config: save -> load is bit-identical, a batch of N equals
N batches of 1, the native backend's CPU rewrites match the torch backend, and agingrt info describes it."""

from __future__ import annotations

import warnings

import pytest
import torch

import pyagingrt
from pyagingrt import RandomWeightsWarning

MODELS = pyagingrt.models()
# Tolerances: batch-vs-single and native-vs-torch compare the same fp32 maths in another order/grouping
# (convolutions over a different batch size pick other CPU kernels): a few 1e-6 on outputs in [0, 1].
FP32_TOL = 1e-5


def tiny(model: str, **kwargs) -> pyagingrt.Engine:
    with pytest.warns(RandomWeightsWarning):
        return pyagingrt.load(model, config="tiny", device="cpu", **kwargs)


def call(engine: pyagingrt.Engine, x: torch.Tensor, ages) -> torch.Tensor:
    options = {"steps": 3} if engine.model == "pada" else {}
    return engine.age(x, ages, seed=7, **options)


def ages_for(engine: pyagingrt.Engine, n: int) -> list[float]:
    groups = engine.age_groups
    return [groups[(i * 3 + 1) % len(groups)].representative_age() for i in range(n)]


@pytest.mark.parametrize("model", MODELS)
def test_save_load_roundtrip_is_bit_identical(model, tmp_path):
    eng = tiny(model)
    path = eng.save(tmp_path / f"{model}.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)  # PADA: the checkpoint holds no CLIP
        again = pyagingrt.load(path, device="cpu")
    assert again.model == model
    a, b = eng.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    x = torch.rand(2, 3, eng.input_size, eng.input_size)
    ages = ages_for(eng, 2)
    assert torch.equal(call(eng, x, ages), call(again, x, ages))


@pytest.mark.parametrize("model", MODELS)
def test_batch_of_n_equals_n_batches_of_one(model):
    eng = tiny(model)
    x = torch.rand(3, 3, eng.input_size, eng.input_size)
    ages = ages_for(eng, 3)
    batch = call(eng, x, ages)
    singles = torch.cat([call(eng, x[i : i + 1], ages[i]) for i in range(3)])
    assert batch.shape[0] == 3
    torch.testing.assert_close(batch, singles, atol=FP32_TOL, rtol=0)


@pytest.mark.parametrize("model", MODELS)
def test_native_backend_on_cpu_matches_torch(model):
    ref = tiny(model)
    path_free = pyagingrt.load  # same random weights: copy the torch engine's state into the native one
    with pytest.warns(RandomWeightsWarning):
        native = path_free(model, config="tiny", device="cpu", backend="native")
    native.module.load_state_dict(ref.module.state_dict())
    native.runner = type(native.runner)(native.adapter, native.module, native.config, native.device, native.dtype)
    x = torch.rand(2, 3, ref.input_size, ref.input_size)
    ages = ages_for(ref, 2)
    torch.testing.assert_close(call(native, x, ages), call(ref, x, ages), atol=FP32_TOL, rtol=0)


@pytest.mark.parametrize("model", MODELS)
def test_info_describes_the_model(model):
    info = tiny(model).info()
    assert info["parameters"] > 0
    assert info["gflop_per_image"] > 0
    assert info["age_groups"]
