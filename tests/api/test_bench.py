"""agingrt bench machinery on the toy adapter: every variant timed, table, JSON and plot written."""

from __future__ import annotations

import json

import pytest
import torch

from pyagingrt.benchmark import format_table, plot_bars, run_bench, write_json
from pyagingrt.errors import InputError


@pytest.mark.usefixtures("toy")
def test_bench_times_every_variant_and_writes_outputs(tmp_path):
    results = run_bench(["toy"], [1, 2], ["fp32"], ["eager", "native"], torch.device("cpu"), warmup=1, iters=3)
    assert [(r.variant, r.batch) for r in results] == [("eager", 1), ("native", 1), ("eager", 2), ("native", 2)]
    for r in results:
        assert r.error is None
        assert r.ms_per_batch > 0
        assert len(r.samples_ms) == 3
        assert r.gflop_per_image > 0
        assert r.images_per_s == pytest.approx(r.batch / (r.ms_per_batch / 1e3))
        assert r.pct_of_peak is None  # no GPU peak on CPU
    table = format_table(results)
    assert "toy (small), batch 2" in table
    assert "native fp32" in table
    data = json.loads(write_json(results, tmp_path / "b.json", "agingrt bench --model toy").read_text())
    assert data["environment"]["weights"] == "random"
    assert len(data["results"]) == 4
    assert plot_bars(results, tmp_path / "b.png").stat().st_size > 1000


@pytest.mark.usefixtures("toy")
def test_a_failing_variant_is_reported_not_fatal():
    (r,) = run_bench(["toy"], [1], ["fp16"], ["eager"], torch.device("cpu"), warmup=0, iters=1)
    assert "needs a CUDA device" in r.error
    assert "not run" in format_table([r])


def test_unknown_variant_is_refused():
    with pytest.raises(InputError, match="unknown backend variant"):
        run_bench(["acgan"], [1], ["fp32"], ["tensorrt"], torch.device("cpu"))


@pytest.mark.usefixtures("toy")
def test_rounds_interleave_the_variants(monkeypatch):
    # Each engine call is logged; with rounds=True the timed calls alternate variant by variant, and every
    # variant still gets its warm-up and iters samples; a failing variant is reported beside the others.
    from pyagingrt.api import Engine
    from pyagingrt.backends.native import NativeEngine

    calls = []

    def logging(original):
        def logged(self, *args, **kwargs):
            calls.append(self.backend)
            return original(self, *args, **kwargs)

        return logged

    for cls in (Engine, NativeEngine):
        monkeypatch.setattr(cls, "_run", logging(cls._run))
    results = run_bench(
        ["toy"], [1], ["fp32"], ["eager", "native", "eager:fp16"], torch.device("cpu"), warmup=1, iters=3, rounds=True
    )
    assert [(r.variant, r.precision) for r in results] == [("eager", "fp32"), ("native", "fp32"), ("eager", "fp16")]
    assert "needs a CUDA device" in results[2].error
    assert all(len(r.samples_ms) == 3 and r.error is None for r in results[:2])
    # first calls (build), then warm-ups, then 3 rounds of (eager, native)
    assert calls[-6:] == ["torch", "native"] * 3


def test_speed_up_compares_natives_of_the_same_precision_only():
    from pyagingrt.benchmark import BenchResult

    def row(variant, precision, ms):
        return BenchResult("toy", "small", variant, precision, 1, "cpu", ms_per_batch=ms, images_per_s=1 / ms)

    rows = [row("native", "fp32", 10.0), row("eager", "fp32", 20.0), row("native", "bf16", 4.0)]
    table = format_table([*rows, row("openvino", "bf16", 6.0), row("openvino", "fp16", 8.0)])
    lines = {line.split()[0] + " " + line.split()[1]: line for line in table.splitlines() if line.startswith("  ")}
    assert lines["eager fp32"].endswith("x2.00")
    assert lines["openvino bf16"].endswith("x1.50")
    assert "x" not in lines["openvino fp16"].split()[-1]  # no fp16 native engine: no ratio
