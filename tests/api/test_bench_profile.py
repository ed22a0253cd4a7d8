"""``agingrt bench --profile``: the profile summary (a pure function over profiler events), the files written per
variant, and the CLI's errors. Tiny configs and 1-2 profiled calls, so the whole file runs in seconds on CPU.
No timing is asserted: only what the profile contains and what gets written."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from pyagingrt.benchmark import run_bench, write_json
from pyagingrt.cli.main import main
from pyagingrt.errors import InputError, OutputError
from pyagingrt.profiling import GRAPHS_NOTE, ProfileOptions, format_summary, summarize_events


def _event(key: str, cpu_us: float, device_us: float = 0.0, count: int = 1) -> SimpleNamespace:
    return SimpleNamespace(key=key, count=count, self_cpu_time_total=cpu_us, self_device_time_total=device_us)


def _trace_names(path: str | Path) -> set[str]:
    trace = json.loads(Path(path).read_text())  # a Chrome trace must be valid JSON
    return {e.get("name", "") for e in trace["traceEvents"]}


# --- summarize_events: the pure function -----------------------------------------------------------------
def test_summary_ranks_by_self_time_merges_names_and_shares_the_total():
    events = [
        _event("aten::add", 10.0, count=3),
        _event("aten::conv2d", 60.0, device_us=5.0),
        _event("aten::view", 0.0, count=7),  # no self time: no row
        _event("aten::add", 20.0, count=2),  # same name again (another input shape): merged
        _event("agingrt::ddim_step", 10.0, device_us=95.0),
    ]
    rows, total_ms = summarize_events(events, device_time=False, top=None)
    assert [r.name for r in rows] == ["aten::conv2d", "aten::add", "agingrt::ddim_step"]
    assert total_ms == pytest.approx((10 + 60 + 20 + 10) / 1e3)
    add = rows[1]
    assert add.calls == 5
    assert add.self_ms == pytest.approx(30.0 / 1e3)
    assert add.pct == pytest.approx(100.0 * 30 / 100)
    assert sum(r.pct for r in rows) == pytest.approx(100.0)  # every op kept: the shares cover all self time

    top2, _ = summarize_events(events, device_time=False, top=2)
    assert top2 == rows[:2]
    assert sum(r.pct for r in top2) < 100.0

    by_device, device_ms = summarize_events(events, device_time=True, top=None)
    assert [r.name for r in by_device] == ["agingrt::ddim_step", "aten::conv2d"]  # CPU-only ops drop out
    assert device_ms == pytest.approx(100.0 / 1e3)


def test_summary_of_no_events_is_empty():
    assert summarize_events([], device_time=False) == ([], 0.0)


def test_summary_of_a_real_profile_puts_the_dominant_op_first():
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    small = torch.randn(8)
    with profile(activities=[ProfilerActivity.CPU], acc_events=True) as prof:  # torch 2.11 warns without it
        for _ in range(4):
            torch.mm(a, b)  # 33 MFLOP a call: orders of magnitude more work than the add below
            torch.add(small, 1.0)
    rows, total_ms = summarize_events(prof.key_averages(), device_time=False)
    assert rows[0].name == "aten::mm"
    assert rows[0].calls == 4
    assert total_ms > 0
    assert [r.self_ms for r in rows] == sorted((r.self_ms for r in rows), reverse=True)
    assert 0 < sum(r.pct for r in rows) <= 100.0 + 1e-9


# --- the profile pass of agingrt bench -------------------------------------------------------------------
def test_bench_profile_of_tiny_acgan_writes_table_and_trace_per_variant(tmp_path):
    out_dir = tmp_path / "not" / "yet" / "there"  # created with its parents
    opts = ProfileOptions(out_dir, iters=2)
    results = run_bench(
        ["acgan"],
        [1],
        ["fp32"],
        ["eager", "native"],
        torch.device("cpu"),
        config="tiny",
        warmup=1,
        iters=1,
        profile=opts,
    )
    for r in results:
        assert r.error is None
        assert r.profile_error is None
        assert len(r.samples_ms) == 1  # the profiled calls are not among the timed ones
        s = r.profile
        assert s.iters == 2
        assert s.time_kind == "self CPU time"
        assert s.note is None  # no CUDA graphs on CPU
        assert 0 < len(s.rows) <= 8
        assert [x.pct for x in s.rows] == sorted((x.pct for x in s.rows), reverse=True)
        assert sum(x.pct for x in s.rows) <= 100.0 + 1e-9
        assert s.self_ms_per_iter > 0
        assert Path(s.table_path) == out_dir / f"acgan_tiny_b1_{r.variant}_fp32.txt"
        table = Path(s.table_path).read_text()
        assert "Self CPU" in table
        assert s.rows[0].name in table
        names = _trace_names(s.trace_path)
        assert s.rows[0].name in names
        # the native engine's custom ops show in its profile by name; the torch reference has none
        has_custom = any(n.startswith("agingrt::") for n in names)
        assert has_custom == (r.variant == "native")
        text = format_summary("acgan", s)
        assert s.rows[0].name in text
        assert s.trace_path in text
    assert sorted(p.name for p in out_dir.iterdir()) == [  # atomic writes leave no temporary files
        "acgan_tiny_b1_eager_fp32.trace.json",
        "acgan_tiny_b1_eager_fp32.txt",
        "acgan_tiny_b1_native_fp32.trace.json",
        "acgan_tiny_b1_native_fp32.txt",
    ]
    data = json.loads(write_json(results, tmp_path / "b.json", "agingrt bench --profile").read_text())
    assert data["results"][1]["profile"]["rows"][0]["name"] == results[1].profile.rows[0].name


def test_profile_folder_that_is_a_file_or_zero_iters_fails_before_timing(tmp_path):
    not_a_dir = tmp_path / "prof"
    not_a_dir.write_text("")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        run_bench(["acgan"], [1], ["fp32"], ["eager"], torch.device("cpu"), profile=ProfileOptions(not_a_dir))
    with pytest.raises(InputError, match="--profile-iters must be >= 1"):
        run_bench(["acgan"], [1], ["fp32"], ["eager"], torch.device("cpu"), profile=ProfileOptions(tmp_path, iters=0))


# --- the CLI ---------------------------------------------------------------------------------------------
def test_help_explains_the_profile_options(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--profile DIR", "--profile-iters", "--profile-shapes", "--profile-no-graphs", "nsys"):
        assert flag in text, flag


@pytest.mark.usefixtures("toy")
def test_cli_prints_where_the_time_goes(tmp_path, capsys):
    args = ["bench", "--model", "toy", "--backends", "eager", "--warmup", "0", "--iters", "1"]
    assert main([*args, "--profile", str(tmp_path), "--profile-iters", "1"]) == 0
    out = capsys.readouterr().out
    assert "where the time goes" in out
    assert "toy (small) batch 1, eager fp32:" in out
    assert (tmp_path / "toy_small_b1_eager_fp32.txt").is_file()
    _trace_names(tmp_path / "toy_small_b1_eager_fp32.trace.json")


@pytest.mark.usefixtures("toy")
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--profile", "{file}"], "is a file, not a folder"),
        (["--profile", "{dir}", "--profile-iters", "0"], "--profile-iters must be >= 1"),
        (["--profile-no-graphs"], "need --profile DIR"),
        (["--profile-iters", "2"], "need --profile DIR"),
    ],
)
def test_cli_profile_mistakes_are_one_line_before_any_timing(tmp_path, capsys, extra, message):
    target = tmp_path / "prof.txt"
    target.write_text("keep me")
    extra = [a.format(file=target, dir=tmp_path / "prof") for a in extra]
    assert main(["bench", "--model", "toy", "--backends", "eager", *extra]) == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0  # one line, and no progress line: nothing was timed
    assert message in err
    assert target.read_text() == "keep me"


# --- on a GPU: device time, and the native engine with and without its CUDA graphs -----------------------
@pytest.mark.gpu
@pytest.mark.parametrize("graphs", [True, False])
def test_cuda_profile_ranks_by_device_time(tmp_path, graphs):
    opts = ProfileOptions(tmp_path, iters=2, graphs=graphs)
    (r,) = run_bench(
        ["acgan"], [1], ["fp32"], ["native"], torch.device("cuda"), config="tiny", warmup=1, iters=1, profile=opts
    )
    assert r.error is None
    assert r.profile_error is None
    assert r.profile.time_kind == "self device time"
    assert r.profile.rows
    assert r.profile.note == (GRAPHS_NOTE if graphs else None)
    assert (
        Path(r.profile.trace_path).name == "acgan_tiny_b1_native_fp32" + ("" if graphs else "_nographs") + ".trace.json"
    )
    if not graphs:  # kernels are launched one by one: the custom op's kernel shows in the trace
        assert any(n.startswith("agingrt::") for n in _trace_names(r.profile.trace_path))
