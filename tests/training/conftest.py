"""Fixtures of the training tests: one intra-op thread (the tiny models gain nothing from more, and a busy
2-core CI machine loses a lot to oversubscription), and a small random DEX weights file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def dex_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DEX (random weights, the layout of DEXConfig.tiny) saved as safetensors, as a user's file would be."""
    from safetensors.torch import save_file

    from pyagingrt.training.layers.dex import DEX, DEXConfig

    gen_state = torch.get_rng_state()
    torch.manual_seed(1234)
    dex = DEX(DEXConfig.tiny())
    torch.set_rng_state(gen_state)
    path = tmp_path_factory.mktemp("dex") / "dex_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in dex.state_dict().items()}, str(path))
    return path
