"""The web page's static files (runs anywhere; the page itself is tested in Chromium in test_page.py)."""

from __future__ import annotations

from pathlib import Path


def test_nothing_on_the_page_comes_from_the_network():
    static = Path(__file__).resolve().parents[2] / "pyagingrt" / "serve" / "static"
    for path in static.iterdir():
        text = path.read_text()
        assert "http://" not in text
        assert "https://" not in text
        assert "//cdn" not in text
