"""PADA trains in two stages on the synthetic faces: DiffAE (semantic encoder + UNet, with the z_sem statistics
in its checkpoint), then the age encoder and modulation on the frozen DiffAE, CLIP (a tiny random one saved as a
Hugging Face directory) and judges (small random DEX and ArcFace files). Judges not given are refused; the
trained checkpoint ages through pyagingrt.load (text, reference, several samples), the CLI and `agingrt eval`."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import pyagingrt
from pyagingrt.checkpoint import load_checkpoint
from pyagingrt.cli.main import main
from pyagingrt.training.data.synthetic import SyntheticFaces
from pyagingrt.training.errors import TrainingError
from pyagingrt.training.layers.arcface import ArcFace, ArcFaceConfig
from pyagingrt.training.layers.dex import DEX, DEXConfig
from pyagingrt.training.loop import read_metrics, train
from tests.models.test_pada import write_tiny_clip

QUIET = ["loop.progress=false"]


@pytest.fixture(scope="module")
def judges(tmp_path_factory):
    """The frozen networks a user gives: a CLIP directory, a DEX file and an ArcFace IR-SE file (all random)."""
    root = tmp_path_factory.mktemp("pada_judges")
    with torch.random.fork_rng(devices=[]):
        (root / "clip").mkdir()
        write_tiny_clip(root / "clip")
        torch.manual_seed(11)
        save_file(
            {k: v.contiguous() for k, v in DEX(DEXConfig.tiny()).state_dict().items()}, str(root / "dex.safetensors")
        )
        torch.save(ArcFace(ArcFaceConfig.tiny()).state_dict(), root / "model_ir_se50.pth")
    return {"clip": root / "clip", "dex": root / "dex.safetensors", "arcface": root / "model_ir_se50.pth"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, judges):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pada")
    first = [*QUIET, "loop.steps=12", "loop.log_every=4", "loop.batch_size=8", "train.stats_images=256"]
    diffae = train("pada", "synthetic:256", out=root / "diffae", stage="diffae", device="cpu", overrides=first)
    sets = [*QUIET, "loop.steps=24", "loop.log_every=8", "loop.batch_size=4", f"files.diffae={diffae.weights}"]
    sets += [f"files.{key}={path}" for key, path in judges.items()]
    aging = train("pada", "synthetic:256", out=root / "aging", stage="aging", overrides=sets, device="cpu")
    torch.set_num_threads(threads)
    return {"diffae": diffae, "aging": aging, "sets": sets}


@pytest.fixture(scope="module")
def faces():
    data = SyntheticFaces(4, image_size=32, min_age=16, max_age=70, seed=99)
    return torch.stack([data[i]["image"] for i in range(4)])


def _values(run, name):
    return [v for _, v in read_metrics(run.run_dir)[name]]


def test_diffae_noise_prediction_loss_falls(runs):
    mse = _values(runs["diffae"], "loss/eps_mse")
    assert mse[-1] < 0.7 * mse[0], mse


def test_diffae_checkpoint_holds_the_ema_weights_and_latent_statistics(runs):
    recipe = runs["diffae"].recipe
    _, state = load_checkpoint(runs["diffae"].weights)
    for key, value in recipe.ema.module.state_dict().items():
        torch.testing.assert_close(state[f"diffae.{key}"], value, atol=0, rtol=0)
    data = SyntheticFaces(256, image_size=32, min_age=16, max_age=70, seed=0)  # the run's synthetic:256
    with torch.no_grad():
        z = recipe.ema.module.encoder(torch.stack([data[i]["image"] for i in range(256)]) * 2 - 1)  # [256, Z]
    torch.testing.assert_close(state["stats.mean"], z.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state["stats.std"], z.std(0), atol=1e-5, rtol=1e-5)
    # the modulation starts as the identity relative to those statistics
    torch.testing.assert_close(state["modulation.gamma.2.bias"], state["stats.std"], atol=0, rtol=0)
    torch.testing.assert_close(state["modulation.beta.2.bias"], state["stats.mean"], atol=0, rtol=0)


def test_aging_losses_fall_and_only_pada_parts_train(runs):
    kl = _values(runs["aging"], "loss/kl")
    assert all(b < a for a, b in itertools.pairwise(kl)), kl
    for name in ("loss/id", "loss/norm", "loss/total"):
        assert all(torch.isfinite(torch.tensor(_values(runs["aging"], name)))), name
    _, before = load_checkpoint(runs["diffae"].weights)
    _, after = load_checkpoint(runs["aging"].weights)
    frozen = [k for k in before if k.startswith(("diffae.", "stats."))]
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    moved = [
        k for k in before if k.startswith(("age_encoder.", "modulation.")) and not torch.equal(before[k], after[k])
    ]
    assert any(k.startswith("age_encoder.") for k in moved)
    assert any(k.startswith("modulation.") for k in moved)


@pytest.mark.parametrize("missing", ["dex", "arcface", "clip", "diffae"])
def test_a_judge_not_given_is_refused_by_name(runs, tmp_path, missing):
    sets = [s for s in runs["sets"] if not s.startswith(f"files.{missing}=")]
    with pytest.raises(TrainingError, match=rf"files\.{missing}=PATH.*never replaced by random weights"):
        train("pada", "synthetic:64", out=tmp_path / "run", stage="aging", overrides=sets, device="cpu")
    assert not (tmp_path / "run").exists()
    wrong = [*sets, f"files.{missing}={tmp_path / 'nowhere.pth'}"]
    with pytest.raises(TrainingError, match=rf"files\.{missing}=.*nowhere\.pth"):
        train("pada", "synthetic:64", out=tmp_path / "run", stage="aging", overrides=wrong, device="cpu")


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_checkpoint_ages_through_pyagingrt_load(runs, judges, faces, backend):
    if backend == "native" and not pyagingrt.has_native():
        pytest.skip("the native extension is not built")
    engine = pyagingrt.load(runs["aging"].weights, backend=backend, device="cpu", clip=str(judges["clip"]))
    assert engine.model == "pada"
    out = engine.age(faces, target_age=60, seed=0)
    reference = runs["aging"].recipe.sample(faces, [60])[:, 0]
    torch.testing.assert_close(out, reference, atol=1e-4 if backend == "native" else 1e-6, rtol=0)
    text = engine.age(faces, target_age=60, text="man's face in his sixties", seed=0)
    assert text.shape == faces.shape
    several = engine.age(faces, target_age=60, reference=faces[0], num_samples=2, seed=0)
    assert several.shape == (4, 2, *faces.shape[1:])
    assert float((several[:, 0] - several[:, 1]).abs().mean()) > 1e-3  # pluralistic: the samples differ


def test_checkpoint_ages_a_photo_through_the_cli(runs, judges, photo_dir, tmp_path):
    out = tmp_path / "aged.png"
    args = ["age", str(photo_dir / "astronaut.png"), "--checkpoint", str(runs["aging"].weights), "--clip",
            str(judges["clip"]), "--age", "60", "-o", str(out)]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "pyagingrt", *args], capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stderr
    assert out.is_file()


def test_checkpoint_is_judged_by_agingrt_eval_with_its_clip(runs, judges, photo_dir, tmp_path, eval_judges, capsys):
    out = tmp_path / "eval"
    args = ["eval", str(runs["aging"].weights), "--data", str(photo_dir), "--ages", "20,60", "--quiet"]
    assert main([*args, "--clip", str(judges["clip"]), "--out", str(out)]) == 0
    assert "random CLIP" not in capsys.readouterr().err  # the given CLIP was used
    report = json.loads((out / "eval.json").read_text())
    assert report["model"] == "pada"
    assert report["inputs"] == 1
    assert [t["target_age"] for t in report["targets"]] == [20.0, 60.0]
    assert main([*args, "--out", str(tmp_path / "no_clip")]) == 0  # judged, with the random CLIP said on one line
    lines = [line for line in capsys.readouterr().err.splitlines() if "random CLIP" in line]
    assert len(lines) == 1
    assert lines[0].startswith("agingrt: warning: pada: no CLIP directory given")
