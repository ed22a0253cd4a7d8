"""Detecting an interpreter whose libpython Triton's Python backend stub cannot use (runs everywhere)."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

from pyagingrt.cli.main import main
from pyagingrt.serve import libpython


def test_an_interpreter_without_a_shared_libpython_is_refused_with_what_to_do(monkeypatch):
    real = sysconfig.get_config_var
    monkeypatch.setattr(sysconfig, "get_config_var", lambda k: 0 if k == "Py_ENABLE_SHARED" else real(k))
    assert libpython.shared_libpython() is None
    with pytest.raises(libpython.LibpythonError) as info:
        libpython.prepare_stub_environment()
    message = str(info.value)
    assert "shared libpython" in message
    assert "-m venv" in message
    assert "enable-shared" in message


def test_the_cli_says_it_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(libpython, "shared_libpython", lambda: None)
    ckpt = tmp_path / "x.safetensors"
    ckpt.write_bytes(b"")
    assert main(["serve", "--model", "acgan", "--checkpoint", str(ckpt)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("agingrt: error: agingrt serve needs a Python built with a shared libpython"), err
    assert "\n" not in err
    assert "Traceback" not in err


def test_a_stub_that_would_load_another_libpython_is_refused(monkeypatch, tmp_path):
    other = tmp_path / "libpython3.x.so.1.0"
    other.write_bytes(b"")
    ours = tmp_path / "ours" / "libpython3.x.so.1.0"
    ours.parent.mkdir()
    ours.write_bytes(b"")
    monkeypatch.setattr(libpython, "shared_libpython", lambda: ours)
    monkeypatch.setattr(libpython, "_stub_path", lambda: Path("/stub"))
    monkeypatch.setattr(libpython, "_resolved_libpython", lambda stub, env: other)
    monkeypatch.setenv("LD_LIBRARY_PATH", "/somewhere")
    with pytest.raises(libpython.LibpythonError, match=r"would load .* instead of this interpreter's"):
        libpython.prepare_stub_environment()
    monkeypatch.setattr(libpython, "_resolved_libpython", lambda stub, env: ours)
    libpython.prepare_stub_environment()  # the right one: no error, and its folder leads LD_LIBRARY_PATH
    import os

    assert os.environ["LD_LIBRARY_PATH"].split(os.pathsep)[:2] == [str(ours.parent), "/somewhere"]
