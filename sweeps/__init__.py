"""freeze-sweeps: Optuna studies over freezing strategies, logged to MLflow. Entry point: ``python -m sweeps``.

The notebook API (``run_study``, ``load_best``, ``predict``) is imported lazily so ``import sweeps`` stays light.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["BestModel", "load_best", "predict", "run_study"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from sweeps import api

        return getattr(api, name)
    raise AttributeError(f"module 'sweeps' has no attribute {name!r}")
