"""Error and warning text for the command line: the library's messages name API keywords (``device='cpu'``,
``clip=DIR``), which a CLI user cannot type; :func:`cli_words` turns them into the flags that do the same."""

from __future__ import annotations

import re

__all__ = ["cli_words"]

# keyword of pyagingrt.load / Engine.age -> flag of `agingrt age` and `agingrt video`
_FLAGS = {
    "device": "--device",
    "precision": "--precision",
    "backend": "--backend",
    "config": "--config",
    "dex": "--dex",
    "clip": "--clip",
    "latent": "--latent",
    "checkpoint": "--checkpoint",
    "num_samples": "--samples",
    "sigma_m": "--sigma-m",
    "sigma_g": "--sigma-g",
    "text": "--text",
    "reference": "--reference",
    "seed": "--seed",
}
_NAMES = "|".join(sorted(_FLAGS, key=len, reverse=True))
# device='cpu', precision="fp32", clip=DIR, dex=PATH: a keyword, '=', a quoted or bare value
_ASSIGNMENT = re.compile(rf"\b({_NAMES})=(?:'([^']*)'|\"([^\"]*)\"|([A-Za-z0-9_./:-]+))")
_LOAD_OPTIONS = re.compile(r"load\(\) for (\w+) does not take ([\w, ]+); allowed: ([\w, ]+)")


def _assignment(match: re.Match[str]) -> str:
    value = next(v for v in match.groups()[1:] if v is not None)
    return f"{_FLAGS[match.group(1)]} {value}"


def _load_options(match: re.Match[str]) -> str:
    given = ", ".join(_FLAGS.get(n.strip(), n.strip()) for n in match.group(2).split(","))
    allowed = ", ".join(_FLAGS.get(n.strip(), n.strip()) for n in match.group(3).split(",") if n.strip() != "none")
    return f"{match.group(1)} does not take {given}" + (f" (it takes {allowed})" if allowed else "")


def cli_words(message: object) -> str:
    """``message`` on one line, with API keywords replaced by the CLI flags that set them."""
    text = " ".join(str(message).split())  # one line, whatever the library said
    text = _LOAD_OPTIONS.sub(_load_options, text)
    text = _ASSIGNMENT.sub(_assignment, text)
    return text.replace(" to pyagingrt.load", "")
