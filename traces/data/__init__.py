"""Data shipped with the project: the held-out capture text and the default trace of the bundled model.

``HELDOUT_DIR`` holds one file per domain (``plays.txt``: held-out Shakespeare plays, public domain;
``code.txt``: held-out CPython standard-library modules, PSF licence, see ``PSF-LICENSE.txt``), written by
``python -m traces.tinymoe.train``. ``DEFAULT_TRACE`` is a capture of the bundled tiny MoE on that text;
``make demo`` and the tests use it.
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
HELDOUT_DIR = DATA_DIR / "heldout"
DEFAULT_TRACE = DATA_DIR / "tiny_moe_trace.parquet"

__all__ = ["DATA_DIR", "DEFAULT_TRACE", "HELDOUT_DIR"]
