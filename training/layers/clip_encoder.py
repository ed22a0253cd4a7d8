"""CLIP text and image embeddings for PADA (docs/models/pada.md section 3.3), through Hugging Face ``transformers``.

- :meth:`ClipEncoder.from_pretrained` loads a user-given directory in Hugging Face layout (``config.json``,
  ``model.safetensors`` or ``pytorch_model.bin``, ``vocab.json``, ``merges.txt``, optional
  ``preprocessor_config.json``) with ``local_files_only=True``: nothing is ever downloaded.
- :meth:`ClipEncoder.random` builds a randomly initialised CLIP from a ``CLIPConfig`` (:func:`clip_config`:
  ``"vit_b32"``, the paper's default, or ``"tiny"`` for tests) with :class:`ByteTokenizer`, a deterministic
  stand-in tokenizer. Its embeddings are **meaningless**: it only lets a random-weight engine run end to end.

Both embeddings are L2-normalised. transformers 4.x returns a tensor from ``get_*_features``, 5.x an output
object whose ``pooler_output`` is the projection; both are accepted. Image preprocessing is differentiable
(PADA's losses need gradients through it): x in [-1, 1] -> (x + 1)/2 -> antialiased bicubic resize to
``vision_config.image_size`` -> (x - mean)/std.

``transformers`` is imported lazily: it is an optional dependency (``pip install pyagingrt[clip]``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# OpenAI CLIP's normalisation (also the default of CLIPImageProcessor)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RANDOM_CLIP_SEED = 0  # random CLIPs are built from this seed so every build of a config is identical

# Files a CLIP directory must hold; the weights may be safetensors or a legacy torch file.
REQUIRED_FILES = ("config.json", "vocab.json", "merges.txt")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def clip_config(preset: str) -> Any:
    """A ``transformers.CLIPConfig`` for ``preset``: ``"vit_b32"`` (ViT-B/32, D = 512, 151,277,313 parameters)
    or ``"tiny"`` (text width 32, 2 layers, 2 heads, context 77, vocab 514; vision 32 px, patch 8, width 32,
    2 layers; D = 16). The tiny vocabulary is the 256 byte symbols, each again with ``</w>``, then
    ``<|startoftext|>`` = 512 and ``<|endoftext|>`` = 513 (also the pad id, so EOS pooling finds the first one).
    """
    from transformers import CLIPConfig

    if preset == "vit_b32":
        text = {
            "vocab_size": 49408,
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
            "max_position_embeddings": 77,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 49407,
        }
        vision = {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 224,
            "patch_size": 32,
        }
        return CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)
    if preset == "tiny":
        text = {
            "vocab_size": 514,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": 512,
            "eos_token_id": 513,
            "pad_token_id": 513,
        }
        vision = {
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        }
        return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    raise ValueError(f"unknown CLIP preset {preset!r}; choose 'vit_b32' or 'tiny'")


class ByteTokenizer:
    """Deterministic stand-in for CLIPTokenizer, used only with a random CLIP: **its tokens mean nothing**.

    ids = [bos] + UTF-8 bytes of the lower-cased text (byte value = id) + [eos], truncated and padded with
    ``pad_id`` to ``context`` tokens. Different texts give different ids, which is all a random model needs.
    """

    def __init__(self, bos_id: int, eos_id: int, pad_id: int, context: int) -> None:
        self.bos_id, self.eos_id, self.pad_id, self.context = bos_id, eos_id, pad_id, context

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        ids = torch.full((len(texts), self.context), self.pad_id, dtype=torch.long)  # [N, L]
        mask = torch.zeros(len(texts), self.context, dtype=torch.long)  # [N, L]
        for i, text in enumerate(texts):
            body = list(text.lower().encode("utf-8"))[: self.context - 2]
            row = [self.bos_id, *body, self.eos_id]
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def _features(out: Any) -> Tensor:
    """transformers 4.x returns the projected features, 5.x an output object holding them as pooler_output."""
    return out if isinstance(out, Tensor) else out.pooler_output


class ClipEncoder(nn.Module):
    """A frozen CLIP with L2-normalised text and image embeddings of width D = ``projection_dim``.

    Build with :meth:`from_pretrained` (a Hugging Face directory) or :meth:`random` (meaningless weights).
    ``is_random`` says which.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        is_random: bool = False,
        source: str = "",
    ) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.is_random = is_random
        self.source = source
        cfg = model.config
        self.projection_dim = int(cfg.projection_dim)
        self.context = int(cfg.text_config.max_position_embeddings)
        self.image_size = int(cfg.vision_config.image_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> ClipEncoder:
        """CLIP stays in eval mode: it is frozen in PADA (training and inference)."""
        super().train(False)
        return self

    @classmethod
    def random(cls, config: Any) -> ClipEncoder:
        """A random CLIP of ``config`` (a CLIPConfig), always the same weights (seed RANDOM_CLIP_SEED)."""
        from transformers import CLIPModel

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_CLIP_SEED)
            model = CLIPModel(config)
        text = config.text_config
        tokenizer = ByteTokenizer(
            int(text.bos_token_id), int(text.eos_token_id), int(text.pad_token_id), int(text.max_position_embeddings)
        )
        return cls(model, tokenizer, is_random=True, source="random")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ClipEncoder:
        """Load CLIPModel and CLIPTokenizer from a local Hugging Face directory; never downloads.

        Raises:
            FileNotFoundError: the directory or one of its required files is missing (the message names it).
        """
        from transformers import CLIPModel, CLIPTokenizer

        folder = Path(directory)
        if not folder.is_dir():
            raise FileNotFoundError(f"CLIP directory {folder} does not exist")
        for name in REQUIRED_FILES:
            if not (folder / name).is_file():
                raise FileNotFoundError(f"CLIP directory {folder} has no {name}")
        if not any((folder / name).is_file() for name in WEIGHT_FILES):
            raise FileNotFoundError(f"CLIP directory {folder} has no weights ({' or '.join(WEIGHT_FILES)})")
        model = CLIPModel.from_pretrained(str(folder), local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
        mean, std = CLIP_MEAN, CLIP_STD
        processor = folder / "preprocessor_config.json"
        if processor.is_file():
            data = json.loads(processor.read_text())
            mean = tuple(data.get("image_mean", mean))
            std = tuple(data.get("image_std", std))
        return cls(model, tokenizer, mean, std, is_random=False, source=str(folder))

    def _tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        if isinstance(self.tokenizer, ByteTokenizer):
            return self.tokenizer(texts)
        enc = self.tokenizer(
            list(texts), padding="max_length", max_length=self.context, truncation=True, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """L2-normalised text embeddings: list of N strings -> Tensor[N, D] float32 on the model's device."""
        device = self.mean.device
        enc = {k: v.to(device) for k, v in self._tokenize(texts).items()}  # [N, L] each
        feats = _features(self.model.get_text_features(**enc))  # [N, D]
        return F.normalize(feats.float(), dim=-1)  # [N, D]

    def preprocess(self, x: Tensor) -> Tensor:
        """Differentiable CLIP preprocessing: [N, 3, H, W] in [-1, 1] -> [N, 3, s, s] normalised, s = image_size."""
        x = (x.float() + 1.0) / 2.0  # [N, 3, H, W] in [0, 1]
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False, antialias=True
            )  # [N, 3, s, s]
        return (x - self.mean) / self.std  # [N, 3, s, s]

    def encode_image(self, x: Tensor) -> Tensor:
        """L2-normalised image embeddings: Tensor[N, 3, H, W] in [-1, 1] -> Tensor[N, D] float32."""
        pixels = self.preprocess(x.to(self.mean.device))  # [N, 3, s, s]
        dtype = next(self.model.parameters()).dtype
        feats = _features(self.model.get_image_features(pixel_values=pixels.to(dtype)))  # [N, D]
        return F.normalize(feats.float(), dim=-1)  # [N, D]


__all__ = ["CLIP_MEAN", "CLIP_STD", "ByteTokenizer", "ClipEncoder", "clip_config"]
