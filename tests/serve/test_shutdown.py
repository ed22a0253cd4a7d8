"""SIGTERM: the requests in flight are answered, then the server exits cleanly."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from .conftest import start_server, stop_server

pytestmark = pytest.mark.serve


def test_sigterm_answers_the_requests_in_flight_then_exits(tiny_checkpoint, tiny_engine, tmp_path):
    import tritonclient.http as httpclient

    # a long queue delay keeps the requests waiting in Triton's batcher when SIGTERM arrives
    server = start_server(
        tiny_checkpoint, tmp_path / "server.log", "--no-photos", "--web-port", "0", "--max-queue-delay-us", "1500000"
    )
    try:
        client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.http}", concurrency=8, network_timeout=60)
        crops = np.random.default_rng(0).integers(0, 256, (6, 48, 48, 3), dtype=np.uint8)
        pending = []
        for i in range(6):
            inputs = [
                httpclient.InferInput("crops", [1, 48, 48, 3], "UINT8"),
                httpclient.InferInput("target_age", [1, 1], "FP32"),
            ]
            inputs[0].set_data_from_numpy(crops[i : i + 1])
            inputs[1].set_data_from_numpy(np.array([[60.0]], np.float32))
            pending.append(client.async_infer("acgan_crops", inputs, request_id=f"t-{i}"))
        time.sleep(0.5)
        assert server.process.poll() is None
        server.process.send_signal(signal.SIGTERM)
        results = [p.get_result() for p in pending]  # answered after SIGTERM
        client.close()  # Triton waits (up to --exit-timeout) for open HTTP connections to close
        started = time.monotonic()
        code = server.process.wait(timeout=60)
        stopped_in = time.monotonic() - started
    finally:
        stop_server(server)
    log = server.log.read_text()
    assert code == 0, log[-3000:]
    assert stopped_in < 25, log[-3000:]  # well inside the 30 s exit timeout: nothing left waiting
    assert "Exit timeout expired" not in log
    expected = np.stack(tiny_engine.age(list(crops), 60.0))
    for i, result in enumerate(results):
        assert result.get_response()["id"] == f"t-{i}"
        assert np.abs(result.as_numpy("crops")[0].astype(int) - expected[i].astype(int)).max() <= 1
    assert "SIGTERM received" in log
    assert "agingrt: stopped" in log
