"""Each trial is pruned against its own strategy's trials only."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from sweeps.study.pruning import PerStrategyPruner


def _finished(study: optuna.Study, strategy: str, curve: list[float]) -> None:
    trial = study.ask({"strategy": optuna.distributions.CategoricalDistribution(["none", "bottom_n"])})
    trial.set_user_attr("strategy", strategy)
    for step, value in enumerate(curve):
        trial.report(value, step)
        trial.should_prune()  # successive halving records its rungs here
    study.tell(trial, curve[-1])


def _running(study: optuna.Study, strategy: str, value: float, step: int = 0) -> optuna.Trial:
    trial = study.ask()
    trial.set_user_attr("strategy", strategy)
    trial.report(value, step)
    return trial


@pytest.mark.parametrize(
    "inner",
    [lambda: optuna.pruners.MedianPruner(n_startup_trials=2), lambda: optuna.pruners.PercentilePruner(50.0, 2)],
)
def test_frozen_body_trial_is_judged_against_its_own_strategy(inner):
    plain = optuna.create_study(direction="maximize", pruner=inner())
    fair = optuna.create_study(direction="maximize", pruner=PerStrategyPruner(inner()))
    for study in (plain, fair):
        for curve in ([0.80, 0.85], [0.82, 0.86]):
            _finished(study, "none", curve)
        for curve in ([0.55, 0.84], [0.60, 0.85]):
            _finished(study, "bottom_n", curve)
    # a head-only trial at 0.62 after epoch 1: below full fine-tuning's median, above its own kind's
    assert _running(plain, "bottom_n", 0.62).should_prune()
    assert not _running(fair, "bottom_n", 0.62).should_prune()
    # and it is still pruned when it is worse than its own kind
    assert _running(fair, "bottom_n", 0.50).should_prune()


def test_a_strategy_without_finished_trials_is_not_pruned():
    study = optuna.create_study(direction="maximize", pruner=PerStrategyPruner(optuna.pruners.MedianPruner(0)))
    _finished(study, "none", [0.9, 0.95])
    trial = _running(study, "gradual", 0.1)
    assert not trial.should_prune()
    study.tell(trial, state=TrialState.PRUNED)


def test_successive_halving_works_through_the_view():
    study = optuna.create_study(
        direction="maximize", pruner=PerStrategyPruner(optuna.pruners.SuccessiveHalvingPruner(min_resource=1))
    )
    for value in (0.9, 0.8, 0.7):
        _finished(study, "none", [value, value])
    assert _running(study, "none", 0.1, step=1).should_prune()
    assert not _running(study, "embeddings", 0.1, step=1).should_prune()


def test_a_confirmation_trial_is_never_pruned(tmp_path):
    """Its seeds' mean ± std is the noise estimate: pruning the unlucky seeds would report only the lucky ones."""
    from types import SimpleNamespace

    from e2e_helpers import write_study

    from sweeps.config import load_spec
    from sweeps.records import TrialAttr
    from sweeps.study.observer import PruningObserver
    from sweeps.train import EpochResult

    spec = load_spec(write_study(tmp_path / "s.yaml", tmp_path / "model", tmp_path / "data"))
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(0, 0))
    for value in (0.9, 0.95):
        _finished(study, "none", [value])
    tracker = SimpleNamespace(log_metrics=lambda *a, **k: None)
    epoch = EpochResult(0, {"accuracy": 0.5, "train_loss": 1.0, "epoch_time_s": 1.0, "peak_memory_mb": 1.0}, {})

    search = _running(study, "none", 0.5)
    assert PruningObserver(search, spec, tracker, None, lambda _: None).on_epoch(epoch) is not None
    study.enqueue_trial({}, user_attrs={TrialAttr.CONFIRM_OF: 0, TrialAttr.CONFIRM_SEED: 43})
    confirmation = study.ask()
    confirmation.set_user_attr("strategy", "none")
    assert PruningObserver(confirmation, spec, tracker, None, lambda _: None).on_epoch(epoch) is None


def test_the_last_epoch_is_reported_but_never_pruned(tmp_path):
    """Stopping after the last epoch saves nothing: the finished trial must stay COMPLETE (in the 12-trial SST-2 cost
    benchmark gradual trials, judged only on their last epoch, were recorded as pruned after training to the end)."""
    from types import SimpleNamespace

    from e2e_helpers import write_study

    from sweeps.config import load_spec
    from sweeps.study.observer import PruningObserver
    from sweeps.train import EpochResult

    spec = load_spec(write_study(tmp_path / "s.yaml", tmp_path / "model", tmp_path / "data"))
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(0, 0))
    for value in (0.9, 0.95):
        _finished(study, "none", [value, value])
    tracker = SimpleNamespace(log_metrics=lambda *a, **k: None)
    metrics = {"accuracy": 0.5, "train_loss": 1.0, "epoch_time_s": 1.0, "peak_memory_mb": 1.0}

    def observer() -> PruningObserver:
        trial = study.ask()
        trial.set_user_attr("strategy", "none")
        return PruningObserver(trial, spec, tracker, None, lambda _: None)

    assert observer().on_epoch(EpochResult(1, metrics, {})) is not None  # worse than both at epoch 2 of more
    last = observer()
    assert last.on_epoch(EpochResult(1, metrics, {}, last=True)) is None
    assert study.trials[last.trial.number].intermediate_values == {1: 0.5}  # reported: the learning curve is whole
