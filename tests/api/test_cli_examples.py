"""Every ``agingrt`` example in README.md and in each command's ``--help`` runs, as written, on tiny stand-ins.

The examples name files a user would have (``me.jpg``, ``in.mp4``, ``network-snapshot.pkl``, ``dex.pt``, a CLIP
folder). The test writes a stand-in under each such name in a fresh folder and runs the command there with
``main()``: photos and videos are small generated ones, and a checkpoint name maps to a tiny pyagingrt
checkpoint of the model it is an example for (:data:`CHECKPOINTS`; pyagingrt reads its own format whatever the
file is called), so the docs cannot drift from the flags again. Paper-size benchmark examples get
``--config tiny`` and one timed call; examples that need CUDA are skipped where there is none.
"""

from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pyagingrt
from pyagingrt.cli.main import build_parser, main
from tests.api.pipeline_adapters import write_test_video

skimage_data = pytest.importorskip("skimage.data")
cv2 = pytest.importorskip("cv2")
pytest.importorskip("av")
ROOT = Path(__file__).resolve().parents[2]

# checkpoint file named in an example -> the model its tiny stand-in is
CHECKPOINTS = {
    "00040_netG.pth": "acgan",
    "acgan.safetensors": "acgan",
    "network-snapshot.pkl": "cusp",
    "cusp.safetensors": "cusp",
    "last.ckpt": "pada",
    "final.safetensors": "acgan",  # the training section's run folder
}
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
# Commands whose examples run here on stand-ins. The others need what a test cannot make in seconds (a data
# set and a training run, a running server, the judges' packages, an export's minutes): their examples are
# parsed, so a renamed or removed flag still fails, and their own test files run them on tiny inputs.
RUN_COMMANDS = ("age", "video", "convert", "bench", "info")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi")


def readme_examples() -> list[str]:
    """``agingrt ...`` commands of the README's bash blocks (continuation lines joined, comments dropped)."""
    text = (ROOT / "README.md").read_text()
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "agingrt":
                found.append(shlex.join(words))
    return found


def help_examples() -> list[str]:
    """``agingrt ...`` lines of every command's description and epilog."""
    parser = build_parser()
    found = []
    for action in parser._subparsers._group_actions:  # the sub-commands
        for sub in dict.fromkeys(action.choices.values()):
            for text in (sub.description or "", sub.epilog or ""):
                for line in text.splitlines():
                    if not line.strip().startswith("agingrt "):  # prose may hold unbalanced quotes
                        continue
                    words = shlex.split(line, comments=True)
                    found.append(shlex.join(words))
    return found


EXAMPLES = [pytest.param(e, id=f"README: {e}") for e in readme_examples()] + [
    pytest.param(e, id=f"--help: {e}") for e in help_examples()
]


def test_the_docs_have_examples_of_every_media_command():
    commands = {shlex.split(p.values[0])[1] for p in EXAMPLES}
    assert {"age", "video", "convert", "bench", "info"} <= commands, commands


# --- stand-ins ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> Path:
    """Tiny checkpoints, DEX weights and a CLIP folder, written once; each example copies what it names."""
    root = tmp_path_factory.mktemp("stand_ins")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyagingrt.RandomWeightsWarning)
        for model in sorted(set(CHECKPOINTS.values())):
            engine = pyagingrt.load(model, config="tiny", device="cpu")
            engine.save(root / f"{model}.safetensors")
            if model == "cusp":
                torch.save(engine.module.dex.state_dict(), root / "dex.pt")
    from tests.models.test_pada import write_tiny_clip

    (root / "clip").mkdir()
    write_tiny_clip(root / "clip")
    face = skimage_data.astronaut()
    Image.fromarray(face).save(root / "photo.jpg")
    frame = np.full((240, 320, 3), 90, np.uint8)
    frame[:, :240] = cv2.resize(face[0:320, 80:400], (240, 240), interpolation=cv2.INTER_AREA)
    write_test_video(root / "video.mp4", [frame] * 4, fps=12)
    return root


def _place(word: str, flag: str | None, model: str | None, stand_ins: Path, here: Path) -> None:
    """Write the stand-in for one argument of an example, when it names an input file that is not there."""
    path = here / word
    if path.exists() or flag in ("-o", "--output", "--json", "--plot", "--sheet", "--profile", "--out-dir"):
        return
    name = Path(word).name
    path.parent.mkdir(parents=True, exist_ok=True)
    if name in CHECKPOINTS:
        path.write_bytes((stand_ins / f"{CHECKPOINTS[name]}.safetensors").read_bytes())
    elif flag == "--dex":
        path.write_bytes((stand_ins / "dex.pt").read_bytes())
    elif flag == "--clip":
        path.mkdir(parents=True)
        for f in (stand_ins / "clip").iterdir():
            (path / f.name).write_bytes(f.read_bytes())
    elif path.suffix.lower() in PHOTO_SUFFIXES:
        path.write_bytes((stand_ins / "photo.jpg").read_bytes())
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        path.write_bytes((stand_ins / "video.mp4").read_bytes())
    elif word.endswith("/") and flag is None:  # a folder of photos
        path.mkdir(parents=True)
        (path / "me.jpg").write_bytes((stand_ins / "photo.jpg").read_bytes())
    elif flag == "--checkpoint" or (flag is None and "." in name and model is not None):
        raise AssertionError(f"no stand-in for {word!r}: add it to CHECKPOINTS in {Path(__file__).name}")


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_runs_as_written(example, stand_ins, tmp_path, monkeypatch, capsys):
    words = shlex.split(example)[1:]
    if words[0] not in RUN_COMMANDS:
        build_parser().parse_args(words)  # exits 2 (SystemExit) on an unknown flag or a missing argument
        return
    needs_cuda = ("--device" in words and words[words.index("--device") + 1].startswith("cuda")) or (
        "--precision" in words and words[words.index("--precision") + 1] == "fp16"
    )
    if needs_cuda and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model = words[words.index("--model") + 1] if "--model" in words else None
    for i, word in enumerate(words[1:], start=1):
        flag = words[i - 1] if words[i - 1].startswith("-") else None
        if not word.startswith("-"):
            _place(word, flag, model, stand_ins, tmp_path)
    if words[0] == "bench":  # paper sizes take minutes on a CPU: the same command on tiny configs, one call
        words += ["--config", "tiny", "--warmup", "0", "--iters", "1"]
    if words[0] == "video":
        words += ["--no-progress"]  # no bar in the test log
    monkeypatch.chdir(tmp_path)
    code = main(words)
    err = capsys.readouterr().err
    assert code == 0, f"`{example}` exited {code}: {err}"
    assert "agingrt: error" not in err
