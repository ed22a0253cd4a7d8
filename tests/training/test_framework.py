"""The training framework: configs, data order, resume, NaN stop, checkpoint files and the CLI (AcGAN tiny)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from pyagingrt.cli.main import main
from pyagingrt.training.config import apply_overrides
from pyagingrt.training.data.synthetic import BAND_DEPTH, SyntheticFaces, band_darkness, darkness_of_age
from pyagingrt.training.errors import ConfigError, DivergedError, TrainingError
from pyagingrt.training.loop import StepBatchSampler, read_metrics, resolve_config, train

FAST = ["loop.progress=false", "loop.batch_size=4", "loop.sample_every=0", "loop.log_every=1"]


def test_overrides_parse_json_and_refuse_unknown_keys():
    _, stage, cfg = resolve_config("acgan", "tiny", None, ["train.lr_g=2e-4", "train.betas=[0.1, 0.9]"])
    assert stage == "main"
    assert cfg["train"]["lr_g"] == 2e-4
    assert cfg["train"]["betas"] == [0.1, 0.9]
    assert apply_overrides(cfg, ["data.labels=labels.csv"])["data"]["labels"] == "labels.csv"
    with pytest.raises(ConfigError, match=r"unknown config key .train\.lr_gg."):
        apply_overrides(cfg, ["train.lr_gg=1"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides(cfg, ["train.lr_g"])
    with pytest.raises(ConfigError, match="no stage"):
        resolve_config("acgan", "tiny", "flow")
    with pytest.raises(ConfigError, match="no config"):
        resolve_config("acgan", "huge")


def test_paper_preset_is_the_official_recipe():
    _, _, cfg = resolve_config("acgan", "paper")
    assert cfg["model"]["image_size"] == 224
    assert cfg["model"]["g_conv_dim"] == 64
    assert cfg["loop"]["batch_size"] == 32
    assert cfg["loop"]["epochs"] == 40
    assert cfg["train"]["lr_g"] == cfg["train"]["lr_d"] == 1e-4
    assert cfg["train"]["betas"] == [0.5, 0.999]
    assert cfg["train"]["weights"] == {"adv": 10.0, "cls": 100.0, "gp": 10.0, "mask": 2.0, "smooth": 1e-4}


def test_synthetic_probe_reads_back_the_age():
    faces = SyntheticFaces(64, image_size=48, min_age=10, max_age=60, seed=3)
    images = torch.stack([faces[i]["image"] for i in range(64)])
    expected = darkness_of_age(faces.ages, 10, 60)
    measured = band_darkness(images)
    assert (measured - expected).abs().max() < 0.03
    assert float(measured.max() - measured.min()) > 0.8 * BAND_DEPTH
    again = faces.render(5, 60.0)
    assert torch.equal(again, faces.render(5, 60.0))  # a pure function of (seed, index, age)
    assert float(band_darkness(again[None])) == pytest.approx(BAND_DEPTH, abs=0.03)


def test_synthetic_faces_of_one_identity_differ_only_in_the_band():
    faces = SyntheticFaces(8, image_size=32, min_age=10, max_age=60, seed=3, identities=1)
    a, b = faces.render(1, 10.0), faces.render(6, 60.0)
    assert torch.equal(a, faces.render(6, 10.0))  # same face at the same age
    changed = (a != b).any(dim=0)  # [S, S]
    rows = changed.nonzero()[:, 0] / 32
    assert changed.any()
    assert float(rows.min()) >= 0.15  # the forehead band only
    assert float(rows.max()) < 0.4
    assert not torch.equal(SyntheticFaces(8, image_size=32, seed=3).render(1, 10.0), a)  # one face per item
    with pytest.raises(ValueError, match="identities"):
        SyntheticFaces(8, identities=0)


def test_step_sampler_resumes_mid_epoch_and_splits_ranks():
    straight = list(StepBatchSampler(20, 4, 0, 1, seed=1, start=0, stop=12))
    resumed = list(StepBatchSampler(20, 4, 0, 1, seed=1, start=7, stop=12))
    assert resumed == straight[7:]
    assert sorted(i for batch in straight[:5] for i in batch) == list(range(20))  # one epoch = a permutation
    assert straight[:5] != straight[5:10]  # the next epoch reshuffles
    r0 = list(StepBatchSampler(20, 4, 0, 2, seed=1, start=0, stop=5))
    r1 = list(StepBatchSampler(20, 4, 1, 2, seed=1, start=0, stop=5))
    assert [a + b for a, b in zip(r0, r1, strict=True)] == straight[:5]


def test_resume_is_bit_identical(tmp_path):
    """2N steps straight == N steps, a new process-like restart from the run folder, N more (CPU)."""
    sets = [*FAST, "loop.steps=6", "loop.checkpoint_every=0"]
    straight = train("acgan", "synthetic:24", out=tmp_path / "a", overrides=sets, device="cpu")
    first = train("acgan", "synthetic:24", out=tmp_path / "b", overrides=sets, device="cpu", stop_after=3)
    assert first.step == 3
    assert json.loads((tmp_path / "b" / "latest.json").read_text())["step"] == 3
    resumed = train("acgan", None, out=tmp_path / "b", resume=True, device="cpu")
    assert resumed.step == 6
    a, b = load_file(straight.weights), load_file(resumed.weights)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name, module in straight.recipe.modules().items():  # D and the optimiser moments too
        other = resumed.recipe.modules()[name].state_dict()
        assert all(torch.equal(v, other[k]) for k, v in module.state_dict().items())
    sa = straight.recipe.opt_d.state_dict()["state"]
    sb = resumed.recipe.opt_d.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    # the loss curve continues where it stopped
    ma, mb = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert ma["loss/d_cond"] == mb["loss/d_cond"]


def test_nan_loss_stops_naming_step_and_loss(tmp_path):
    # g_smooth first runs at step 1 (a G step every 2nd iteration); a NaN weight makes it NaN there.
    sets = [*FAST, "loop.steps=4", "loop.checkpoint_every=1", "train.weights.smooth=NaN"]
    with pytest.raises(DivergedError, match=r"loss 'g_smooth' is nan at step 1"):
        train("acgan", "synthetic:16", out=tmp_path / "run", overrides=sets, device="cpu")
    latest = json.loads((tmp_path / "run" / "latest.json").read_text())
    assert latest["step"] == 1  # the checkpoint before the NaN is intact and named
    weights = load_file(tmp_path / "run" / latest["weights"])
    assert all(bool(torch.isfinite(v).all()) for v in weights.values())


def test_cli_runs_and_refuses_mistakes(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "acgan", "--data", "synthetic:16", "--config", "tiny", "--out", str(out)]
    sets = [x for s in [*FAST, "loop.steps=2", "loop.sample_every=2"] for x in ("--set", s)]
    assert main([*args, *sets]) == 0
    assert {p.name for p in out.iterdir()} >= {"config.json", "final.safetensors", "latest.json", "metrics.csv"}
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"] == "acgan"
    assert saved["config"]["loop"]["steps"] == 2
    assert (out / "samples" / "final.png").is_file()
    from PIL import Image

    grid = Image.open(out / "samples" / "final.png")
    assert grid.size == (48 * 6, 48 * 4)  # input + 5 groups, sample_count rows
    assert json.loads(grid.text["targets"]) == [10.0, 25.0, 35.0, 45.0, 56.0]
    capsys.readouterr()
    assert main([*args, *sets]) == 1  # the folder is not empty
    assert "pass --resume" in capsys.readouterr().err
    assert main([*args[:-1], str(tmp_path / "x"), "--set", "train.nope=1"]) == 1
    assert "unknown config key 'train.nope'" in capsys.readouterr().err
    assert main(["train", "acgan", "--data", "/no/such/dir", "--out", str(tmp_path / "y")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("agingrt: error:")
    assert err.count("\n") == 1
    assert not math.isnan(read_metrics(out)["loss/d_cond"][-1][1])


def test_resume_without_checkpoint_is_refused(tmp_path):
    with pytest.raises(TrainingError, match="holds no checkpoint"):
        train("acgan", None, out=tmp_path, resume=True, device="cpu")


@pytest.mark.parametrize(
    ("model", "dtype"), [("acgan", torch.bfloat16), ("acgan", torch.float16), ("cusp", torch.bfloat16)]
)
def test_mixed_precision_steps(model, dtype, dex_file):
    """The autocast path GPUs take (run here through CPU autocast): finite losses, the fp16 loss scalers made,
    weights kept in fp32."""
    from torch.utils.data import default_collate

    from pyagingrt.training.recipe import TrainContext

    cls, stage, cfg = resolve_config(model, "tiny", None, [f"files.dex={dex_file}"] if model == "cusp" else [])
    ctx = TrainContext(device=torch.device("cpu"), autocast_dtype=dtype, steps_per_epoch=4, total_steps=4)
    recipe = cls(cfg, ctx, stage)
    faces = SyntheticFaces(4, image_size=cls.image_size(cfg), min_age=20, max_age=60)
    batch = default_collate([faces[i] for i in range(4)])
    for step in range(2):
        losses = recipe.train_step(batch, step)
        assert all(math.isfinite(float(v)) for v in losses.values()), (step, losses)
    assert sorted(ctx.scalers) == (["D", "G"] if dtype == torch.float16 else [])
    assert all(p.dtype == torch.float32 for p in recipe.parameters())


def test_half_precision_needs_a_gpu():
    from pyagingrt.training.loop import autocast_dtype

    with pytest.raises(ConfigError, match="needs a GPU"):
        autocast_dtype("fp16", torch.device("cpu"))
    assert autocast_dtype("auto", torch.device("cpu")) is None


def test_a_crash_while_saving_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    """Killed between the weights and the state file of step 2: latest.json still names step 1, complete,
    and --resume finishes the run from it."""
    from pyagingrt.training import checkpointing

    real_save_state, calls = checkpointing.save_state, []

    def dying_save_state(path, state):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if killed mid-write
        real_save_state(path, state)

    monkeypatch.setattr(checkpointing, "save_state", dying_save_state)
    sets = [*FAST, "loop.steps=4", "loop.checkpoint_every=1"]
    with pytest.raises(KeyboardInterrupt):
        train("acgan", "synthetic:16", out=tmp_path / "run", overrides=sets, device="cpu")
    latest = json.loads((tmp_path / "run" / "latest.json").read_text())
    assert latest["step"] == 1
    monkeypatch.setattr(checkpointing, "save_state", real_save_state)
    resumed = train("acgan", None, out=tmp_path / "run", resume=True, device="cpu")
    assert resumed.step == 4
    assert json.loads((tmp_path / "run" / "latest.json").read_text())["step"] == 4
