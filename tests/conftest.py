"""Make ``tests/tiny_models.py`` importable as ``tiny_models`` whatever pytest's import mode (prepend/importlib), and
the tools in ``scripts/`` (``datagen``: the offline datasets; not part of the installed package) as top-level
modules."""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _path in (str(_HERE), str(_HERE.parent / "scripts")):
    if _path not in sys.path:
        sys.path.insert(0, _path)
