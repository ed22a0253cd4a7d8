"""The cost table (pyagingrt/models/costs.json) against a fresh meta-device count, and the counted fallback."""

from __future__ import annotations

import dataclasses

import pytest

from pyagingrt.models.costs import _table, count_cost, model_cost, tabulated_cost
from pyagingrt.models.registry import get_adapter, model_names

NAMED = [(m, c) for m in model_names() for c in get_adapter(m).config_names]


@pytest.mark.parametrize(("model", "config_name"), NAMED)
def test_the_table_holds_what_a_fresh_count_gives(model, config_name):
    """Regenerate with `python -m pyagingrt.models.costs` when a model or config changes."""
    adapter = get_adapter(model)
    config = adapter.make_config(config_name)
    assert tabulated_cost(adapter, config) == count_cost(adapter, config), "costs.json is stale"


def test_the_table_holds_no_config_that_is_gone():
    recorded = {(m, c) for m, configs in _table()["models"].items() for c in configs}
    assert recorded == set(NAMED)


def test_a_config_outside_the_table_is_counted():
    adapter = get_adapter("acgan")
    tiny = adapter.make_config("tiny")
    wider = dataclasses.replace(tiny, g_conv_dim=2 * tiny.g_conv_dim)
    assert tabulated_cost(adapter, wider) is None
    cost = model_cost(adapter, wider)
    assert cost == count_cost(adapter, wider)
    assert cost.parameters > model_cost(adapter, tiny).parameters
    assert cost.flops_per_image > model_cost(adapter, tiny).flops_per_image
