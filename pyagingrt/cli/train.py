"""``agingrt train MODEL --data D --config paper|tiny --out RUN_DIR``: train a model (torchrun: one process per GPU)."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  agingrt train acgan --data synthetic --config tiny --out runs/acgan-tiny
  agingrt train acgan --data morph/ --config paper --out runs/acgan --set loop.batch_size=64 --set train.lr_g=2e-4
  agingrt train acgan --out runs/acgan --resume                 # continue from runs/acgan/latest.json
  torchrun --nproc_per_node 8 -m pyagingrt train cusp --data ffhq-rr/ --config paper --out runs/cusp \\
      --set files.dex=dex_imdb_wiki.safetensors

Every knob of the resolved config (RUN_DIR/config.json) can be changed with --set section.key=value;
values are JSON (1e-4, true, null, [0.5, 0.999]) or plain strings. See docs/training.md."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (AcGAN, CUSP, ...) into a run folder",
        description="Train MODEL on a face data set with the recipe of --config (paper: the published recipe; "
        "tiny: a small model for a quick check). Writes RUN_DIR/config.json, periodic and final checkpoints "
        "(pyagingrt .safetensors that `agingrt age` and pyagingrt.load read, plus training state for --resume), "
        "metrics.csv (and TensorBoard logs when tensorboard is installed) and sample grids. Launch with "
        "`torchrun --nproc_per_node N -m pyagingrt train ...` for several GPUs or nodes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", nargs="?", help="the model to train: acgan, cusp, ageflow or pada (optional with --resume)")
    p.add_argument(
        "--data",
        default=None,
        help="the data set: a folder / label CSV / archive that training.data reads, or synthetic[:N] "
        "(a generated face-like set; N items, default 512)",
    )
    p.add_argument("--config", default="tiny", help="recipe preset: paper or tiny (default: tiny)")
    p.add_argument("--out", required=True, help="the run folder (must be empty unless --resume)")
    p.add_argument("--stage", default=None, help="the training stage for multi-stage models (default: the first)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. train.lr_g=2e-4 or loop.steps=1000 (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the local GPU when present)")
    p.add_argument("--stop-after", type=int, default=None, help="stop after this many steps (schedules unchanged)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from pyagingrt.errors import InputError
    from pyagingrt.training.loop import resolve_config, train

    if args.print_config:
        if args.model is None:
            raise InputError("--print-config needs MODEL")
        _, _, cfg = resolve_config(args.model, args.config, args.stage, args.overrides)
        print(json.dumps(cfg, indent=2, sort_keys=True))
        return 0
    if not args.resume and (args.model is None or args.data is None):
        raise InputError("agingrt train needs MODEL and --data (or --resume with the --out of an earlier run)")
    import torch.distributed as dist

    try:
        result = train(
            args.model or "",
            args.data,
            out=args.out,
            preset=args.config,
            stage=args.stage,
            overrides=args.overrides,
            resume=args.resume,
            device=args.device,
            stop_after=args.stop_after,
        )
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if result.recipe.ctx.rank == 0:
        print(f"step {result.step}: weights {result.weights}")
    return 0
