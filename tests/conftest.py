"""Make ``tests/tiny_models.py`` importable as ``tiny_models`` whatever pytest's import mode (prepend/importlib)."""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
