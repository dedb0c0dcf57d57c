"""The plug-in contract: layer-bounded hyperparameters, built-ins loaded like third-party strategies, schedule ends."""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import tiny_models as tm

import strategies.registry as registry
from strategies import (
    Composite,
    LayerMap,
    Plan,
    Strategy,
    available,
    build_strategy,
    check_contract,
    discover_layers,
    layer_bounded_params,
    register,
    resolve,
    schedule_end_epoch,
    uniform_plan,
)

BERT3 = discover_layers(tm.bert(num_layers=3))


def test_builtins_declare_layer_bounded_params() -> None:
    assert build_strategy("bottom_n").layer_bounded_params == ("n",)
    assert build_strategy("gradual").layer_bounded_params == ("start_frozen",)
    assert build_strategy("discriminative").layer_bounded_params == ()
    assert layer_bounded_params("none") == ()
    assert layer_bounded_params("bottom_n+discriminative") == ("n",)


def test_composite_aggregates_parts_layer_bounded_params() -> None:
    composed = build_strategy("gradual+discriminative+bottom_n", {"n": 1})
    assert isinstance(composed, Composite)
    assert composed.layer_bounded_params == ("start_frozen", "n")
    assert layer_bounded_params("gradual+discriminative+bottom_n") == ("start_frozen", "n")


def test_every_builtin_is_a_reference_that_keeps_the_contract() -> None:
    """Built-ins are a table of ``module:Class`` strings, loaded like entry points: each resolves, keeps the contract
    and is named as its table key (so ``available()`` and ``resolve`` agree)."""
    assert set(registry.BUILTINS) >= {"none", "embeddings", "bottom_n", "gradual", "discriminative"}
    for name, ref in registry.BUILTINS.items():
        assert isinstance(ref, str) and ":" in ref, name
        [cls] = resolve(name)
        assert cls.name == name
        assert f"{cls.__module__}:{cls.__qualname__}" == ref == available()[name]
        check_contract(cls)


NEW_BUILTIN = """
from dataclasses import dataclass
from typing import ClassVar

from strategies import Strategy, uniform_plan


@dataclass
class TopOnlyBuiltin(Strategy):
    keep: int = 1
    name: ClassVar[str] = "top_only_builtin"
    layer_bounded_params: ClassVar[tuple[str, ...]] = ("keep",)

    def plan(self, layer_map, epoch, step):
        blocks = {f"layer.{i}" for i in range(layer_map.num_layers - self.keep)}
        return uniform_plan(layer_map, frozen={"embeddings", *blocks})
"""


def test_a_new_builtin_is_one_file_plus_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fs_new_builtin.py").write_text(textwrap.dedent(NEW_BUILTIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fs_new_builtin", raising=False)
    monkeypatch.setitem(registry.BUILTINS, "top_only_builtin", "fs_new_builtin:TopOnlyBuiltin")  # the one line
    try:
        assert available()["top_only_builtin"] == "fs_new_builtin:TopOnlyBuiltin"
        assert "fs_new_builtin" not in sys.modules  # listing imports nothing
        strategy = build_strategy("top_only_builtin+discriminative", {"keep": 2})
        assert layer_bounded_params("top_only_builtin+discriminative") == ("keep",)
        frozen = {n for n, s in strategy.plan(BERT3, 0, 0).items() if s.frozen}
        assert frozen == {"embeddings", "layer.0"}
    finally:
        sys.modules.pop("fs_new_builtin", None)


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_registered", {})


def test_layer_bounded_params_must_name_hyperparameters(clean_registry: None) -> None:
    @dataclass
    class Typo(Strategy):
        depth: int = 1
        name: ClassVar[str] = "typo"
        layer_bounded_params: ClassVar[tuple[str, ...]] = ("dept",)

        def plan(self, layer_map: LayerMap, epoch: int, step: int) -> Plan:
            return uniform_plan(layer_map)

    with pytest.raises(TypeError, match=r"names \['dept'\]"):
        register(Typo)

    @dataclass
    class Bare(Typo):
        layer_bounded_params: ClassVar[tuple[str, ...]] = "depth"  # type: ignore[assignment]

    with pytest.raises(TypeError, match="tuple of names"):
        register(Bare)

    @dataclass
    class Fine(Typo):
        name: ClassVar[str] = "fine"
        layer_bounded_params: ClassVar[tuple[str, ...]] = ("depth",)

    register(Fine)
    assert layer_bounded_params("fine+bottom_n") == ("depth", "n")


def test_reference_breaking_the_contract_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = NEW_BUILTIN.replace('("keep",)', '("kep",)')
    (tmp_path / "fs_bad_contract.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(TypeError, match="kep"):
            resolve("fs_bad_contract:TopOnlyBuiltin")
    finally:
        sys.modules.pop("fs_bad_contract", None)


def test_schedule_end_epoch_counts_step_schedules() -> None:
    """A ``unit: step`` gradual schedule ends in the epoch holding its last unfreeze: pruning waits until then."""
    strategy = build_strategy("gradual", {"unit": "step", "unfreeze_every": 10})
    assert strategy.schedule_end(BERT3) == 0
    assert strategy.final_step(BERT3) == 40  # 4 unfreezes (3 blocks + embeddings), every 10 steps
    assert schedule_end_epoch(strategy, BERT3, steps_per_epoch=15) == 3  # step 40 lies in epoch 2: stable from 3
    assert schedule_end_epoch(strategy, BERT3, steps_per_epoch=20) == 2  # step 40 starts epoch 2
    assert schedule_end_epoch(strategy, BERT3) == 0  # without steps per epoch only epoch schedules count
    composed = build_strategy("gradual+discriminative", {"unit": "step", "unfreeze_every": 10})
    assert composed.final_step(BERT3) == 40
    assert schedule_end_epoch(composed, BERT3, steps_per_epoch=100) == 1
    epochs = build_strategy("gradual", {"unfreeze_every": 2})
    assert epochs.final_step(BERT3) == 0
    assert schedule_end_epoch(epochs, BERT3, steps_per_epoch=100) == epochs.schedule_end(BERT3) == 8
