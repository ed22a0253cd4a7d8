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
