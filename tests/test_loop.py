"""The training loop's schedule bookkeeping: when a strategy's plan is final, so that the study may prune fairly.

``schedule_end`` answers in epochs; step-wise schedules (``gradual`` with ``unit: step``) answer through
``final_clock`` in optimizer steps, which only the trial can convert (it knows its steps per epoch).
"""

from __future__ import annotations

import pytest
import tiny_models as tm

from strategies import build_strategy, discover_layers
from sweeps.train.loop import schedule_end_epoch

BERT3 = discover_layers(tm.bert(num_layers=3))  # embeddings, layer.0..2, head


@pytest.mark.parametrize("name", ["none", "bottom_n", "discriminative", "embeddings"])
def test_static_strategies_are_final_from_the_start(name: str) -> None:
    assert schedule_end_epoch(build_strategy(name, {}), BERT3, steps_per_epoch=7) == 0


def test_epoch_schedule_is_schedule_end() -> None:
    strategy = build_strategy("gradual", {"unfreeze_every": 2})
    assert schedule_end_epoch(strategy, BERT3, steps_per_epoch=7) == strategy.schedule_end(BERT3) == 8


@pytest.mark.parametrize(("steps_per_epoch", "expected"), [(10, 4), (7, 6), (40, 1), (100, 1), (1, 40)])
def test_step_schedule_ends_in_the_epoch_that_starts_with_the_last_plan(steps_per_epoch: int, expected: int) -> None:
    """The last unfreeze happens at optimizer step 40 (4 stages × 10 steps); the first epoch that starts with the final
    plan is ceil(40 / steps_per_epoch). ``schedule_end`` alone says 0 for step schedules."""
    strategy = build_strategy("gradual", {"unit": "step", "unfreeze_every": 10})
    assert strategy.schedule_end(BERT3) == 0
    assert schedule_end_epoch(strategy, BERT3, steps_per_epoch) == expected


def test_composite_takes_its_latest_part() -> None:
    strategy = build_strategy("gradual+discriminative", {"unit": "step", "unfreeze_every": 10, "decay": 0.9})
    assert schedule_end_epoch(strategy, BERT3, steps_per_epoch=10) == 4
