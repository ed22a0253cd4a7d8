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


@pytest.fixture(scope="session")
def trained_dex_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DEX trained (seconds) to read the synthetic faces' age from their forehead band, ages 20-69 at
    the CUSP tiny crop: a frozen judge that carries an age signal, as the real DEX does for photos."""
    from safetensors.torch import save_file

    from pyagingrt.training.data.synthetic import SyntheticFaces
    from pyagingrt.training.layers.dex import DEX, DEXConfig
    from pyagingrt.training.losses.cusp import mean_variance_loss

    gen_state, threads = torch.get_rng_state(), torch.get_num_threads()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a session fixture runs before the per-test one-thread fixture
    faces = SyntheticFaces(512, image_size=56, min_age=20, max_age=69, seed=7)
    images = torch.stack([faces[i]["image"] for i in range(len(faces))]) * 2 - 1
    ages = faces.ages.long()
    dex = DEX(DEXConfig.tiny())
    opt = torch.optim.Adam(dex.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(600):
        idx = torch.randint(0, len(faces), (32,), generator=order)
        loss = mean_variance_loss(dex(images[idx]), ages[idx], double_softmax=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_rng_state(gen_state)
    torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("dex") / "dex_synthetic.safetensors"
    save_file({k: v.detach().contiguous() for k, v in dex.state_dict().items()}, str(path))
    return path


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    """A folder with one photo of a face (scikit-image's astronaut), for the CLI's age and eval commands."""
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(skimage_data.astronaut()).save(folder / "astronaut.png")
    return folder


@pytest.fixture
def eval_judges() -> None:
    """Skips a test of `agingrt eval` when the [eval] extra (its judge networks) is not installed."""
    from pyagingrt.judges import get_judge

    try:
        get_judge(identity=True)
    except ImportError as exc:  # MissingJudgeError
        pytest.skip(str(exc))
