"""The inference callables without Triton: one Triton batch in, one response per request out (runs anywhere).

Requests are what PyTriton hands the callable: a dict of arrays per request, with the batch axis first.
"""

from __future__ import annotations

import numpy as np
import pytest

from pyagingrt.errors import NumericalError
from pyagingrt.serve.models import CropsModel
from tests.api.pipeline_adapters import load_test_engine

S = 32


def _request(crops: np.ndarray, ages, seeds=None, options: str | None = None) -> dict[str, np.ndarray]:
    n = len(crops)
    req = {"crops": crops, "target_age": np.asarray(ages, np.float32).reshape(n, 1)}
    if seeds is not None:
        req["seed"] = np.asarray(seeds, np.int64).reshape(n, 1)
    if options is not None:
        req["options"] = np.array([[options.encode()]] * n, dtype=np.object_)
    return req


def _error(response) -> str:
    return response["error"].reshape(-1)[0].decode()


@pytest.fixture
def crops() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (3, S, S, 3), dtype=np.uint8)


def test_a_stochastic_model_gives_a_crop_the_same_answer_for_its_seed_wherever_it_is_batched(crops):
    engine = load_test_engine("noisy", S)
    model = CropsModel(engine)
    first, second = model(
        [_request(crops[:2], [50, 50], seeds=[7, 8]), _request(crops[[1, 0]], [50, 50], seeds=[8, 7])]
    )
    assert _error(first) == _error(second) == ""
    np.testing.assert_array_equal(first["crops"][0], second["crops"][1])  # crop 0, seed 7, another place
    np.testing.assert_array_equal(first["crops"][1], second["crops"][0])
    np.testing.assert_array_equal(first["crops"][0], engine.age(crops[0], 50, seed=7))  # as Engine.age with it
    again = model([_request(crops[:1], [50], seeds=[9])])[0]
    assert (again["crops"][0] != first["crops"][0]).any()  # another seed, other noise
    default = model([_request(crops[:1], [50])])[0]
    np.testing.assert_array_equal(default["crops"][0], engine.age(crops[0], 50, seed=0))  # no seed means 0
    assert (first["batch_size"] == 4).all()


def test_bad_requests_get_their_own_error_and_the_others_are_answered(crops):
    engine = load_test_engine("identity", S)
    responses = CropsModel(engine)(
        [
            _request(crops[:1], [30]),
            _request(crops[:1], [130]),
            _request(crops[:1], [30], seeds=[-1]),
            _request(crops[:1], [30], options="[1, 2]"),
            _request(crops[:1], [30], options='{"sigma_m": 9}'),
            _request(crops[1:3], [30, 40]),
        ]
    )
    assert [_error(r) for r in responses[1:5]] == [
        "identity takes ages 0 to 100, got [130.0]",
        "seed must be 0 or more, got [-1]",
        "options must be a JSON object, e.g. {\"sigma_m\": 9}, got '[1, 2]'",
        "identity does not take option(s) sigma_m; allowed: none",
    ]
    for response, expected in ((responses[0], crops[:1]), (responses[5], crops[1:3])):
        assert _error(response) == ""
        np.testing.assert_array_equal(response["crops"], expected)  # identity: the crops come back as they were
    assert all("crops" not in r for r in responses[1:5])


class _FailsOnDarkCrops:
    """An engine that fails on any batch holding a crop darker than 0.1 (a model failure on one input)."""

    def __init__(self, engine, error: Exception) -> None:
        self.engine, self.error = engine, error

    def age(self, images, *args, **kwargs):
        if bool((images.mean(dim=(1, 2, 3)) < 0.1).any()):
            raise self.error
        return self.engine.age(images, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.engine, name)


@pytest.mark.parametrize(
    ("error", "message"),
    [(NumericalError("identity produced NaN/Inf"), "identity produced NaN/Inf"), (RuntimeError("boom"), "boom")],
)
def test_a_model_failure_lands_on_the_request_it_belongs_to(crops, error, message):
    engine = _FailsOnDarkCrops(load_test_engine("identity", S), error)
    dark = np.zeros((1, S, S, 3), np.uint8)
    responses = CropsModel(engine)([_request(crops[:1], [30]), _request(dark, [30]), _request(crops[1:2], [30])])
    assert message in _error(responses[1])
    assert _error(responses[0]) == _error(responses[2]) == ""
    np.testing.assert_array_equal(responses[2]["crops"], crops[1:2])


def test_a_crash_of_the_whole_batch_is_answered_per_request(crops, monkeypatch):
    from pyagingrt.serve import models

    def crash(*args, **kwargs):
        raise MemoryError("out of memory")

    model = CropsModel(load_test_engine("identity", S))
    monkeypatch.setattr(models, "age_items", crash)
    responses = model([_request(crops[:1], [30]), _request(crops[1:2], [30])])
    assert [_error(r) for r in responses] == ["internal error: MemoryError: out of memory"] * 2


def test_cusp_random_noise_follows_the_request_seed_not_the_batch_order():
    import warnings

    import pyagingrt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyagingrt.RandomWeightsWarning)
        engine = pyagingrt.load("cusp", config="tiny", device="cpu")
    s = engine.input_size
    crops = np.random.default_rng(1).integers(0, 256, (2, s, s, 3), dtype=np.uint8)
    noise = '{"noise": "random"}'
    first, second = CropsModel(engine)(
        [
            _request(crops, [40, 40], seeds=[3, 4], options=noise),
            _request(crops[::-1], [40, 40], seeds=[4, 3], options=noise),
        ]
    )
    np.testing.assert_array_equal(first["crops"][0], second["crops"][1])
    np.testing.assert_array_equal(first["crops"][1], second["crops"][0])
    np.testing.assert_array_equal(first["crops"][0], engine.age(crops[0], 40, seed=3, noise="random"))
    assert (first["crops"][0] != engine.age(crops[0], 40, seed=4, noise="random")).any()
