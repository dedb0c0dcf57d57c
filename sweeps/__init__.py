"""freeze-sweeps: Optuna studies over freezing strategies, logged to MLflow. Entry point: ``python -m sweeps``."""

__version__ = "0.1.0"
