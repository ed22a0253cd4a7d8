"""Two gloo processes on CPU (the torchrun layout: RANK / WORLD_SIZE / MASTER_ADDR in the environment) train
AcGAN tiny; both ranks must hold identical weights and optimiser states afterwards."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

WORLD = 2
STEPS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    from pyagingrt.training.loop import train

    sets = [f"loop.steps={STEPS}", "loop.batch_size=8", "loop.progress=false", "loop.sample_every=0"]
    result = train("acgan", "synthetic:32", out=os.path.join(out, "run"), overrides=sets, device="cpu")
    recipe = result.recipe
    torch.save(
        {
            "modules": {k: m.state_dict() for k, m in recipe.modules().items()},
            "opt_g": recipe.opt_g.state_dict()["state"],
            "backend": dist.get_backend(),
            "world": dist.get_world_size(),
        },
        os.path.join(out, f"rank{rank}.pt"),
    )
    dist.destroy_process_group()


def test_two_gloo_processes_hold_identical_weights(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert r0["backend"] == "gloo"
    assert r0["world"] == WORLD
    for name in ("G", "D"):
        assert r0["modules"][name].keys() == r1["modules"][name].keys()
        for key, value in r0["modules"][name].items():
            assert torch.equal(value, r1["modules"][name][key]), f"{name}.{key} differs between ranks"
    for index, state in r0["opt_g"].items():
        assert torch.equal(state["exp_avg"], r1["opt_g"][index]["exp_avg"])
    # the ranks really trained (each on its own half of every batch: without the gradient all-reduce they
    # diverge and this test fails), and rank 0 wrote what they hold
    from pyagingrt.training.loop import resolve_config
    from pyagingrt.training.recipe import TrainContext

    cls, stage, cfg = resolve_config("acgan", "tiny")
    torch.manual_seed(cfg["loop"]["seed"])
    untrained = cls(cfg, TrainContext(device=torch.device("cpu")), stage).G.state_dict()
    assert not torch.equal(untrained["main.0.weight"], r0["modules"]["G"]["main.0.weight"])
    weights = load_file(tmp_path / "run" / "final.safetensors")
    assert all(torch.equal(weights[k], r1["modules"]["G"][k]) for k in weights)
    assert not (tmp_path / "run" / "rank1").exists()
    saved = (tmp_path / "run" / "config.json").read_text()
    assert '"world_size": 2' in saved
