"""PADA learnability, in CI: every stage from nothing on 16x16 synthetic faces, about three minutes on 2 CPU cores.

A tiny CLIP tuned contrastively on the faces and their age prompts (a random CLIP's prompt embeddings are nearly
parallel, so they carry no target), a tiny DEX that reads the forehead band's age, a random ArcFace, a small DiffAE
(stage diffae) and the aging stage. After it, the 51-70 prompt gives a darker band than the 16-25 prompt on
held-out faces of an identity never seen in training; with the conditioning scrambled against the losses'
targets it does not. Three choices make the outcome stable (docs/training-ageflow-pada.md, "Tests"):

- the training faces are one identity at many ages: the band is then the only variation, and the DiffAE's z_sem
  carries it after 1000 steps. With one identity per face it did not after 3000 (decoding the mean z_sem of the
  51-70 faces against that of the 16-25 faces: band gap 0.01, against 0.24 here), and no aging stage can move
  what its decoder ignores;
- ``train.weights.clip=0``: the tiny CLIP's image tower is no judge of the band, and its directional loss sent
  the aging either way (gaps -0.007 to 0.031 over seven runs with it, 0.15 to 0.34 over six without);
- ``train.norm_on=delta``: L_norm on z_age itself pulls every z_age toward zero, and the conditional part was not
  learned in 300 steps (gaps 0.004 and 0.007 on two seeds, 0.15 to 0.34 with the delta).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pyagingrt.training.data.synthetic import SyntheticFaces, band_darkness
from pyagingrt.training.layers.arcface import ArcFace, ArcFaceConfig
from pyagingrt.training.layers.clip_encoder import ClipEncoder
from pyagingrt.training.layers.dex import DEX, DEXConfig
from pyagingrt.training.loop import train
from pyagingrt.training.losses.cusp import mean_variance_loss
from pyagingrt.training.models.pada import PADA, PROMPTS, age_group
from tests.models.test_pada import write_tiny_clip

SIDE, MIN_AGE, MAX_AGE = 16, 16, 70
# the tiny DiffAE made cheaper to train (each override roughly halves or thirds a step's cost)
SMALL_DIFFAE = ["model.num_res_blocks=1", "model.attention_resolutions=[]", "model.dropout=0"]


def _faces(count: int, seed: int) -> SyntheticFaces:
    return SyntheticFaces(count, image_size=SIDE, min_age=MIN_AGE, max_age=MAX_AGE, seed=seed, identities=1)


def _features(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _tune_clip(folder, faces, images) -> None:
    """300 contrastive steps: each face's image embedding toward its own label prompt's text embedding."""
    clip = ClipEncoder.from_pretrained(folder)
    model = clip.model.train().requires_grad_(True)
    prompts = [PROMPTS["male" if int(g) == 1 else "female"][age_group(float(a))]
               for a, g in zip(faces.ages, faces.genders, strict=True)]  # fmt: skip
    opt, order = torch.optim.Adam(model.parameters(), lr=1e-3), torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, len(images), (32,), generator=order)
        texts = sorted({prompts[i] for i in idx})
        labels = torch.tensor([texts.index(prompts[i]) for i in idx])
        text = F.normalize(_features(model.get_text_features(**clip._tokenize(texts))), dim=-1)
        image = F.normalize(_features(model.get_image_features(pixel_values=clip.preprocess(images[idx]))), dim=-1)
        loss = F.cross_entropy(image @ text.T * 20, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(folder)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pada_learn")
    faces = _faces(512, seed=7)
    images = torch.stack([faces[i]["image"] for i in range(512)]) * 2 - 1
    with torch.random.fork_rng(devices=[]):
        (root / "clip").mkdir()
        write_tiny_clip(root / "clip")
        _tune_clip(root / "clip", faces, images)
        torch.manual_seed(0)
        torch.save(ArcFace(ArcFaceConfig.tiny()).state_dict(), root / "arcface.pth")
        dex, order = DEX(DEXConfig.tiny()), torch.Generator().manual_seed(0)
        opt = torch.optim.Adam(dex.parameters(), lr=3e-3)
        for _ in range(600):  # a judge that reads the band's age
            idx = torch.randint(0, 512, (32,), generator=order)
            loss = mean_variance_loss(dex(images[idx]), faces.ages.long()[idx], double_softmax=False)
            opt.zero_grad()
            loss.backward()
            opt.step()
        save_file({k: v.contiguous() for k, v in dex.state_dict().items()}, str(root / "dex.safetensors"))
    common = ["loop.progress=false", f"model.image_size={SIDE}", *SMALL_DIFFAE]
    diffae = train("pada", faces, out=root / "diffae", stage="diffae", device="cpu",
                   overrides=[*common, "loop.steps=1000", "loop.batch_size=8", "train.lr=2e-3"])  # fmt: skip
    sets = [*common, "loop.steps=200", "train.lr=2e-3", "train.norm_on=delta", "train.weights.clip=0",
            f"files.diffae={diffae.weights}", f"files.clip={root / 'clip'}", f"files.dex={root / 'dex.safetensors'}",
            f"files.arcface={root / 'arcface.pth'}"]  # fmt: skip
    return {"root": root, "sets": sets, "faces": faces}


def _gap(recipe) -> torch.Tensor:
    faces = _faces(16, seed=99)  # another identity than the training faces'
    images = torch.stack([faces[i]["image"] for i in range(16)])
    out = recipe.sample(images, [20, 60], gender="male")  # the 16-25 and 51-70 prompts
    return band_darkness(out[:, 1]) - band_darkness(out[:, 0])  # [16]


def test_text_conditioning_moves_the_band_toward_the_target_group(setup, monkeypatch):
    aging = train("pada", setup["faces"], out=setup["root"] / "aging", stage="aging", device="cpu",
                  overrides=setup["sets"])  # fmt: skip
    gap = _gap(aging.recipe)
    assert float(gap.mean()) > 0.07, gap  # 0.21-0.23 over four aging seeds; 0.15-0.34 in the runs behind the setup
    assert float((gap > 0).float().mean()) >= 0.9, gap

    original = PADA.modulate
    scramble = torch.Generator().manual_seed(5)

    def scrambled(self, e_age, z_src, stats="dataset"):  # training only: the embedding is another sample's
        if torch.is_grad_enabled():
            e_age = e_age[torch.randperm(len(e_age), generator=scramble)]
        return original(self, e_age, z_src, stats)

    monkeypatch.setattr(PADA, "modulate", scrambled)
    broken = train("pada", setup["faces"], out=setup["root"] / "broken", stage="aging", device="cpu",
                   overrides=setup["sets"])  # fmt: skip
    monkeypatch.undo()
    assert abs(float(_gap(broken.recipe).mean())) < 0.5 * float(gap.mean())
