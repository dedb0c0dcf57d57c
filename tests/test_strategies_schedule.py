"""The ``schedule`` strategy: explicit phases as data, searchable boundaries, structural selectors, and freezes that
hold bit for bit under AdamW with weight decay (fresh optimizer state after every unfreeze)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import tiny_models as tm
import torch
from torch import nn

from strategies import (
    EMBEDDINGS,
    HEAD,
    FreezeController,
    LayerMap,
    LayerSpec,
    Plan,
    StrategyConfigError,
    build_strategy,
    discover_layers,
    layer_bounded_params,
    make_optimizer_factory,
    param_defaults,
    schedule_end_epoch,
    select_groups,
    uniform_plan,
)

BASE_LR = 1e-2
WEIGHT_DECAY = 0.1
MLP = discover_layers(tm.MLPStack(num_layers=5), LayerSpec(layers="blocks"))
BERT12 = discover_layers(tm.bert(num_layers=12))


def frozen(plan: Plan) -> set[str]:
    return {name for name, s in plan.items() if s.frozen}


def schedule(phases: list[dict[str, Any]], **boundaries: int) -> Any:
    return build_strategy("schedule", {"phases": phases, **boundaries})


# -- selectors ---------------------------------------------------------------------------------------------------------


def test_layer_1_is_block_1_only_not_10_or_11() -> None:
    assert select_groups(BERT12, "layer.1", "f") == ["layer.1"]
    assert select_groups(BERT12, "layer.0-3", "f") == ["layer.0", "layer.1", "layer.2", "layer.3"]
    assert select_groups(BERT12, "layer.10-11", "f") == ["layer.10", "layer.11"]
    assert select_groups(BERT12, "layer.*", "f") == [f"layer.{i}" for i in range(12)]
    assert select_groups(BERT12, "body", "f") == [n for n in BERT12.names if n != HEAD]
    assert select_groups(BERT12, "all", "f") == BERT12.names
    assert select_groups(BERT12, "bert.encoder.layer.10", "f") == ["layer.10"]  # a single-module group by its path
    assert select_groups(MLP, "blocks.1", "f") == ["layer.1"]


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("layer.12", "beyond the model's L=12 layers"),
        ("layer.3-12", "beyond the model's L=12 layers"),
        ("layer.3-1", "reversed; write layer.1-3"),
        ("classifier", "only part of group 'head'"),
        ("heads", "unknown group 'heads'. Did you mean 'head'?"),
        ("layer1", "unknown group 'layer1'"),
        ("", "non-empty string"),
    ],
)
def test_bad_selectors_name_the_field(selector: str, message: str) -> None:
    with pytest.raises(StrategyConfigError, match=message) as err:
        select_groups(BERT12, selector, "phases[1].frozen[0]")
    assert err.value.field == "phases[1].frozen[0]"


# -- plans ---------------------------------------------------------------------------------------------------------


def test_phases_give_the_plan_in_force() -> None:
    strategy = schedule(
        [
            {"epoch": 0, "frozen": ["layer.0-2", "embeddings"]},
            {"epoch": 2, "frozen": "embeddings", "lr_multipliers": {"layer.*": 0.1}},
            {"epoch": 5},
        ]
    )
    strategy.check(MLP)
    for epoch in (0, 1):
        assert frozen(strategy.plan(MLP, epoch, 0)) == {EMBEDDINGS, "layer.0", "layer.1", "layer.2"}
    for epoch in (2, 3, 4):
        plan = strategy.plan(MLP, epoch, 123)
        assert frozen(plan) == {EMBEDDINGS}
        assert {n: s.lr_multiplier for n, s in plan.items() if not s.frozen} == {
            **{f"layer.{i}": 0.1 for i in range(5)},
            HEAD: 1.0,
        }
    assert strategy.plan(MLP, 9, 0) == uniform_plan(MLP)
    assert strategy.schedule_end(MLP) == 5
    assert strategy.final_step(MLP) == 0 and not strategy.stepwise


def test_step_phases_are_stepwise() -> None:
    strategy = schedule([{"step": 0, "frozen": ["body"]}, {"step": 30}])
    assert strategy.stepwise
    assert frozen(strategy.plan(MLP, 5, 29)) == set(MLP.names) - {HEAD}
    assert frozen(strategy.plan(MLP, 0, 30)) == set()
    assert strategy.schedule_end(MLP) == 0 and strategy.final_step(MLP) == 30
    assert schedule_end_epoch(strategy, MLP, steps_per_epoch=8) == 4


def test_boundaries_are_searchable_scalar_fields() -> None:
    defaults = param_defaults("schedule")
    assert defaults["phases"] is dataclasses.MISSING
    assert {k: v for k, v in defaults.items() if k != "phases"} == {f"boundary_{i}": None for i in range(4)}
    assert layer_bounded_params("schedule") == ()  # boundaries count epochs, not layers
    phases = [{"epoch": 0, "frozen": ["layer.1"]}, {"epoch": "boundary_0"}]
    for k in (1, 2, 3):  # what Optuna would sample for boundary_0: {type: int, low: 1, high: 3}
        strategy = schedule(phases, boundary_0=k)
        strategy.check(MLP)
        assert [frozen(strategy.plan(MLP, e, 0)) for e in range(4)] == [{"layer.1"}] * k + [set()] * (4 - k)
        assert strategy.schedule_end(MLP) == k
    assert schedule(phases, boundary_0=2).params()["boundary_0"] == 2


def test_composes_with_discriminative() -> None:
    strategy = build_strategy(
        "schedule+discriminative",
        {"phases": [{"epoch": 0, "frozen": ["body"]}, {"epoch": 1, "lr_multipliers": {"all": 0.5}}], "decay": 0.5},
    )
    strategy.check(MLP)
    plan = strategy.plan(MLP, 1, 0)
    assert frozen(plan) == set()
    assert plan[HEAD].lr_multiplier == 0.5
    assert plan["layer.4"].lr_multiplier == pytest.approx(0.5 * 0.5)
    assert strategy.schedule_end(MLP) == 1


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"phases": []}, "phases", "non-empty list"),
        ({"phases": "epoch 0"}, "phases", "non-empty list"),
        ({"phases": [["layer.0"]]}, "phases[0]", "must be a mapping"),
        ({"phases": [{"epoch": 1}]}, "phases[0].epoch", "must start at epoch 0"),
        ({"phases": [{"frozen": ["head"]}]}, "phases[0]", "exactly one of 'epoch' or 'step'"),
        ({"phases": [{"epoch": 0, "step": 0}]}, "phases[0]", "exactly one"),
        ({"phases": [{"epoch": 0}, {"step": 10}]}, "phases[1].step", "same unit"),
        ({"phases": [{"epoch": 0}, {"epoch": 3}, {"epoch": 2}]}, "phases[2].epoch", r"not after phases\[1\]"),
        ({"phases": [{"epoch": 0}, {"epoch": 0}]}, "phases[1].epoch", "must not overlap"),
        ({"phases": [{"epoch": 0}, {"epoch": -1}]}, "phases[1].epoch", "integer ≥ 0"),
        ({"phases": [{"epoch": 0}, {"epoch": 1.5}]}, "phases[1].epoch", "integer ≥ 0"),
        ({"phases": [{"epoch": 0}, {"epoch": True}]}, "phases[1].epoch", "integer ≥ 0"),
        ({"phases": [{"epoch": 0}, {"epoch": "k"}]}, "phases[1].epoch", "neither a number nor one of"),
        ({"phases": [{"epoch": 0}, {"epoch": "boundary_1"}]}, "phases[1].epoch", "boundary_1, which is not set"),
        ({"phases": [{"epoch": 0}, {"epoch": 2}], "boundary_0": 3}, "boundary_0", "no phase starts at it"),
        ({"phases": [{"epoch": 0}, {"epoch": "boundary_0"}], "boundary_0": -2}, "boundary_0", "integer ≥ 0"),
        (
            {"phases": [{"epoch": 0}, {"epoch": 4}, {"epoch": "boundary_0"}], "boundary_0": 4},
            "phases[2].epoch",
            r"epoch 4 \(from boundary_0\), not after",
        ),
        ({"phases": [{"epoch": 0, "frozne": ["head"]}]}, "phases[0].frozne", "Did you mean 'frozen'"),
        ({"phases": [{"epoch": 0, "frozen": {"head": 1}}]}, "phases[0].frozen", "list of group selectors"),
        ({"phases": [{"epoch": 0, "frozen": ["layer.5"]}]}, "phases[0].frozen[0]", "beyond the model's L=5"),
        ({"phases": [{"epoch": 0, "frozen": ["embeddings", "fc2"]}]}, "phases[0].frozen[1]", "unknown group 'fc2'"),
        ({"phases": [{"epoch": 0, "frozen": ["all"]}]}, "phases[0].frozen", "nothing would train"),
        ({"phases": [{"epoch": 0, "lr_multipliers": {"head": 0}}]}, "phases[0].lr_multipliers.head", "> 0"),
        ({"phases": [{"epoch": 0, "lr_multipliers": {"head": "x"}}]}, "phases[0].lr_multipliers.head", "> 0"),
        ({"phases": [{"epoch": 0, "lr_multipliers": [0.1]}]}, "phases[0].lr_multipliers", "must map"),
        (
            {"phases": [{"epoch": 0, "lr_multipliers": {"body": 0.1, "layer.2": 0.5}}]},
            "phases[0].lr_multipliers.layer.2",
            "also set by 'body'",
        ),
        ({"phases": [{"epoch": 0, "lr_multipliers": {"layer.0-9": 2}}]}, "phases[0].lr_multipliers.layer.0-9", "L=5"),
    ],
)
def test_invalid_schedules_name_the_field(params: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(StrategyConfigError, match=message) as err:
        build_strategy("schedule", params).check(MLP)
    assert err.value.field == field


def test_phases_are_required() -> None:
    with pytest.raises(StrategyConfigError) as err:
        build_strategy("schedule")
    assert err.value.field == "phases"


# -- bit-exact freezes through the FreezeController ----------------------------------------------------------------


def snapshot(params: list[tuple[str, nn.Parameter]]) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in params}


def unchanged(params: list[tuple[str, nn.Parameter]], before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(p, before[name]) for name, p in params)


def all_changed(params: list[tuple[str, nn.Parameter]], before: dict[str, torch.Tensor]) -> bool:
    return all(not torch.equal(p, before[name]) for name, p in params)


def adamw_controller(model: nn.Module, layer_map: LayerMap) -> FreezeController:
    return FreezeController(model, layer_map, make_optimizer_factory("adamw"), BASE_LR, weight_decay=WEIGHT_DECAY)


def mlp_step(model: nn.Module, ctl: FreezeController, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 4, generator=gen), torch.randint(0, 3, (8,), generator=gen)
    ctl.train_mode()
    assert ctl.optimizer is not None
    ctl.optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    ctl.optimizer.step()


def in_optimizer(ctl: FreezeController) -> set[int]:
    assert ctl.optimizer is not None
    return {id(p) for g in ctl.optimizer.param_groups for p in g["params"]}


STEPS = 3


def run_mlp(plan_at: Any, epochs: int, watch: str) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Train a fresh MLPStack for ``epochs`` with AdamW + weight decay under ``plan_at(epoch)``; record, per epoch,
    whether ``watch`` was frozen, stayed bit-identical, was in the optimizer and had optimizer state at epoch start."""
    model = tm.MLPStack(num_layers=5)
    layer_map = discover_layers(model, LayerSpec(layers="blocks"))
    ctl = adamw_controller(model, layer_map)
    watched = layer_map.group(watch).params
    log: list[dict[str, Any]] = []
    for epoch in range(epochs):
        ctl.apply(plan_at(layer_map, epoch))
        assert ctl.optimizer is not None
        start = snapshot(watched)
        entry = {
            "frozen": ctl.plan[watch].frozen,
            "in_optimizer": any(id(p) in in_optimizer(ctl) for _, p in watched),
            "has_state": any(p in ctl.optimizer.state for _, p in watched),
            "groups": {g["name"] for g in ctl.optimizer.param_groups},
        }
        for batch in range(STEPS):
            mlp_step(model, ctl, epoch * STEPS + batch)
            if entry["frozen"]:
                assert unchanged(watched, start), f"{watch} moved at epoch {epoch}, step {batch}"
        entry["moved"] = not unchanged(watched, start)
        entry["all_moved"] = all_changed(watched, start)
        log.append(entry)
    ctl.require_verified()
    return model, log


def test_schedule_trains_exactly_like_the_hand_written_plans() -> None:
    """``layer.2`` trains for an epoch, is frozen for three, then trains again (the test_optim scenario), written as a
    schedule: every parameter of the two runs is bit-identical at the end, under AdamW with weight decay."""
    strategy = schedule([{"epoch": 0}, {"epoch": 1, "frozen": ["layer.2"]}, {"epoch": "boundary_0"}], boundary_0=4)
    strategy.check(MLP)

    def by_hand(layer_map: LayerMap, epoch: int) -> Plan:
        return uniform_plan(layer_map, frozen={"layer.2"} if 1 <= epoch <= 3 else set())

    model_s, log_s = run_mlp(lambda lm, e: strategy.plan(lm, e, 0), 6, "layer.2")
    model_h, log_h = run_mlp(by_hand, 6, "layer.2")
    for (name, p), (_, q) in zip(model_s.named_parameters(), model_h.named_parameters()):
        assert torch.equal(p, q), name
    assert log_s == log_h
    assert [e["frozen"] for e in log_s] == [False, True, True, True, False, False]
    assert [e["moved"] for e in log_s] == [True, False, False, False, True, True]
    assert log_s[4]["all_moved"]  # unfrozen: every tensor of the group trains again


def test_frozen_phase_is_clean_and_unfreezing_gives_fresh_state() -> None:
    """During the frozen phase the group is out of the optimizer with no state; at the unfreeze it comes back as new
    parameter groups with no stale moments from before the freeze (then gains state at its first step)."""
    strategy = schedule([{"epoch": 0}, {"epoch": 1, "frozen": ["layer.2"]}, {"epoch": 3}])
    _, log = run_mlp(lambda lm, e: strategy.plan(lm, e, 0), 4, "layer.2")
    assert log[0]["in_optimizer"] and not log[0]["has_state"]  # fresh optimizer
    for epoch in (1, 2):
        assert not log[epoch]["in_optimizer"] and not log[epoch]["has_state"]
        assert not {"layer.2", "layer.2/no_decay"} & log[epoch]["groups"]
    assert log[3]["in_optimizer"] and not log[3]["has_state"]  # back, with fresh state
    assert {"layer.2", "layer.2/no_decay"} <= log[3]["groups"]
    assert log[3]["all_moved"]


def bert_step(model: nn.Module, ctl: FreezeController, seed: int) -> None:
    ctl.train_mode()
    assert ctl.optimizer is not None
    ctl.optimizer.zero_grad(set_to_none=True)
    model(**tm.token_batch(seed=seed)).loss.backward()
    ctl.optimizer.step()


def test_fastai_freeze_then_fine_tune_on_bert() -> None:
    """fastai's ``fine_tune(k)``: the head alone for k epochs, then every group at half the LR. The body is bit-
    identical through the head-only phase and joins with fresh state; the head keeps its moments across the phase
    change (it never froze) and only its LR changes."""
    model = tm.bert(num_layers=2)
    layer_map = discover_layers(model)
    strategy = schedule(
        [{"epoch": 0, "frozen": ["body"]}, {"epoch": "boundary_0", "lr_multipliers": {"all": 0.5}}], boundary_0=2
    )
    strategy.check(layer_map)
    ctl = adamw_controller(model, layer_map)
    body = [p for name in layer_map.names if name != HEAD for p in layer_map.group(name).params]
    head = layer_map.group(HEAD).params
    before = snapshot(body)
    for epoch in range(3):
        ctl.apply(strategy.plan(layer_map, epoch, 0))
        assert ctl.optimizer is not None
        rates = ctl.learning_rates()
        if epoch < 2:
            assert rates == {**{n: 0.0 for n in layer_map.names}, HEAD: pytest.approx(BASE_LR)}
            assert ctl.trainable_params() == layer_map.group(HEAD).num_params
        else:
            assert rates == {n: pytest.approx(BASE_LR * 0.5) for n in layer_map.names}
            assert not any(p in ctl.optimizer.state for _, p in body)  # fresh
            assert all(ctl.optimizer.state[p]["step"] == 4 for _, p in head)  # 2 epochs × 2 steps, kept
        for seed in range(2):
            bert_step(model, ctl, epoch * 2 + seed)
        if epoch < 2:
            assert unchanged(body, before), f"the body moved in head-only epoch {epoch}"
    moved = [name for name, p in body if not torch.equal(p, before[name])]
    assert moved, "the body must train after the unfreeze"
    assert strategy.schedule_end(layer_map) == 2
    ctl.require_verified()
