"""Whether this interpreter can host Triton's Python backend, and what to do when it cannot.

PyTriton runs each bound model inside Triton's Python backend, whose stub process links
``libpython3.X.so.1.0``. An interpreter built without a shared libpython (pyenv's default build, some
static builds) has no such library: the stub then either fails to start or, worse, finds another build's
library of the same version (a distribution's) and fails at model load with an unrelated-looking error
(e.g. ``'_thread.RLock' object has no attribute '_recursion_count'``). We check before starting Triton.
See docs/serving.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from ..errors import AgingError

__all__ = [
    "LibpythonError",
    "check_shared_libpython",
    "prepare_stub_environment",
    "shared_libpython",
    "shared_libpython_problem",
]


class LibpythonError(AgingError, RuntimeError):
    """The interpreter has no shared libpython, which Triton's Python backend needs."""


def shared_libpython() -> Path | None:
    """The shared libpython this interpreter was built with, or None when it was built without one."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    name = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY") or ""
    for folder in (sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LIBPL")):
        if folder and name and (Path(folder) / name).is_file():
            return Path(folder) / name
    multiarch = sysconfig.get_config_var("MULTIARCH")  # Debian puts it under /usr/lib/<triplet>/
    if multiarch and name:
        for root in ("/usr/lib", "/usr/local/lib"):
            if (Path(root) / multiarch / name).is_file():
                return Path(root) / multiarch / name
    return None


def shared_libpython_problem() -> str | None:
    """None when Triton's Python backend can run under this interpreter; otherwise what is wrong and what to do."""
    if shared_libpython() is not None:
        return None
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    base = getattr(sys, "_base_executable", sys.executable)
    return (
        f"agingrt serve needs a Python built with a shared libpython (libpython{version}.so), because Triton's "
        f"Python backend links it; this interpreter ({base}, Python {sys.version.split()[0]}) was built without "
        f"one, so Triton would fail at model load. Create a virtual environment from a Python that has one and "
        f"install there: e.g. `/usr/bin/python{version} -m venv .venv-serve && . .venv-serve/bin/activate && "
        f"pip install 'pyagingrt[serve]'` (Debian/Ubuntu's python3), a conda Python, or pyenv with "
        f"PYTHON_CONFIGURE_OPTS=--enable-shared (see docs/serving.md)"
    )


def check_shared_libpython() -> None:
    """Raise :class:`LibpythonError` with :func:`shared_libpython_problem`'s advice when there is a problem."""
    problem = shared_libpython_problem()
    if problem is not None:
        raise LibpythonError(problem)


def _stub_path() -> Path | None:
    """PyTriton's Python backend stub for this Python version (None when PyTriton is not installed)."""
    try:
        import pytriton
    except ImportError:
        return None
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = Path(pytriton.__file__).parent / "tritonserver" / "python_backend_stubs" / version
    stub = stub / "triton_python_backend_stub"
    return stub if stub.is_file() else None


def _resolved_libpython(stub: Path, env: dict[str, str]) -> Path | None:
    """The libpython the dynamic loader picks for ``stub`` under ``env`` (ldd), or None when unknown."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return None
    try:
        out = subprocess.run([ldd, str(stub)], env=env, capture_output=True, text=True, timeout=30, check=False)
        text = out.stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"libpython\S+ => (\S+)", text)
    if match is None:
        return None
    if match.group(1) == "not":  # "libpython3.12.so.1.0 => not found"
        return Path("not found")
    return Path(match.group(1))


def prepare_stub_environment() -> None:
    """Make the Python backend stub load this interpreter's libpython, or raise LibpythonError saying what to do.

    A shared libpython outside the loader's default path (pyenv ``--enable-shared`` builds keep it in their own
    ``lib/``; the interpreter finds it through its RPATH, the stub does not) is put first on LD_LIBRARY_PATH,
    which Triton and its stubs inherit. Then ``ldd`` on the stub must name this very library.
    """
    check_shared_libpython()
    lib = shared_libpython()
    assert lib is not None
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if str(lib.parent) not in paths:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([str(lib.parent), *paths])
    stub = _stub_path()
    if stub is None:
        return
    found = _resolved_libpython(stub, dict(os.environ))
    if found is not None and not (found.exists() and os.path.samefile(found, lib)):
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        raise LibpythonError(
            f"Triton's Python backend stub would load {found} instead of this interpreter's {lib}, and fail at "
            f"model load; run agingrt serve from a virtual environment made with a Python whose libpython{version} "
            f"the system loader finds, e.g. `/usr/bin/python{version} -m venv .venv-serve` (see docs/serving.md)"
        )
