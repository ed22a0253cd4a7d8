"""The paper presets build and take a training step (slow on CPU: AcGAN's paper D alone has 179 M parameters)."""

from __future__ import annotations

import json

import pytest
import torch

import pyagingrt
from pyagingrt.training.loop import train

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _only_when_asked(request):
    """Minutes and gigabytes on a CPU: run only with ``-m slow``."""
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("a paper-size training step; run with -m slow")


ONE_STEP = ["loop.steps=1", "loop.batch_size=2", "loop.progress=false", "loop.sample_every=0", "loop.num_workers=0"]


def test_acgan_paper_step(tmp_path):
    result = train("acgan", "synthetic:4", out=tmp_path / "run", preset="paper", overrides=ONE_STEP, device="cpu")
    engine = pyagingrt.load(result.weights, device="cpu")
    assert engine.input_size == 224
    assert engine.num_parameters() == 8_433_664


def test_cusp_paper_step(tmp_path, dex_file):
    # the paper G and D with the tiny DEX (a paper DEX file is 0.5 GB of random numbers)
    tiny_dex = {"conv_channels": [[4, 4], [8, 8], [8, 8, 8], [8, 8, 8], [8, 8, 8]], "fc_width": 16, "input_res": 32}
    sets = [*ONE_STEP, f"files.dex={dex_file}", f"model.dex={json.dumps({**tiny_dex, 'num_classes': 101})}"]
    result = train("cusp", "synthetic:4", out=tmp_path / "run", preset="paper", overrides=sets, device="cpu")
    assert result.recipe.D.block_resolutions == [224, 112, 56, 28, 14]
    channels = [getattr(result.recipe.D, f"b{r}").conv0.weight.shape[0] for r in (224, 112, 56, 28, 14)]
    assert channels == [146, 292, 512, 512, 512]
    assert torch.isfinite(torch.stack([p.detach().sum() for p in result.recipe.G.parameters()])).all()
