"""AcGAN trains: a tiny run on the synthetic faces learns the age conditioning, its losses fall, and its
checkpoint ages faces through pyagingrt.load on the torch and native backends."""

from __future__ import annotations

import pytest
import torch

import pyagingrt
from pyagingrt.training.data.synthetic import BAND_DEPTH, SyntheticFaces
from pyagingrt.training.loop import read_metrics, train

from .probe import probe_shift

STEPS = 160


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("acgan") / "run"
    sets = [f"loop.steps={STEPS}", "loop.progress=false", "loop.sample_every=80", "loop.checkpoint_every=80"]
    return train("acgan", "synthetic:512", out=out, preset="tiny", overrides=sets, device="cpu")


@pytest.fixture(scope="module")
def held_out():
    return SyntheticFaces(32, image_size=48, min_age=10, max_age=60, seed=99)  # faces the training never saw


def test_outputs_move_toward_the_target_group(run, held_out):
    """Aged to the oldest group the forehead band darkens, aged to the youngest it lightens, on every face.
    With the conditioning cut (the condition channels zeroed by hand) the gap is ~0 and this test fails."""

    def age(images, years):
        return run.recipe.sample(images, [years])[:, 0]

    young, old = probe_shift(age, held_out, 12, 58)
    gap = old - young  # [32]; the data's own band spans 0 .. BAND_DEPTH
    assert float(gap.mean()) > 0.5 * BAND_DEPTH
    assert float((gap > 0.1).float().mean()) >= 0.9
    assert float(young.mean()) < 0.25 * BAND_DEPTH
    assert float(old.mean()) > 0.6 * BAND_DEPTH


def test_losses_fall(run):
    metrics = read_metrics(run.run_dir)
    for name in ("loss/d_cond", "loss/g_cond"):
        values = [v for _, v in metrics[name]]
        assert sum(values[-3:]) / 3 < 0.7 * values[0], (name, values)


def test_checkpoints_and_samples_are_written(run):
    assert run.weights == run.run_dir / "final.safetensors"
    assert (run.run_dir / "checkpoints" / "step-00000080.safetensors").is_file()
    assert (run.run_dir / "samples" / "step-00000080.png").is_file()
    assert (run.run_dir / "samples" / "final.png").is_file()


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_checkpoint_ages_through_pyagingrt_load(run, held_out, backend):
    if backend == "native" and not pyagingrt.has_native():
        pytest.skip("the native extension is not built")
    engine = pyagingrt.load(run.weights, backend=backend, device="cpu")
    assert engine.model == "acgan"
    assert engine.input_size == 48
    images = torch.stack([held_out[i]["image"] for i in range(4)])
    out = engine.age(images, target_age=58)
    reference = run.recipe.sample(images, [58])[:, 0]
    tol = 1e-6 if backend == "torch" else 1e-4
    torch.testing.assert_close(out, reference, atol=tol, rtol=0)
