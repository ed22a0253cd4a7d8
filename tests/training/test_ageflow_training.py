"""AgeFlow trains in two stages on the synthetic faces: the flow's bits/dim fall and it still inverts; the ICTM
learns to move the forehead band toward the target group (and does not when its conditioning is scrambled);
the latent cache is reused and invalidated; the checkpoint ages through pyagingrt.load, the CLI and `agingrt eval`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pyagingrt
from pyagingrt.checkpoint import load_checkpoint, save_checkpoint
from pyagingrt.cli.main import main
from pyagingrt.training.data.synthetic import SyntheticFaces, band_darkness
from pyagingrt.training.errors import TrainingError
from pyagingrt.training.loop import read_metrics, train
from pyagingrt.training.models.ageflow import AgeFlow, quantize_input

QUIET = ["loop.progress=false"]
YOUNG, OLD = 25.0, 56.0  # inside the first and the last group


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Stage 1 (150 steps), stage 2 (300 steps), and stage 2 again with the conditioning scrambled."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ageflow")
    cache = root / "cache"
    flow = train("ageflow", "synthetic:512", out=root / "flow", stage="flow", overrides=QUIET, device="cpu")
    sets = [*QUIET, f"files.flow={flow.weights}", f"train.latent_cache={cache}"]
    ictm = train("ageflow", "synthetic:512", out=root / "ictm", stage="ictm", overrides=sets, device="cpu")
    original = AgeFlow.condition
    scramble = torch.Generator().manual_seed(5)

    def scrambled(self, target, dtype):  # the target T is told is unrelated to the one its losses aim at
        return original(self, target[torch.randperm(len(target), generator=scramble)], dtype)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AgeFlow, "condition", scrambled)
        broken = train("ageflow", "synthetic:512", out=root / "broken", stage="ictm", overrides=sets, device="cpu")
    torch.set_num_threads(threads)
    return {"root": root, "cache": cache, "flow": flow, "ictm": ictm, "broken": broken}


@pytest.fixture(scope="module")
def held_out():
    return SyntheticFaces(32, image_size=32, min_age=21, max_age=60, seed=99)  # faces the training never saw


def _images(faces, count=32):
    return torch.stack([faces[i]["image"] for i in range(count)])


def _gap(recipe, images):
    out = recipe.sample(images, [YOUNG, OLD])  # [B, 2, 3, S, S]
    return band_darkness(out[:, 1]) - band_darkness(out[:, 0])  # [B]


def test_flow_bits_per_dim_fall_and_actnorm_init_takes_no_step(runs):
    metrics = read_metrics(runs["flow"].run_dir)
    bpd = [v for _, v in metrics["loss/bpd"]]
    assert bpd[-1] < 0.75 * bpd[0], bpd
    assert [s for s, _ in metrics["loss/actnorm_init"]] == [10]  # logged once: only the first batch
    state = torch.load(runs["flow"].run_dir / "checkpoints" / "final.state.pt", weights_only=False)
    assert state["optimizers"]["flow"]["state"][0]["step"] == runs["flow"].step - 1  # the init batch: no step


def test_trained_flow_still_inverts(runs, held_out):
    model = runs["flow"].recipe.model.eval()
    x = quantize_input(_images(held_out, 8))
    with torch.no_grad():
        latents = model.flow.encode(x)
        back = model.flow.decode(latents.lower, latents.top)
    torch.testing.assert_close(back, x, atol=1e-4, rtol=0)


def test_ictm_moves_the_band_toward_the_target_group(runs, held_out):
    """Aged to 51+ the band is darker than aged to 30- on the held-out faces; the data's band spans 0 .. 0.6
    over ages 21 .. 60 (this run gives ~0.15-0.19; the scrambled run below ~0.04)."""
    gap = _gap(runs["ictm"].recipe, _images(held_out))
    assert float(gap.mean()) > 0.08, gap
    assert float((gap > 0.02).float().mean()) >= 0.9, gap


def test_scrambled_conditioning_learns_no_direction(runs, held_out):
    """Told a target unrelated to the losses' one, T learns no direction: what is left (~0.04) is its response
    to the group statistics the prior table starts from, at most half of what the trained run shows."""
    gap = _gap(runs["broken"].recipe, _images(held_out))
    trained = _gap(runs["ictm"].recipe, _images(held_out))
    assert abs(float(gap.mean())) < 0.06, gap
    assert abs(float(gap.mean())) < 0.5 * float(trained.mean()), (gap, trained)


def test_ictm_losses_fall(runs):
    metrics = read_metrics(runs["ictm"].run_dir)
    for name in ("loss/acl", "loss/d_gan"):
        values = [v for _, v in metrics[name]]
        assert sum(values[-3:]) / 3 < 0.85 * values[0], (name, values)


def test_aging_round_trip_inverts(runs, held_out):
    model = runs["ictm"].recipe.model.eval()
    x = quantize_input(_images(held_out, 8))
    with torch.no_grad():
        result = model.age(x, torch.full((8,), 3))
        back = model.undo(result.image, result)
    assert float((result.image - x).abs().mean()) > 1e-3  # it did change the faces
    torch.testing.assert_close(back, x, atol=1e-4, rtol=0)


def test_latent_cache_is_reused_and_invalidated(runs, tmp_path):
    assert runs["ictm"].recipe.cache_reused is False
    assert runs["broken"].recipe.cache_reused is True  # same flow, same data: no second encoding
    assert runs["broken"].recipe.cache_path == runs["ictm"].recipe.cache_path
    header, state = load_checkpoint(runs["flow"].weights)
    state["flow.blocks.0.flows.0.coupling.net.0.bias"] += 0.01  # another flow
    changed = tmp_path / "changed.safetensors"
    save_checkpoint(changed, header, state)
    sets = [*QUIET, f"files.flow={changed}", f"train.latent_cache={runs['cache']}", "loop.steps=1"]
    again = train("ageflow", "synthetic:512", out=tmp_path / "again", stage="ictm", overrides=sets, device="cpu")
    assert again.recipe.cache_reused is False
    assert again.recipe.cache_path != runs["ictm"].recipe.cache_path
    assert len(list(Path(runs["cache"]).glob("latents-*.pt"))) == 2


def test_ictm_stage_refuses_to_start_without_a_flow(tmp_path):
    with pytest.raises(TrainingError, match=r"files\.flow=PATH"):
        train("ageflow", "synthetic:64", out=tmp_path / "x", stage="ictm", overrides=QUIET, device="cpu")


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_checkpoint_ages_through_pyagingrt_load(runs, held_out, backend):
    if backend == "native" and not pyagingrt.has_native():
        pytest.skip("the native extension is not built")
    engine = pyagingrt.load(runs["ictm"].weights, backend=backend, device="cpu")
    assert engine.model == "ageflow"
    assert engine.input_size == 32
    images = _images(held_out, 4)
    out = engine.age(images, target_age=OLD)
    reference = runs["ictm"].recipe.sample(images, [OLD])[:, 0]
    torch.testing.assert_close(out, reference, atol=1e-4 if backend == "native" else 1e-6, rtol=0)


def test_checkpoint_ages_a_photo_through_the_cli(runs, photo_dir, tmp_path):
    out = tmp_path / "aged.png"
    args = ["age", str(photo_dir / "astronaut.png"), "--checkpoint", str(runs["ictm"].weights), "--age", "60",
            "-o", str(out)]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "pyagingrt", *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert out.is_file()


def test_checkpoint_is_judged_by_agingrt_eval(runs, photo_dir, tmp_path, eval_judges):
    out = tmp_path / "eval"
    args = ["eval", str(runs["ictm"].weights), "--data", str(photo_dir), "--ages", f"{YOUNG},{OLD}"]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["model"] == "ageflow"
    assert report["inputs"] == 1
    assert [t["target_age"] for t in report["targets"]] == [YOUNG, OLD]
