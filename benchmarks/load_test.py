"""Load test of `agingrt serve` on loopback: throughput, latency percentiles, the batches Triton formed, and
the server's overhead against direct ``Engine.age`` calls on the same weights, measured in the same run.

    python benchmarks/load_test.py --model acgan --config tiny,paper --concurrency 1,4,16,64 \\
        --requests 400 --seconds 60 --json benchmarks/results/serve-cpu-2core.json

For each config: random weights are saved to a temporary checkpoint; `agingrt serve` (crops model only) starts
on free 127.0.0.1 ports; ``Engine.age`` is timed directly in this process while the server idles (batch 1 and
each batch size the levels then form); then each concurrency level sends bounded load (``--requests``,
``--seconds``) over gRPC with tritonclient's asyncio client. Every request has a unique id; the run fails
(exit 1) if any request is lost, answered twice, answered with an error, or answered with another request's
crop (the first outputs are compared to ``Engine.age``). Needs ``pyagingrt[serve]`` (see docs/serving.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

import pyagingrt
from pyagingrt.serve.loadgen import HOST, run_level

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("nv_inference_count", "nv_inference_exec_count", "nv_inference_queue_duration_us",
           "nv_inference_compute_infer_duration_us")  # fmt: skip


def free_ports(count: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind((HOST, 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def metrics(port: int, model: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for name in METRICS:
        found = re.search(rf'^{name}{{model="{model}",version="1"}} (\S+)$', text, re.MULTILINE)
        out[name] = float(found.group(1)) if found else 0.0
    return out


def start_server(
    checkpoint: Path, max_batch: int, delay_us: int, log: Path, threads: int | None
) -> tuple[subprocess.Popen, int, int]:
    http, grpc, metrics_port = free_ports(3)
    cmd = [sys.executable, "-m", "pyagingrt", "serve", "--checkpoint", str(checkpoint), "--no-photos",
           "--web-port", "0", "--max-batch", str(max_batch), "--max-queue-delay-us", str(delay_us), "--host", HOST,
           "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics_port)]  # fmt: skip
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}  # torch's intra-op threads
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"agingrt serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if "agingrt: serving" in log.read_text():
            return proc, grpc, metrics_port
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"agingrt serve not ready after 300 s:\n{log.read_text()[-3000:]}")


def time_direct(engine: Any, crops: np.ndarray, batch: int, seconds: float) -> float:
    """Median seconds of one ``Engine.age`` call on ``batch`` uint8 crops (as the server calls it: float
    tensors from uint8, results back to uint8), over at least 3 calls, and more for up to ``seconds``."""
    x = torch.from_numpy(crops[np.arange(batch) % len(crops)]).permute(0, 3, 1, 2).float().div(255)
    engine.age(x, 60.0)  # warm-up
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < seconds and len(times) < 100):
        t0 = time.perf_counter()
        (engine.age(x, 60.0).clamp(0, 1) * 255).round().to(torch.uint8)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_config(args: argparse.Namespace, config: str, workdir: Path) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyagingrt.RandomWeightsWarning)
        checkpoint = pyagingrt.load(args.model, config=config, device="cpu").save(workdir / f"{config}.safetensors")
    engine = pyagingrt.load(checkpoint, device="cpu")
    size = engine.input_size
    crops = np.random.default_rng(0).integers(0, 256, (16, size, size, 3), dtype=np.uint8)
    log = workdir / f"server-{config}.log"
    proc, grpc, metrics_port = start_server(checkpoint, args.max_batch, args.max_queue_delay_us, log, args.threads)
    rows: list[dict[str, Any]] = []
    direct: dict[int, float] = {}
    failures: list[str] = []
    try:
        model = f"{args.model}_crops"
        run_level(grpc, model, crops, concurrency=2, max_requests=8, max_seconds=60)  # server warm
        for concurrency in args.concurrency:
            before = metrics(metrics_port, model)
            report = run_level(grpc, model, crops, concurrency=concurrency, max_requests=args.requests,
                               max_seconds=args.seconds, keep=len(crops))  # fmt: skip
            after = metrics(metrics_port, model)
            row = report.summary()
            delta = {k: after[k] - before[k] for k in METRICS}
            execs = max(delta["nv_inference_exec_count"], 1)
            row["triton_mean_batch"] = round(delta["nv_inference_count"] / execs, 2)
            row["triton_queue_ms"] = round(delta["nv_inference_queue_duration_us"] / 1000 / max(row["answered"], 1), 2)
            served = max(delta["nv_inference_count"], 1)  # Triton's durations are summed over requests
            row["triton_compute_ms"] = round(delta["nv_inference_compute_infer_duration_us"] / 1000 / served, 2)
            batch = max(1, round(row["triton_mean_batch"]))
            # the server is idle now: time Engine.age at the batch size it formed, in the same conditions
            direct[batch] = time_direct(engine, crops, batch, args.direct_seconds)
            row["direct_batch"] = batch
            row["direct_ms"] = round(direct[batch] * 1000, 2)
            row["direct_img_s"] = round(batch / direct[batch], 2)
            row["server_vs_direct"] = round(row["throughput_rps"] / row["direct_img_s"], 2)
            row["overhead_ms_c1"] = round(row["p50_ms"] - direct[batch] * 1000, 2) if concurrency == 1 else None
            # the outputs went back to the requests that sent them (request i carried crop i % 16)
            expected = engine.age(list(crops), 60.0)
            for rid, out in report.outputs.items():
                i = int(rid.rsplit("-", 1)[1])
                if np.abs(out.astype(int) - expected[i % len(crops)].astype(int)).max() > 1:
                    failures.append(f"{config} c={concurrency}: {rid} got another crop's answer")
            for key in ("lost", "duplicated", "mismatched", "failed", "app_errors"):
                if row[key]:
                    failures.append(f"{config} c={concurrency}: {row[key]} {key} ({report.first_error})")
            row.update(model=args.model, config=config, size=size, max_batch=args.max_batch)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    if failures:
        raise SystemExit("load test FAILED:\n" + "\n".join(failures))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        (
            "| model (config) | concurrency | answered | req/s | p50 / p95 / p99 ms | mean batch (size:batches) "
            "| direct Engine.age | server vs direct |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        # batch_sizes counts requests by the size of the batch they were in: n requests in batches of b = n / b batches
        sizes = ", ".join(f"{b}:{round(n / int(b))}" for b, n in r["batch_sizes"].items())
        direct = f"{r['direct_ms']:g} ms @ {r['direct_batch']} ({r['direct_img_s']:g} img/s)"
        overhead = f"; p50 - direct = {r['overhead_ms_c1']:+g} ms" if r["overhead_ms_c1"] is not None else ""
        lines.append(
            f"| {r['model']} ({r['config']}) | {r['concurrency']} | {r['answered']}/{r['requests']} "
            f"| {r['throughput_rps']:g} | {r['p50_ms']:g} / {r['p95_ms']:g} / {r['p99_ms']:g} "
            f"| {r['triton_mean_batch']:g} ({sizes}) | {direct} | {r['server_vs_direct']:g}x{overhead} |"
        )
    return "\n".join(lines)


def print_table(path: Path) -> None:
    """The table of a saved run (--table FILE)."""
    print(table(json.loads(path.read_text())["rows"]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="acgan", help="model to serve with random weights (default: acgan)")
    p.add_argument("--config", default="tiny", help="comma-separated configs, e.g. tiny,paper (default: tiny)")
    p.add_argument("--concurrency", default="1,4,16,64", help="requests in flight per level (default: 1,4,16,64)")
    p.add_argument("--requests", type=int, default=400, help="at most this many requests per level (default: 400)")
    p.add_argument("--seconds", type=float, default=60.0, help="at most this long per level (default: 60)")
    p.add_argument("--max-batch", type=int, default=32, help="agingrt serve --max-batch (default: 32)")
    p.add_argument("--max-queue-delay-us", type=int, default=2000, help="agingrt serve's (default: 2000)")
    p.add_argument("--direct-seconds", type=float, default=5.0, help="time per direct Engine.age timing (default: 5)")
    p.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads of the server and of the direct calls (default: torch's; on a busy shared "
        "machine 1 avoids stalls in parallel regions)",
    )
    p.add_argument("--json", type=Path, help="write the rows here")
    p.add_argument("--table", type=Path, help="only print the table of a saved --json run")
    args = p.parse_args()
    if args.table:
        print_table(args.table)
        return 0
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.config.split(","):
            rows += run_config(args, config, Path(tmp))
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"command": " ".join(sys.argv), "torch": torch.__version__, "threads": torch.get_num_threads()}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
