"""`agingrt serve` for real: Triton through PyTriton in a subprocess, called over HTTP and gRPC.

Outputs are checked against ``Engine.age`` on the same weights (tiny AcGAN, CPU): at most 1 level of 255
apart (the server rounds to uint8 like Engine.age's numpy path; batching may change the last float bit).
"""

from __future__ import annotations

import concurrent.futures
import io
import re

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.serve

S = 48  # tiny AcGAN's crop size; checked below


def _crops(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, S, S, 3), dtype=np.uint8)


def _http(server):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(url=f"127.0.0.1:{server.http}", concurrency=16, network_timeout=120)


def _crop_inputs(mod, crops: np.ndarray, ages, options: str | None = None):
    n = len(crops)
    inputs = [mod.InferInput("crops", list(crops.shape), "UINT8"), mod.InferInput("target_age", [n, 1], "FP32")]
    inputs[0].set_data_from_numpy(crops)
    inputs[1].set_data_from_numpy(np.asarray(ages, dtype=np.float32).reshape(n, 1))
    if options is not None:
        inputs.append(mod.InferInput("options", [n, 1], "BYTES"))
        inputs[-1].set_data_from_numpy(np.array([[options.encode()]] * n, dtype=np.object_))
    return inputs


def _photo_inputs(mod, data: bytes, age: float):
    inputs = [mod.InferInput("image", [1, 1], "BYTES"), mod.InferInput("target_age", [1, 1], "FP32")]
    inputs[0].set_data_from_numpy(np.array([[data]], dtype=np.object_))
    inputs[1].set_data_from_numpy(np.array([[age]], dtype=np.float32))
    return inputs


def _error(result) -> str:
    err = result.as_numpy("error")
    return err.reshape(-1)[0].decode() if err is not None else ""


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_crops_over_http_match_engine_age(server, tiny_engine):
    import tritonclient.http as httpclient

    assert tiny_engine.input_size == S
    crops, ages = _crops(3), [15.0, 45.0, 80.0]
    result = _http(server).infer("acgan_crops", _crop_inputs(httpclient, crops, ages))
    assert _error(result) == ""
    out = result.as_numpy("crops")
    assert out.shape == (3, S, S, 3)
    assert out.dtype == np.uint8
    expected = tiny_engine.age(list(crops), ages)
    assert np.abs(out.astype(int) - np.stack(expected).astype(int)).max() <= 1


def test_crops_over_grpc_match_engine_age(server, tiny_engine):
    import tritonclient.grpc as grpcclient

    crops = _crops(2, seed=1)
    with grpcclient.InferenceServerClient(url=f"127.0.0.1:{server.grpc}") as client:
        assert client.is_server_ready()
        assert client.is_model_ready("acgan_crops")
        result = client.infer("acgan_crops", _crop_inputs(grpcclient, crops, [30.0, 60.0]), request_id="g-1")
    assert result.get_response().id == "g-1"
    expected = np.stack(tiny_engine.age(list(crops), [30.0, 60.0]))
    assert np.abs(result.as_numpy("crops").astype(int) - expected.astype(int)).max() <= 1


def test_concurrent_requests_are_batched_and_counted_in_metrics(server, tiny_engine):
    from pyagingrt.serve.loadgen import run_level

    before = server.metrics_text()
    crops = _crops(8, seed=2)
    report = run_level(server.grpc, "acgan_crops", crops, concurrency=16, max_requests=96, max_seconds=60, keep=8)
    summary = report.summary()
    counts = {k: summary[k] for k in ("answered", "lost", "duplicated", "mismatched", "failed", "app_errors")}
    assert counts == {"answered": 96, "lost": 0, "duplicated": 0, "mismatched": 0, "failed": 0, "app_errors": 0}, (
        report.first_error
    )
    assert max(report.batch_sizes) > 1, summary  # the dynamic batcher formed batches
    # outputs came back to the request that sent them: request i carried crop i % 8
    expected = np.stack(tiny_engine.age(list(crops), 60.0))
    for i in range(8):
        assert np.abs(report.outputs[f"req-16-{i}"].astype(int) - expected[i].astype(int)).max() <= 1
    after = server.metrics_text()

    def metric(text: str, name: str) -> float:
        found = re.search(rf'^{name}{{model="acgan_crops",version="1"}} (\S+)$', text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    served = metric(after, "nv_inference_count") - metric(before, "nv_inference_count")
    executions = metric(after, "nv_inference_exec_count") - metric(before, "nv_inference_exec_count")
    assert served == 96
    assert executions < 96
    assert metric(after, "nv_inference_request_success") >= 96


def test_bad_requests_get_their_own_error_and_the_rest_of_the_batch_goes_on(server, tiny_engine):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = _http(server)
    good = _crops(1, seed=3)
    cases = {
        "good": ("acgan_crops", _crop_inputs(httpclient, good, [60.0])),
        "age": ("acgan_crops", _crop_inputs(httpclient, good, [150.0])),
        "option": ("acgan_crops", _crop_inputs(httpclient, good, [60.0], '{"sigma_m": 3}')),
        "json": ("acgan_crops", _crop_inputs(httpclient, good, [60.0], "{not json")),
        "undecodable": ("acgan_photos", _photo_inputs(httpclient, b"\x89PNG not really", 60.0)),
        "no_face": ("acgan_photos", _photo_inputs(httpclient, _png(np.full((96, 128, 3), 200, np.uint8)), 60.0)),
        "oversized": ("acgan_photos", _photo_inputs(httpclient, b"\xff" * 1_100_000, 60.0)),
        "good2": ("acgan_crops", _crop_inputs(httpclient, good, [20.0])),
    }
    futures = {k: client.async_infer(model, inputs) for k, (model, inputs) in cases.items()}  # one burst
    results = {k: f.get_result() for k, f in futures.items()}
    expected = {
        "age": "[0, 120]",
        "option": "does not take option",
        "json": "JSON object",
        "undecodable": "could not be decoded",
        "no_face": "no face found",
        "oversized": "over the server's limit",
    }
    for key, pattern in expected.items():
        assert pattern in _error(results[key]), (key, _error(results[key]))
        assert results[key].as_numpy("crops") is None
        assert results[key].as_numpy("image") is None
    for key, age in (("good", 60.0), ("good2", 20.0)):
        assert _error(results[key]) == ""
        want = tiny_engine.age(good[0], age)
        assert np.abs(results[key].as_numpy("crops")[0].astype(int) - want.astype(int)).max() <= 1

    # what Triton checks itself: a wrong shape or dtype is refused with a clear message
    wrong_shape = httpclient.InferInput("crops", [1, S + 1, S, 3], "UINT8")
    wrong_shape.set_data_from_numpy(np.zeros((1, S + 1, S, 3), np.uint8))
    with pytest.raises(InferenceServerException, match="unexpected shape"):
        client.infer("acgan_crops", [wrong_shape, _crop_inputs(httpclient, good, [60.0])[1]])
    wrong_dtype = httpclient.InferInput("crops", [1, S, S, 3], "FP32")
    wrong_dtype.set_data_from_numpy(np.zeros((1, S, S, 3), np.float32))
    with pytest.raises(InferenceServerException, match="data-type is 'FP32'"):
        client.infer("acgan_crops", [wrong_dtype, _crop_inputs(httpclient, good, [60.0])[1]])
    assert server.ready()
    assert server.process.poll() is None


def test_photos_model_ages_the_face_and_keeps_the_rest(server, tiny_engine):
    import tritonclient.http as httpclient
    from skimage import data as skimage_data

    from pyagingrt.pipeline.faces import FacePipeline

    astronaut = skimage_data.astronaut()
    result = _http(server).infer("acgan_photos", _photo_inputs(httpclient, _png(astronaut), 70.0))
    assert _error(result) == ""
    assert int(result.as_numpy("faces").reshape(-1)[0]) == 1
    with Image.open(io.BytesIO(result.as_numpy("image").reshape(-1)[0])) as im:
        aged = np.asarray(im.convert("RGB"))
    expected = FacePipeline(tiny_engine).age(astronaut, 70.0)
    assert aged.shape == astronaut.shape
    assert np.abs(aged.astype(int) - expected.astype(int)).max() <= 2
    changed = np.abs(aged.astype(int) - astronaut.astype(int)).max(axis=2) > 0
    assert 0 < changed.mean() < 0.5  # the face changed, most of the photo did not


def test_the_page_and_the_api_pass_through_are_served(server):
    import json
    import urllib.request

    with urllib.request.urlopen(server.web_url, timeout=10) as resp:
        page = resp.read().decode()
    assert "app.js" in page
    assert "http://" not in page
    assert "https://" not in page
    with urllib.request.urlopen(server.web_url + "config.json", timeout=10) as resp:
        config = json.loads(resp.read())
    assert config["photos_model"] == "acgan_photos"
    assert config["input_size"] == S
    with urllib.request.urlopen(server.web_url + "v2/health/ready", timeout=10) as resp:
        assert resp.status == 200


def test_concurrent_photo_and_crop_requests_share_the_engine(server, tiny_engine):
    import tritonclient.http as httpclient
    from skimage import data as skimage_data

    client = _http(server)
    photo = _png(skimage_data.astronaut())
    crops = _crops(4, seed=5)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        photos = [pool.submit(client.infer, "acgan_photos", _photo_inputs(httpclient, photo, 50.0)) for _ in range(3)]
        crop_jobs = [pool.submit(client.infer, "acgan_crops", _crop_inputs(httpclient, crops[i : i + 1], [50.0]))
                     for i in range(4)]  # fmt: skip
        outs = [f.result() for f in photos], [f.result() for f in crop_jobs]
    images = [r.as_numpy("image").reshape(-1)[0] for r in outs[0]]
    assert len(set(images)) == 1  # the same photo, the same answer, whatever it was batched with
    expected = np.stack(tiny_engine.age(list(crops), 50.0))
    got = np.stack([r.as_numpy("crops")[0] for r in outs[1]])
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
