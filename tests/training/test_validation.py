"""Validation during training (loop.eval_every): a fixed held-out split judged through pyagingrt.load + evaluate."""

from __future__ import annotations

import json

import pytest

from pyagingrt.training.data.synthetic import SyntheticFaces
from pyagingrt.training.errors import ConfigError
from pyagingrt.training.loop import split_validation, train

FAST = ["loop.progress=false", "loop.batch_size=4", "loop.sample_every=0", "loop.log_every=1", "loop.steps=2"]


def test_split_holds_out_the_last_items_and_refuses_bad_counts():
    faces = SyntheticFaces(10, image_size=32, min_age=10, max_age=60, seed=0)
    kept, held = split_validation(faces, 3)
    assert list(kept.indices) == list(range(7))
    assert list(held.indices) == [7, 8, 9]
    for count in (0, 6):
        with pytest.raises(ConfigError, match="eval_count"):
            split_validation(faces, count)


def test_eval_every_writes_a_judged_report_per_evaluation(tmp_path, eval_judges):
    sets = [*FAST, "loop.eval_every=1", "loop.eval_count=3"]
    result = train("acgan", "synthetic:16", out=tmp_path / "run", overrides=sets, device="cpu")
    reports = sorted((result.run_dir / "eval").glob("step-*.json"))
    assert [p.name for p in reports] == ["step-00000001.json", "step-00000002.json"]
    assert not list((result.run_dir / "eval").glob("*.safetensors"))  # the judged weights are not kept twice
    report = json.loads(reports[-1].read_text())
    assert report["model"] == "acgan"
    assert report["inputs"] == 3
    assert len(report["targets"]) >= 2  # one row per target age of the model's groups


def test_eval_count_larger_than_half_the_data_is_refused(tmp_path):
    sets = [*FAST, "loop.eval_every=1", "loop.eval_count=9"]
    with pytest.raises(ConfigError, match="eval_count"):
        train("acgan", "synthetic:16", out=tmp_path / "run", overrides=sets, device="cpu")
