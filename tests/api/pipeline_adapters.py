"""Test-only model adapters for the face pipeline and the CLI: an identity model and a noisy (stochastic) one.

They go through the real ``pyagingrt.load`` / ``Engine`` / checkpoint path; ``cli_with_test_models`` registers
them for CLI subprocesses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pyagingrt.errors import CheckpointError, InputError
from pyagingrt.models.base import AgeGroup, ModelAdapter

TEST_ADAPTERS = {
    "identity": "tests.api.pipeline_adapters:IdentityAdapter",
    "noisy": "tests.api.pipeline_adapters:NoisyAdapter",
    "slow": "tests.api.pipeline_adapters:SlowAdapter",
}


@dataclass(frozen=True)
class FakeConfig:
    size: int = 32


class Gain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(()))


class IdentityAdapter(ModelAdapter):
    """Returns the crops unchanged (gain 1): align -> model -> paste-back must give the photo back."""

    name = "identity"
    title = "Identity (tests only)"
    config_names = ("tiny",)
    stochastic = False

    def make_config(self, name: str) -> FakeConfig:
        return FakeConfig()

    def config_from_dict(self, data: dict[str, Any]) -> FakeConfig:
        return FakeConfig(**data)

    def build(self, config: FakeConfig) -> nn.Module:
        return Gain()

    def input_size(self, config: FakeConfig) -> int:
        return config.size

    def age_groups(self, config: FakeConfig) -> tuple[AgeGroup, ...]:
        return (AgeGroup(0, 0.0, 100.0, "0-100"),)

    def validate_ages(self, config: FakeConfig, ages: Tensor) -> Tensor:
        if bool(((ages < 0) | (ages > 100)).any()):
            raise InputError(f"{self.name} takes ages 0 to 100, got {ages.tolist()}")
        return ages

    def run(self, module: nn.Module, images: Tensor, targets: Tensor, generator: Any, options: dict) -> Tensor:
        return images * module.gain

    def convert_official(self, path: Path, config_name: str | None = None) -> tuple[Any, dict[str, Tensor]]:
        raise CheckpointError(f"{path} is not a pyagingrt checkpoint; {self.name} has no official format")


class NoisyAdapter(IdentityAdapter):
    """Adds seeded noise, drawn for the whole batch in one go: sample b's noise depends on its place in the
    batch, the worst case the video pipeline must still keep flicker-free."""

    name = "noisy"
    title = "Noisy (tests only)"
    stochastic = True

    def run(self, module: nn.Module, images: Tensor, targets: Tensor, generator: Any, options: dict) -> Tensor:
        noise = torch.randn(images.shape, generator=generator).to(images.device)  # [B, 3, S, S]
        return (images * module.gain + 0.2 * noise).clamp(0, 1)


class SlowAdapter(IdentityAdapter):
    """The identity, a quarter of a second per call: a video run lasts long enough to be interrupted."""

    name = "slow"
    title = "Slow (tests only)"

    def run(self, module: nn.Module, images: Tensor, targets: Tensor, generator: Any, options: dict) -> Tensor:
        import time

        time.sleep(0.25)
        return images * module.gain


# --- helpers shared by the pipeline and CLI tests ---------------------------------------------------------
def register_test_models(monkeypatch: Any) -> None:
    """Make ``pyagingrt.load("identity" | "noisy")`` work for one test."""
    from pyagingrt.models import registry

    for name, target in TEST_ADAPTERS.items():
        monkeypatch.setitem(registry._ADAPTERS, name, target)
    registry.get_adapter.cache_clear()  # lookups are cached by name; test names never reach the real models


def load_test_engine(name: str, size: int = 32) -> Any:
    """An engine of a test model, built without the random-weights warning: its weights are the identity by
    construction. (Loading its checkpoint by name needs register_test_models.)"""
    from pyagingrt.api import Engine

    adapter = {"identity": IdentityAdapter, "noisy": NoisyAdapter, "slow": SlowAdapter}[name]()
    config = FakeConfig(size=size)
    return Engine(
        adapter, config, adapter.build(config).eval().requires_grad_(False), torch.device("cpu"), torch.float32
    )


def save_test_checkpoint(name: str, path: Path) -> Path:
    """A real pyagingrt checkpoint of a test model."""
    return load_test_engine(name).save(path)


def write_test_video(
    path: Path,
    frames: list[Any],
    fps: int = 24,
    audio: bool = True,
    rotation: int = 0,
    codec: str = "libx264",
) -> None:
    """Encode uint8 RGB frames [H, W, 3] (stored as given) with PyAV, plus a 440 Hz mono AAC track."""
    import av
    import numpy as np

    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"crf": "0"}  # lossless: identical frames decode identically
        if rotation:
            video.set_display_rotation(rotation)
        sound = None
        if audio:
            sound = out.add_stream("aac", rate=16000)
            sound.layout = "mono"
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        if sound is not None:
            t = np.arange(16000 * len(frames) // fps) / 16000
            wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for k in range(0, len(wave) - 1023, 1024):
                chunk = av.AudioFrame.from_ndarray(wave[None, k : k + 1024], format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 16000, k
                out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
        out.mux(video.encode(None))


def read_test_video(path: Path) -> dict[str, Any]:
    """Frames (uint8 RGB, as stored), rate, rotation and audio frame count of a video."""
    import av

    with av.open(str(path)) as box:
        stream = box.streams.video[0]
        rate = stream.average_rate
        frames, rotations = [], set()
        for frame in box.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            rotations.add(round(frame.rotation or 0))
    audio_frames = 0
    with av.open(str(path)) as box:
        if box.streams.audio:
            audio_frames = sum(1 for _ in box.decode(audio=0))
    return {"frames": frames, "rate": rate, "rotations": rotations, "audio_frames": audio_frames}
