"""Fixtures shared by the API tests."""

from __future__ import annotations

import pytest

from pyagingrt.models import registry


@pytest.fixture
def toy(monkeypatch):
    """Registers the toy adapter (tests/api/toy_adapter.py) as model "toy" for one test."""
    monkeypatch.setitem(registry._ADAPTERS, "toy", "tests.api.toy_adapter:ToyAdapter")
    registry.get_adapter.cache_clear()
    yield
    registry.get_adapter.cache_clear()
