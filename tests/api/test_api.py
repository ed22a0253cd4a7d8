"""The generic API (load, Engine, project checkpoints, image validation) on a toy adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pyagingrt
from pyagingrt import CheckpointError, InputError, RandomWeightsWarning, UnknownModelError
from pyagingrt.models import registry


def load_toy(**kwargs):
    with pytest.warns(RandomWeightsWarning, match="random weights"):
        return pyagingrt.load("toy", device="cpu", **kwargs)


def test_models_lists_the_four():
    assert pyagingrt.models() == ("ageflow", "acgan", "cusp", "pada")


def test_unknown_model_names_the_choices():
    with pytest.raises(UnknownModelError, match="choose one of: ageflow, acgan, cusp, pada"):
        pyagingrt.load("stylegan9")


@pytest.mark.usefixtures("toy")
class TestLoad:
    def test_random_weights_warn_and_run(self):
        eng = load_toy()
        out = eng.age(torch.rand(2, 3, 8, 8), target_age=40, seed=0)
        assert out.shape == (2, 3, 8, 8)
        assert 0 <= float(out.min()) <= float(out.max()) <= 1

    def test_config_by_name_changes_input_size(self):
        assert load_toy(config="tiny").input_size == 4
        with pytest.raises(InputError, match="has no config 'huge'; choose one of: small, tiny"):
            pyagingrt.load("toy", config="huge", device="cpu")

    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({"device": "tpu"}, InputError, "unknown device"),
            ({"precision": "fp8"}, InputError, "precision must be one of fp32, fp16, bf16, auto"),
            ({"precision": "fp16", "device": "cpu"}, InputError, "needs a CUDA device"),
            ({"backend": "onnx"}, InputError, "backend must be one of"),
            ({"backend": "tensorrt"}, InputError, "TensorRT is reached through backend='onnxruntime'"),
            ({"bogus": 1}, InputError, "does not take bogus"),
        ],
    )
    def test_bad_load_arguments(self, kwargs, error, message):
        with pytest.raises(error, match=message):
            pyagingrt.load("toy", **{"device": "cpu", **kwargs})

    @pytest.mark.parametrize("backend", ["torch", "native"])
    def test_auto_precision_is_fp32_on_cpu(self, backend):
        assert load_toy(precision="auto", backend=backend).precision == "fp32"

    def test_save_then_load_is_bit_identical(self, tmp_path):
        eng = load_toy()
        path = eng.save(tmp_path / "toy.safetensors")
        again = pyagingrt.load(path, device="cpu")
        for (k, a), (k2, b) in zip(eng.state_dict().items(), again.state_dict().items(), strict=True):
            assert k == k2
            assert torch.equal(a, b)
        x = torch.rand(3, 3, 8, 8)
        assert torch.equal(eng.age(x, 10, seed=1), again.age(x, 10, seed=1))
        also = pyagingrt.load("toy", checkpoint=path, device="cpu")
        assert torch.equal(also.age(x, 10), eng.age(x, 10))
        assert not list(tmp_path.glob(".*.tmp")), "no temporary file may remain"

    def test_checkpoint_of_another_model_is_refused(self, tmp_path, monkeypatch):
        path = load_toy().save(tmp_path / "toy.safetensors")
        monkeypatch.setitem(registry._ADAPTERS, "othertoy", "tests.api.toy_adapter:OtherToyAdapter")
        registry.get_adapter.cache_clear()
        with pytest.raises(CheckpointError, match="is a toy checkpoint, not othertoy"):
            pyagingrt.load("othertoy", checkpoint=path, device="cpu")

    def test_truncated_and_missing_checkpoints(self, tmp_path):
        path = load_toy().save(tmp_path / "toy.safetensors")
        data = path.read_bytes()
        (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 40])
        with pytest.raises(CheckpointError, match="damaged or truncated"):
            pyagingrt.load("toy", checkpoint=tmp_path / "cut.safetensors", device="cpu")
        with pytest.raises(CheckpointError, match="does not exist"):
            pyagingrt.load("toy", checkpoint=tmp_path / "nope.pth", device="cpu")
        (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
        with pytest.raises(CheckpointError, match="cannot read checkpoint"):
            pyagingrt.load("toy", checkpoint=tmp_path / "junk.pth", device="cpu")

    def test_official_checkpoint_mismatch_names_keys(self, tmp_path):
        state = {f"module.{k}": v for k, v in load_toy().state_dict().items()}
        state["module.conv.weight"] = torch.zeros(3, 6, 5, 5)
        state["module.extra.bias"] = torch.zeros(3)
        torch.save(state, tmp_path / "official.pth")
        with pytest.raises(CheckpointError, match=r"unexpected keys: extra\.bias.*mis-shaped keys .*conv\.weight"):
            pyagingrt.load("toy", checkpoint=tmp_path / "official.pth", device="cpu")

    def test_nan_in_checkpoint_is_refused(self, tmp_path):
        state = load_toy().state_dict()
        state["conv.bias"][0] = float("nan")
        torch.save(state, tmp_path / "nan.pth")
        with pytest.raises(CheckpointError, match=r"NaN or Inf values in: conv\.bias"):
            pyagingrt.load("toy", checkpoint=tmp_path / "nan.pth", device="cpu")


@pytest.mark.usefixtures("toy")
class TestAge:
    @pytest.mark.parametrize(
        ("images", "message"),
        [
            (torch.rand(2, 3, 9, 9), "takes aligned 8x8 face crops, got 9x9"),
            (torch.rand(2, 4, 8, 8), r"must be \[B, 3, H, W\]"),
            (torch.rand(2, 3, 8, 8) * 2, r"must lie in \[0, 1\]"),
            (torch.full((1, 3, 8, 8), float("nan")), "NaN or Inf"),
            (torch.zeros(2, 3, 8, 8, dtype=torch.int32), "must be float in"),
            (torch.zeros(0, 3, 8, 8), "batch size 0"),
            ("face.jpg", "must be a torch tensor or numpy"),
            (np.zeros((8, 8, 4), np.uint8), r"must be \[H, W, 3\]|RGB array"),
        ],
    )
    def test_bad_images(self, images, message):
        eng = load_toy()
        with pytest.raises(InputError, match=message):
            eng.age(images, 30)

    def test_bad_ages_and_options(self):
        eng = load_toy()
        x = torch.rand(2, 3, 8, 8)
        with pytest.raises(InputError, match="toy ages must lie in"):
            eng.age(x, 120)
        with pytest.raises(InputError, match="2 values for 3 images"):
            eng.age(torch.rand(3, 3, 8, 8), [20, 30])
        with pytest.raises(InputError, match="must be finite"):
            eng.age(x, float("nan"))
        with pytest.raises(InputError, match="does not take option"):
            eng.age(x, 20, sigma=3)
        with pytest.raises(InputError, match="seed= or generator="):
            eng.age(x, 20, seed=1, generator=torch.Generator())

    def test_numpy_in_numpy_out(self):
        eng = load_toy()
        img = (np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8)
        out = eng.age(img, 50)
        assert out.shape == (8, 8, 3)
        assert out.dtype == np.uint8
        batch = eng.age([img, img], [20, 70])
        assert batch.shape == (2, 8, 8, 3)

    def test_batch_equals_single_runs_and_inputs_untouched(self):
        eng = load_toy()
        x = torch.rand(4, 3, 8, 8)
        x0 = x.clone()
        ages = [5.0, 35.0, 65.0, 80.0]
        batch = eng.age(x, ages)
        singles = torch.stack([eng.age(x[i], ages[i]) for i in range(4)])
        torch.testing.assert_close(batch, singles, atol=1e-6, rtol=0)
        assert torch.equal(x, x0)

    def test_options_reach_the_model(self):
        eng = load_toy()
        x = torch.rand(1, 3, 8, 8)
        assert not torch.equal(eng.age(x, 20, gain=0.5), eng.age(x, 20))

    def test_info(self):
        info = load_toy().info()
        assert info["parameters"] == sum(p.numel() for p in load_toy().module.parameters())
        assert info["gflop_per_image"] > 0
        assert info["age_groups"][0].startswith("0: 0-29")


def test_auto_precision_falls_back_to_bf16_when_fp16_overflows():
    from pyagingrt.api import build_with_bf16_fallback

    built = []

    def build(dtype):
        built.append(dtype)
        if dtype == torch.float16:
            raise pyagingrt.NumericalError("the fp16 native toy engine overflows (NaN/Inf)")
        return dtype

    with pytest.warns(pyagingrt.PrecisionFallbackWarning, match="chose bf16 because the fp16 engine overflows"):
        assert build_with_bf16_fallback(build, "toy") == torch.bfloat16
    assert built == [torch.float16, torch.bfloat16]
    built.clear()
    assert build_with_bf16_fallback(lambda dt: built.append(dt) or dt, "toy") == torch.float16  # no warning
    assert built == [torch.float16]
