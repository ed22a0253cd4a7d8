"""Device parameters for tests: ``cpu`` always, ``cuda`` carrying the ``gpu`` mark (auto-skipped without CUDA)."""

from __future__ import annotations

import pytest

CPU_AND_CUDA = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
