"""Strategies (plans as a function of the layer map, epoch and step) and the registry that finds them by name."""

from __future__ import annotations

import dataclasses
import itertools
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import ClassVar

import pytest
import tiny_models as tm
from hypothesis import given, settings
from hypothesis import strategies as st

import strategies.registry as registry
from strategies import (
    EMBEDDINGS,
    HEAD,
    OTHER,
    Composite,
    LayerMap,
    Plan,
    Strategy,
    StrategyConfigError,
    UnknownStrategyError,
    available,
    build_strategy,
    discover_layers,
    frozen_prefix_depth,
    param_defaults,
    register,
    resolve,
    uniform_plan,
)

# Plans only read the layer map, so the maps are built once (tiny models, but hypothesis calls plans many times).
BERT3 = discover_layers(tm.bert(num_layers=3))  # embeddings, layer.0..2, head
DEBERTA = discover_layers(tm.deberta_v2())  # has an `other` group (relative position embeddings)


def frozen(plan: Plan) -> set[str]:
    return {name for name, s in plan.items() if s.frozen}


def mults(plan: Plan) -> dict[str, float]:
    return {name: s.lr_multiplier for name, s in plan.items()}


def plan_of(name: str, params: dict | None = None, layer_map: LayerMap = BERT3, epoch: int = 0, step: int = 0) -> Plan:
    strategy = build_strategy(name, params)
    strategy.check(layer_map)
    plan = strategy.plan(layer_map, epoch, step)
    assert list(plan) == layer_map.names  # every group exactly once
    return plan


# -- built-in strategies -----------------------------------------------------------------------------------------------


def test_none_trains_everything_at_base_lr() -> None:
    plan = plan_of("none")
    assert frozen(plan) == set()
    assert set(mults(plan).values()) == {1.0}
    assert frozen_prefix_depth(plan, BERT3) is None


@pytest.mark.parametrize("layer_map", [BERT3, DEBERTA], ids=["bert", "deberta"])
def test_embeddings_freezes_the_embedding_side(layer_map: LayerMap) -> None:
    plan = plan_of("embeddings", layer_map=layer_map)
    expected = {EMBEDDINGS, OTHER} & set(layer_map.names)
    assert frozen(plan) == expected
    assert frozen_prefix_depth(plan, layer_map) == 0


@pytest.mark.parametrize("n", range(4))
def test_bottom_n(n: int) -> None:
    plan = plan_of("bottom_n", {"n": n})
    assert frozen(plan) == {EMBEDDINGS, *(f"layer.{i}" for i in range(n))}
    assert not plan[HEAD].frozen  # n = L is a linear probe: the head still trains
    assert frozen_prefix_depth(plan, BERT3) == n


def test_bottom_n_freezes_other_with_embeddings() -> None:
    plan = plan_of("bottom_n", {"n": 1}, layer_map=DEBERTA)
    assert frozen(plan) == {EMBEDDINGS, OTHER, "layer.0"}


@pytest.mark.parametrize("n", [-1, 4, 12, 1.5, "2", True])
def test_bottom_n_out_of_range_names_n_and_layer_count(n: object) -> None:
    with pytest.raises(StrategyConfigError) as err:
        build_strategy("bottom_n", {"n": n}).check(BERT3)
    assert err.value.field == "n"
    assert str(err.value).startswith("n: ")
    if isinstance(n, int) and not isinstance(n, bool):
        assert "L=3" in str(err.value) and "0..3" in str(err.value)


def test_discriminative_multipliers() -> None:
    decay, ratio = 0.5, 4.0
    plan = plan_of("discriminative", {"decay": decay, "head_lr_ratio": ratio})
    assert frozen(plan) == set()
    m = mults(plan)
    assert m[HEAD] == 1.0
    for i in range(3):
        assert m[f"layer.{i}"] == pytest.approx(decay ** (3 - i) / ratio)
    assert m[EMBEDDINGS] == pytest.approx(decay**4 / ratio)
    assert m[EMBEDDINGS] < m["layer.0"] < m["layer.1"] < m["layer.2"] < m[HEAD]  # embeddings lowest


def test_discriminative_two_group_body_and_head() -> None:
    m = mults(plan_of("discriminative", {"decay": 1, "head_lr_ratio": 50}, layer_map=DEBERTA))
    assert m.pop(HEAD) == 1.0
    assert set(m) == {EMBEDDINGS, "layer.0", "layer.1", OTHER}
    assert all(v == pytest.approx(1 / 50) for v in m.values())


@pytest.mark.parametrize(
    ("params", "field_name"),
    [
        ({"decay": 0}, "decay"),
        ({"decay": 1.5}, "decay"),
        ({"decay": "fast"}, "decay"),
        ({"decay": None}, "decay"),
        ({"head_lr_ratio": 0}, "head_lr_ratio"),
        ({"head_lr_ratio": "x"}, "head_lr_ratio"),
    ],
)
def test_discriminative_bad_values(params: dict, field_name: str) -> None:
    with pytest.raises(StrategyConfigError) as err:
        build_strategy("discriminative", params).check(BERT3)
    assert err.value.field == field_name


def gradual_frozen(params: dict, clock: int, layer_map: LayerMap = BERT3) -> set[str]:
    unit = params.get("unit", "epoch")
    return frozen(plan_of("gradual", params, layer_map, **({"epoch": clock} if unit == "epoch" else {"step": clock})))


def test_gradual_default_unfreezes_top_down() -> None:
    layers = [f"layer.{i}" for i in range(3)]
    expected = [
        {EMBEDDINGS, *layers},  # epoch 0: only the head trains
        {EMBEDDINGS, "layer.0", "layer.1"},
        {EMBEDDINGS, "layer.0"},
        {EMBEDDINGS},
        set(),
        set(),
    ]
    assert [gradual_frozen({}, epoch) for epoch in range(6)] == expected
    assert build_strategy("gradual").schedule_end(BERT3) == 4
    assert not build_strategy("gradual").stepwise


def test_gradual_options() -> None:
    params = {"unfreeze_every": 2, "groups_per_step": 2, "start_frozen": 2}
    assert [gradual_frozen(params, e) for e in range(5)] == [
        {EMBEDDINGS, "layer.0", "layer.1"},
        {EMBEDDINGS, "layer.0", "layer.1"},
        {EMBEDDINGS},
        {EMBEDDINGS},
        set(),
    ]
    assert build_strategy("gradual", params).schedule_end(BERT3) == 4
    keep = {"unfreeze_embeddings": False}
    assert gradual_frozen(keep, 10) == {EMBEDDINGS}
    assert build_strategy("gradual", keep).schedule_end(BERT3) == 3  # the embeddings never unfreeze
    assert gradual_frozen({"unfreeze_embeddings": False}, 10, DEBERTA) == {EMBEDDINGS, OTHER}


def test_gradual_step_unit() -> None:
    params = {"unit": "step", "unfreeze_every": 10}
    strategy = build_strategy("gradual", params)
    assert strategy.stepwise
    plans = {step: gradual_frozen(params, step) for step in (0, 9, 10, 19, 20, 40)}
    assert plans[0] == plans[9] == {EMBEDDINGS, "layer.0", "layer.1", "layer.2"}
    assert plans[10] == plans[19] == {EMBEDDINGS, "layer.0", "layer.1"}
    assert plans[20] == {EMBEDDINGS, "layer.0"}
    assert plans[40] == set()
    assert strategy.plan(BERT3, epoch=7, step=0) == strategy.plan(BERT3, epoch=0, step=0)  # the epoch is not the clock
    assert strategy.final_clock(BERT3) == 40


@pytest.mark.parametrize(
    ("params", "field_name"),
    [
        ({"unfreeze_every": 0}, "unfreeze_every"),
        ({"groups_per_step": 1.5}, "groups_per_step"),
        ({"start_frozen": 4}, "start_frozen"),
        ({"unit": "batch"}, "unit"),
    ],
)
def test_gradual_bad_values(params: dict, field_name: str) -> None:
    with pytest.raises(StrategyConfigError) as err:
        build_strategy("gradual", params).check(BERT3)
    assert err.value.field == field_name


@settings(max_examples=60, deadline=None)
@given(
    every=st.integers(1, 3),
    per_step=st.integers(1, 3),
    start=st.none() | st.integers(0, 2),  # both maps have at least 2 layers
    unfreeze_embeddings=st.booleans(),
    deberta=st.booleans(),
)
def test_gradual_properties(every: int, per_step: int, start: int | None, unfreeze_embeddings: bool, deberta: bool):
    """Frozen sets only shrink, always a bottom prefix (top-down unfreezing), and schedule_end is the first epoch
    from which the plan no longer changes."""
    layer_map = DEBERTA if deberta else BERT3
    strategy = build_strategy(
        "gradual",
        {
            "unfreeze_every": every,
            "groups_per_step": per_step,
            "start_frozen": start,
            "unfreeze_embeddings": unfreeze_embeddings,
        },
    )
    strategy.check(layer_map)
    plans = [strategy.plan(layer_map, epoch, 0) for epoch in range(40)]
    for earlier, later in itertools.pairwise(plans):
        assert frozen(later) <= frozen(earlier)
    for plan in plans:
        depth = frozen_prefix_depth(plan, layer_map)
        layers_frozen = {name for name in frozen(plan) if name.startswith("layer.")}
        # the embedding side unfreezes last (depth None), and the frozen blocks are always the lowest ones
        assert layers_frozen == {f"layer.{i}" for i in range(depth or 0)}
    end = strategy.schedule_end(layer_map)
    assert all(plan == plans[end] for plan in plans[end:])
    assert end == 0 or plans[end - 1] != plans[end]


def test_composite_bottom_n_plus_discriminative() -> None:
    strategy = build_strategy("bottom_n+discriminative", {"n": 1, "decay": 0.5, "head_lr_ratio": 2})
    assert isinstance(strategy, Composite)
    assert strategy.params() == {"n": 1, "decay": 0.5, "head_lr_ratio": 2}
    plan = plan_of("bottom_n+discriminative", {"n": 1, "decay": 0.5, "head_lr_ratio": 2})
    assert frozen(plan) == {EMBEDDINGS, "layer.0"}  # frozen if any part freezes
    parts = [p.plan(BERT3, 0, 0) for p in strategy.parts]
    for name in BERT3.names:  # multiplier = product of the parts'
        assert plan[name].lr_multiplier == pytest.approx(parts[0][name].lr_multiplier * parts[1][name].lr_multiplier)
    assert plan["layer.2"].lr_multiplier == pytest.approx(0.5 / 2)
    assert frozen_prefix_depth(plan, BERT3) == 1


def test_composite_stepwise_and_schedule_end() -> None:
    strategy = build_strategy("bottom_n+gradual", {"n": 1, "unit": "step"})
    assert strategy.stepwise
    assert not build_strategy("bottom_n+discriminative").stepwise
    assert build_strategy("discriminative+gradual").schedule_end(BERT3) == 4
    with pytest.raises(StrategyConfigError) as err:
        build_strategy("bottom_n+gradual", {"n": 9}).check(BERT3)
    assert err.value.field == "n"


def test_frozen_prefix_depth_needs_the_whole_embedding_side() -> None:
    plan = uniform_plan(DEBERTA, frozen={EMBEDDINGS, "layer.0"})  # `other` trains: nothing below is constant
    assert frozen_prefix_depth(plan, DEBERTA) is None
    plan = uniform_plan(DEBERTA, frozen={EMBEDDINGS, OTHER, "layer.1"})  # layer.1 frozen, layer.0 trains
    assert frozen_prefix_depth(plan, DEBERTA) == 0


# -- the registry ------------------------------------------------------------------------------------------------------


def test_builtins_available() -> None:
    names = available()
    assert {"none", "embeddings", "bottom_n", "gradual", "discriminative"} <= set(names)
    assert names["bottom_n"] == "strategies.bottom_n:BottomN"
    assert param_defaults("bottom_n+discriminative") == {"n": 1, "decay": 0.9, "head_lr_ratio": 1.0}


USER_MODULE = """
from dataclasses import dataclass
from typing import ClassVar

from strategies import Strategy, uniform_plan


@dataclass
class TopOnly(Strategy):
    keep: int = 1
    name: ClassVar[str] = "top_only"

    def plan(self, layer_map, epoch, step):
        blocks = [f"layer.{i}" for i in range(layer_map.num_layers - self.keep)]
        return uniform_plan(layer_map, frozen={"embeddings", *blocks})


@dataclass
class Needs(Strategy):
    level: int
    name: ClassVar[str] = "needs"

    def plan(self, layer_map, epoch, step):
        return uniform_plan(layer_map)


class NotAStrategy:
    pass
"""


@pytest.fixture
def user_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``fs_user_pkg.custom`` written into tmp_path and put on sys.path; removed from sys.modules afterwards."""
    package = tmp_path / "fs_user_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "custom.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("fs_user_pkg", "fs_user_pkg.custom"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield "fs_user_pkg.custom"
    for name in ("fs_user_pkg", "fs_user_pkg.custom"):
        sys.modules.pop(name, None)


def test_user_strategy_by_reference_is_imported_only_when_named(user_package: str) -> None:
    build_strategy("bottom_n", {"n": 1})
    available()
    with pytest.raises(UnknownStrategyError):
        build_strategy("top_onyl")
    assert user_package not in sys.modules
    strategy = build_strategy(f"{user_package}:TopOnly", {"keep": 2})
    assert user_package in sys.modules
    assert type(strategy).__name__ == "TopOnly"
    assert frozen(strategy.plan(BERT3, 0, 0)) == {EMBEDDINGS, "layer.0"}
    composed = build_strategy(f"discriminative+{user_package}:TopOnly", {"keep": 1, "decay": 0.5})
    assert isinstance(composed, Composite)
    assert frozen(composed.plan(BERT3, 0, 0)) == {EMBEDDINGS, "layer.0", "layer.1"}


def test_user_strategy_reference_errors(user_package: str) -> None:
    with pytest.raises(StrategyConfigError) as err:
        build_strategy(f"{user_package}:Needs")
    assert err.value.field == "level"
    assert build_strategy(f"{user_package}:Needs", {"level": 3}).params() == {"level": 3}
    for ref, message in (
        ("fs_no_such_pkg.mod:X", "cannot import module 'fs_no_such_pkg.mod'"),
        (f"{user_package}:Missing", "has no attribute 'Missing'"),
        (f"{user_package}:NotAStrategy", "is not a subclass of strategies.Strategy"),
    ):
        with pytest.raises(UnknownStrategyError, match=message):
            resolve(ref)


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_registered", {})


def test_register_decorator(clean_registry: None) -> None:
    @register
    @dataclass
    class Probe(Strategy):
        depth: int = 2
        tags: list[str] = field(default_factory=list)
        name: ClassVar[str] = "probe"

        def plan(self, layer_map: LayerMap, epoch: int, step: int) -> Plan:
            return uniform_plan(layer_map)

    assert available()["probe"].endswith("Probe")
    assert resolve("probe") == [Probe]
    assert param_defaults("probe") == {"depth": 2, "tags": []}  # default_factory is a default, not "required"
    assert build_strategy("probe+bottom_n", {"depth": 3, "n": 0}).params() == {"depth": 3, "tags": [], "n": 0}
    with pytest.raises(TypeError, match="not a Strategy subclass"):
        register(int)  # type: ignore[arg-type]

    class Composed(Probe):
        name: ClassVar[str] = "a+b"

    with pytest.raises(TypeError, match="without"):
        register(Composed)


def write_dist(site: Path, module_body: str, entry: str) -> None:
    """A minimal installed distribution (dist-info with an entry point) plus its module, in ``site``."""
    dist = site / "fs_plugin_dist-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fs-plugin-dist\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[freeze_sweeps.strategies]\n{entry}\n")
    (site / "fs_plugin_mod.py").write_text(textwrap.dedent(module_body))


def test_entry_point_strategy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = """
        from dataclasses import dataclass
        from typing import ClassVar
        from strategies import Strategy, uniform_plan

        @dataclass
        class Plug(Strategy):
            name: ClassVar[str] = "plug"

            def plan(self, layer_map, epoch, step):
                return uniform_plan(layer_map)
    """
    write_dist(tmp_path, body, "plug = fs_plugin_mod:Plug")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fs_plugin_mod", raising=False)
    try:
        assert available()["plug"] == "entry point fs_plugin_mod:Plug"
        assert "fs_plugin_mod" not in sys.modules  # listing does not import
        with pytest.raises(UnknownStrategyError, match="Did you mean 'plug'"):
            resolve("plugg")
        [cls] = resolve("plug")
        assert cls.__name__ == "Plug" and "fs_plugin_mod" in sys.modules
        assert isinstance(build_strategy("plug+bottom_n", {"n": 1}), Composite)
    finally:
        sys.modules.pop("fs_plugin_mod", None)


def test_entry_point_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    eps = [
        EntryPoint("broken", "fs_missing_module_xyz:Thing", registry.ENTRY_POINT_GROUP),
        EntryPoint("not_a_strategy", "dataclasses:dataclass", registry.ENTRY_POINT_GROUP),
    ]

    def fake_entry_points(group: str) -> list[EntryPoint]:
        assert group == registry.ENTRY_POINT_GROUP
        return eps

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    assert available()["broken"] == "entry point fs_missing_module_xyz:Thing"
    with pytest.raises(UnknownStrategyError, match="cannot be loaded"):
        resolve("broken")
    with pytest.raises(UnknownStrategyError, match="does not load a Strategy subclass"):
        resolve("not_a_strategy")


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("bottom-n", "bottom_n"),
        ("Bottom_N", "bottom_n"),
        ("discrimnative", "discriminative"),
        ("bottom_n+gradul", "gradual"),
        ("embedding", "embeddings"),
    ],
)
def test_unknown_strategy_did_you_mean(name: str, suggestion: str) -> None:
    with pytest.raises(UnknownStrategyError) as err:
        build_strategy(name)
    assert f"Did you mean {suggestion!r}?" in str(err.value)
    assert "package.module:ClassName" in str(err.value)


def test_unknown_strategy_without_close_match_lists_known() -> None:
    with pytest.raises(UnknownStrategyError) as err:
        resolve("zzz")
    assert "Did you mean" not in str(err.value) and "bottom_n" in str(err.value)
    with pytest.raises(UnknownStrategyError, match="empty part"):
        resolve("bottom_n+")


@pytest.mark.parametrize(
    ("name", "params", "key", "suggestion"),
    [
        ("bottom_n", {"nn": 2}, "nn", "n"),
        ("discriminative", {"decya": 0.5}, "decya", "decay"),
        ("bottom_n+discriminative", {"n": 1, "head_lr_ration": 2}, "head_lr_ration", "head_lr_ratio"),
        ("gradual", {"unfreeze_evry": 2}, "unfreeze_evry", "unfreeze_every"),
    ],
)
def test_unknown_param_did_you_mean(name: str, params: dict, key: str, suggestion: str) -> None:
    with pytest.raises(StrategyConfigError) as err:
        build_strategy(name, params)
    assert err.value.field == key
    assert f"Did you mean {suggestion!r}?" in str(err.value)


def test_composed_parts_with_the_same_parameter_are_rejected() -> None:
    with pytest.raises(UnknownStrategyError, match="both declare parameter 'n'"):
        param_defaults("bottom_n+bottom_n")


def test_strategy_params_are_plain_dicts() -> None:
    strategy = build_strategy("gradual", {"unit": "step"})
    assert strategy.params() == {field.name: getattr(strategy, field.name) for field in dataclasses.fields(strategy)}
