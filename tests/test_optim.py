"""FreezeController: a frozen parameter stays bit-identical, whatever the optimizer and whatever happened before.

These tests compare tensors with ``torch.equal`` (exact), never with a tolerance: "frozen" means not one bit moved.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import tiny_models as tm
import torch
import transformers
from torch import nn

from strategies import (
    EMBEDDINGS,
    HEAD,
    FreezeController,
    FrozenParameterChanged,
    LayerMap,
    LayerSpec,
    Plan,
    build_strategy,
    describe,
    discover_layers,
    first_trainable_block,
    format_table,
    make_optimizer_factory,
    uniform_plan,
)

BASE_LR = 1e-2
WEIGHT_DECAY = 0.1

# name -> (optimizer, factory kwargs, weight decay given to the controller)
OPTIMIZERS = {
    "sgd": ("sgd", {}, 0.0),
    "sgd_momentum_wd": ("sgd", {"momentum": 0.9}, WEIGHT_DECAY),
    "adam": ("adam", {}, 0.0),
    "adamw_wd": ("adamw", {}, WEIGHT_DECAY),
    "adafactor": ("adafactor", {}, WEIGHT_DECAY),
}


def snapshot(params: list[tuple[str, nn.Parameter]]) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in params}


def unchanged(params: list[tuple[str, nn.Parameter]], before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(p, before[name]) for name, p in params)


def all_changed(params: list[tuple[str, nn.Parameter]], before: dict[str, torch.Tensor]) -> bool:
    """Every parameter tensor moved (the ones a test expects to train really did)."""
    return all(not torch.equal(p, before[name]) for name, p in params)


def mlp_setup(optimizer: str = "adamw_wd", num_layers: int = 5) -> tuple[nn.Module, LayerMap, FreezeController]:
    model = tm.MLPStack(num_layers=num_layers)
    layer_map = discover_layers(model, LayerSpec(layers="blocks"))
    name, kwargs, wd = OPTIMIZERS[optimizer]
    ctl = FreezeController(model, layer_map, make_optimizer_factory(name, **kwargs), BASE_LR, weight_decay=wd)
    return model, layer_map, ctl


def mlp_step(model: nn.Module, ctl: FreezeController, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 4, generator=gen), torch.randint(0, 3, (8,), generator=gen)
    ctl.train_mode()
    assert ctl.optimizer is not None
    ctl.optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    ctl.optimizer.step()


def params_in_optimizer(ctl: FreezeController) -> set[int]:
    assert ctl.optimizer is not None
    return {id(p) for g in ctl.optimizer.param_groups for p in g["params"]}


def assert_frozen_clean(ctl: FreezeController, params: list[tuple[str, nn.Parameter]]) -> None:
    """Frozen: no grad, no optimizer state, in no parameter group."""
    assert ctl.optimizer is not None
    in_groups = params_in_optimizer(ctl)
    for name, p in params:
        assert not p.requires_grad, name
        assert p.grad is None, name
        assert p not in ctl.optimizer.state, name
        assert id(p) not in in_groups, name


def bert_step(model: nn.Module, ctl: FreezeController, seed: int = 0) -> None:
    ctl.train_mode()
    assert ctl.optimizer is not None
    ctl.optimizer.zero_grad(set_to_none=True)
    model(**tm.token_batch(seed=seed)).loss.backward()
    ctl.optimizer.step()


# -- bit-identical freezes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_frozen_from_start_is_bit_identical(optimizer: str) -> None:
    model, layer_map, ctl = mlp_setup(optimizer)
    ctl.apply(build_strategy("bottom_n", {"n": 2}).plan(layer_map, 0, 0))
    frozen = [p for g in (EMBEDDINGS, "layer.0", "layer.1") for p in layer_map.group(g).params]
    trained = [p for g in ("layer.2", "layer.3", "layer.4", HEAD) for p in layer_map.group(g).params]
    before, before_trained = snapshot(frozen), snapshot(trained)
    for step in range(4):
        mlp_step(model, ctl, step)
    assert unchanged(frozen, before)
    assert all_changed(trained, before_trained)
    assert_frozen_clean(ctl, frozen)
    assert ctl.finish()


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_trained_then_frozen_then_unfrozen_then_refrozen(optimizer: str) -> None:
    """The hard case: momentum and decoupled weight decay collected while training must not move a frozen layer."""
    model, layer_map, ctl = mlp_setup(optimizer)
    group = layer_map.group("layer.2").params
    ctl.apply(build_strategy("none").plan(layer_map, 0, 0))
    for step in range(3):  # optimizer state (momentum, second moments) now exists for layer.2
        mlp_step(model, ctl, step)
    assert all(p in ctl.optimizer.state for _, p in group) or optimizer == "sgd"

    ctl.apply(uniform_plan(layer_map, frozen={"layer.2"}))
    assert_frozen_clean(ctl, group)
    before = snapshot(group)
    for step in range(3, 7):
        mlp_step(model, ctl, step)
    assert unchanged(group, before)

    ctl.apply(build_strategy("none").plan(layer_map, 0, 0))  # unfreeze: fresh groups, no stale state
    assert not any(p in ctl.optimizer.state for _, p in group)
    mlp_step(model, ctl, 7)
    assert all_changed(group, before)

    ctl.apply(uniform_plan(layer_map, frozen={"layer.2"}))  # re-freeze
    again = snapshot(group)
    for step in range(8, 11):
        mlp_step(model, ctl, step)
    assert unchanged(group, again)
    assert_frozen_clean(ctl, group)
    assert ctl.finish()
    assert ctl.verifier is not None and ctl.verifier.checked >= 2
    ctl.require_verified()


def test_naive_freeze_moves_under_adam_momentum() -> None:
    """Control for the tests above: ``requires_grad_(False)`` with the parameter still in Adam (and zeroed, not
    None, grads) moves it. The bit-identical checks detect exactly this."""
    model = tm.MLPStack()
    optimizer = torch.optim.AdamW(model.parameters(), lr=BASE_LR, weight_decay=WEIGHT_DECAY)
    ctl_like = [("w", model.blocks[2].weight)]
    for step in range(3):
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(step))
        optimizer.zero_grad(set_to_none=False)
        model(x).sum().backward()
        optimizer.step()
    model.blocks[2].requires_grad_(False)
    before = snapshot(ctl_like)
    optimizer.zero_grad(set_to_none=False)
    model(torch.randn(8, 4)).sum().backward()
    optimizer.step()
    assert not unchanged(ctl_like, before)


# -- mid-training unfreezing and learning rates ------------------------------------------------------------------------


def test_gradual_unfreeze_adds_fresh_groups_at_scheduled_lr() -> None:
    """Groups added by an unfreeze get base_lr × their multiplier × the schedule factor in force *now*, and follow
    later factors; the factor comes from a transformers warmup schedule on a dummy optimizer."""
    model, layer_map, ctl = mlp_setup("adamw_wd")
    strategy = build_strategy("gradual+discriminative", {"unit": "step", "unfreeze_every": 2, "decay": 0.5})
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = transformers.get_linear_schedule_with_warmup(dummy, num_warmup_steps=3, num_training_steps=20)
    seen_groups: set[str] = set()
    for step in range(14):
        factor = dummy.param_groups[0]["lr"]
        ctl.set_lr_factor(factor)
        plan = strategy.plan(layer_map, 0, step)
        groups_before = {g["name"] for g in ctl.optimizer.param_groups} if ctl.optimizer else set()
        if ctl.apply(plan) and groups_before:
            added = [g for g in ctl.optimizer.param_groups if g["name"] not in groups_before]
            assert added, f"step {step}: an unfreeze must add parameter groups"
            for g in added:
                assert all(p not in ctl.optimizer.state for p in g["params"])  # fresh: no stale state
        for g in ctl.optimizer.param_groups:
            expected = BASE_LR * plan[g["layer_group"]].lr_multiplier * factor
            assert g["lr"] == pytest.approx(expected, rel=1e-12), (step, g["name"])
        rates = ctl.learning_rates()
        for name, setting in plan.items():
            assert rates[name] == (0.0 if setting.frozen else pytest.approx(BASE_LR * setting.lr_multiplier * factor))
        seen_groups |= {g["layer_group"] for g in ctl.optimizer.param_groups}
        mlp_step(model, ctl, step)
        dummy.step()  # no gradients: only keeps the scheduler's call order happy
        schedule.step()
    assert seen_groups == set(layer_map.names)
    assert [event for event, _ in ctl.history].count("unfreeze") == 6  # 5 blocks + embeddings, one every 2 steps
    assert ctl.finish()


def test_no_weight_decay_on_biases_and_norms() -> None:
    model = tm.bert()
    layer_map = discover_layers(model)
    ctl = FreezeController(model, layer_map, make_optimizer_factory("adamw"), BASE_LR, weight_decay=WEIGHT_DECAY)
    ctl.apply(build_strategy("none").plan(layer_map, 0, 0))
    names = {id(p): n for n, p in model.named_parameters()}
    seen = 0
    for g in ctl.optimizer.param_groups:
        one_dim = [p.ndim <= 1 for p in g["params"]]
        assert all(one_dim) or not any(one_dim), g["name"]
        if all(one_dim):
            assert g["weight_decay"] == 0.0 and g["name"].endswith("/no_decay"), g["name"]
        else:
            assert g["weight_decay"] == WEIGHT_DECAY and not g["name"].endswith("/no_decay"), g["name"]
        seen += len(g["params"])
        if g["name"] == "layer.0/no_decay":
            layer_norms = {names[id(p)] for p in g["params"]}
            assert "bert.encoder.layer.0.attention.output.LayerNorm.weight" in layer_norms
            assert "bert.encoder.layer.0.attention.self.query.bias" in layer_norms
    assert seen == len(list(model.parameters()))


def test_trainable_params_and_learning_rates() -> None:
    model = tm.bert()
    layer_map = discover_layers(model)
    ctl = FreezeController(model, layer_map, make_optimizer_factory("adamw"), BASE_LR)
    plan = build_strategy("bottom_n+discriminative", {"n": 1, "decay": 0.5}).plan(layer_map, 0, 0)
    ctl.apply(plan)
    trainable = sum(layer_map.group(n).num_params for n in ("layer.1", HEAD))
    assert ctl.trainable_params() == trainable
    assert ctl.frozen_params() == sum(p.numel() for p in model.parameters()) - trainable
    assert ctl.learning_rates() == {
        EMBEDDINGS: 0.0,
        "layer.0": 0.0,
        "layer.1": pytest.approx(BASE_LR * 0.5),
        HEAD: pytest.approx(BASE_LR),
    }
    ctl.set_lr_factor(0.25)
    assert ctl.learning_rates()["layer.1"] == pytest.approx(BASE_LR * 0.5 * 0.25)


def test_describe_and_format_table() -> None:
    model = tm.bert()
    layer_map = discover_layers(model)
    plan = build_strategy("bottom_n+discriminative", {"n": 1, "decay": 0.5}).plan(layer_map, 0, 0)
    rows = describe(layer_map, plan)
    assert [r["name"] for r in rows] == layer_map.names
    for row in rows:
        assert {"name", "num_params", "frozen", "lr_multiplier"} <= set(row)
        assert row["num_params"] == layer_map.group(row["name"]).num_params
        assert row["frozen"] == plan[row["name"]].frozen
        assert row["lr_multiplier"] == (0.0 if row["frozen"] else plan[row["name"]].lr_multiplier)
    assert sum(r["num_params"] for r in rows) == sum(p.numel() for p in model.parameters())
    table = format_table(rows)
    trainable = sum(r["num_params"] for r in rows if not r["frozen"])
    assert f"trainable {trainable:,} of" in table
    assert table.splitlines()[2].split()[:3] == [EMBEDDINGS, f"{rows[0]['num_params']:,}", "yes"]


def test_apply_rejects_bad_plans_and_reports_changes() -> None:
    _, layer_map, ctl = mlp_setup()
    with pytest.raises(ValueError, match="does not cover"):
        ctl.apply({HEAD: uniform_plan(layer_map)[HEAD]})
    with pytest.raises(ValueError, match="unknown layer groups"):
        ctl.apply({**uniform_plan(layer_map), "layer.9": uniform_plan(layer_map)[HEAD]})
    with pytest.raises(ValueError, match="nothing would train"):
        ctl.apply(uniform_plan(layer_map, frozen=set(layer_map.names)))
    assert ctl.optimizer is None and ctl.plan is None  # rejected before anything changed
    plan = uniform_plan(layer_map, frozen={"layer.0"})
    assert ctl.apply(plan)
    assert not ctl.apply(dict(plan))


# -- modes: BatchNorm and dropout in frozen blocks ---------------------------------------------------------------------


def resnet_controller(train_bn: bool) -> tuple[nn.Module, LayerMap, FreezeController]:
    model = tm.TinyResNet()
    layer_map = discover_layers(model)
    ctl = FreezeController(model, layer_map, make_optimizer_factory("sgd"), BASE_LR, train_bn=train_bn)
    ctl.apply(build_strategy("bottom_n", {"n": 2}).plan(layer_map, 0, 0))
    return model, layer_map, ctl


def bn_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in module.named_buffers()}


@pytest.mark.parametrize("train_bn", [False, True])
def test_batchnorm_in_frozen_blocks(train_bn: bool) -> None:
    model, layer_map, ctl = resnet_controller(train_bn)
    frozen_bn = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and n.startswith("layer1.")}
    trained_bn = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and n.startswith("layer3.")}
    before = {n: bn_buffers(m) for n, m in {**frozen_bn, "bn1": model.bn1, **trained_bn}.items()}
    frozen_params = [p for g in (EMBEDDINGS, "layer.0", "layer.1") for p in layer_map.group(g).params]
    params_before = snapshot(frozen_params)
    ctl.train_mode()
    for seed in range(3):
        model(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed)))
    for name, module in {**frozen_bn, "bn1": model.bn1}.items():
        assert module.training == train_bn
        same = all(torch.equal(b, before[name][n]) for n, b in module.named_buffers())
        assert same != train_bn, name
    for name, module in trained_bn.items():
        assert module.training
        assert not torch.equal(module.running_mean, before[name]["running_mean"])
    assert unchanged(frozen_params, params_before)  # train_bn moves statistics, never parameters


def test_dropout_in_frozen_blocks_off_unless_frozen_dropout() -> None:
    x = torch.randn(8, 4)
    for frozen_dropout in (False, True):
        model = tm.DropoutNet(p=0.9)
        layer_map = discover_layers(model, LayerSpec(layers="blocks"))
        ctl = FreezeController(model, layer_map, make_optimizer_factory("sgd"), BASE_LR, frozen_dropout=frozen_dropout)
        ctl.apply(build_strategy("bottom_n", {"n": 2}).plan(layer_map, 0, 0))
        ctl.train_mode()
        frozen_part = [model(x, upto=2) for _ in range(2)]
        assert torch.equal(*frozen_part) != frozen_dropout
        assert not torch.equal(model(x, upto=3), model(x, upto=3))  # the trainable block keeps its dropout
        assert model.blocks[2].training and model.head.training


def test_transformer_frozen_blocks_deterministic() -> None:
    """transformers' attention dropout is functional (gated by the module's training flag), not an nn.Dropout."""
    batch = tm.token_batch()
    for frozen_dropout in (False, True):
        model = transformers.BertForSequenceClassification(
            transformers.BertConfig(**{**tm._COMMON, "hidden_dropout_prob": 0.5, "attention_probs_dropout_prob": 0.5})
        )
        layer_map = discover_layers(model)
        ctl = FreezeController(model, layer_map, make_optimizer_factory("sgd"), BASE_LR, frozen_dropout=frozen_dropout)
        ctl.apply(build_strategy("bottom_n", {"n": 2}).plan(layer_map, 0, 0))
        ctl.train_mode()
        runs = [model.bert(input_ids=batch["input_ids"]).last_hidden_state for _ in range(2)]
        assert torch.equal(*runs) != frozen_dropout


# -- gradient checkpointing --------------------------------------------------------------------------------------------


def checkpointed_model(hf_input_hook: bool, builder: Callable[[], nn.Module] = tm.bert) -> tuple[nn.Module, LayerMap]:
    model = builder()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    if not hf_input_hook:
        # transformers makes the embedding output require grad; models without input embeddings (or a hand-built
        # checkpointed body) have no such hook. This is the case the strategies hook exists for.
        model.disable_input_require_grads()
    return model, discover_layers(model)


def checkpoint_grads(model: nn.Module, layer_map: LayerMap, trainable_input: bool) -> list[torch.Tensor | None]:
    ctl = FreezeController(model, layer_map, make_optimizer_factory("adamw"), BASE_LR, trainable_input=trainable_input)
    ctl.apply(build_strategy("bottom_n", {"n": 1}).plan(layer_map, 0, 0))
    ctl.train_mode()
    model(**tm.token_batch()).loss.backward()
    return [p.grad for _, p in layer_map.group("layer.1").params]


@pytest.mark.parametrize("hf_input_hook", [False, True])
def test_gradient_checkpointing_first_trainable_block_gets_grads(hf_input_hook: bool) -> None:
    model, layer_map = checkpointed_model(hf_input_hook)
    grads = checkpoint_grads(model, layer_map, trainable_input=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(
    "builder",
    [tm.roberta, tm.xlm_roberta, tm.distilbert, tm.electra, tm.deberta_v2, tm.modernbert, tm.gpt2, tm.llama],
    ids=lambda b: b.__name__,
)
def test_gradient_checkpointing_hook_across_architectures(builder: Callable[[], nn.Module]) -> None:
    """Every block layout passes its hidden states the way the hook expects (first positional argument)."""
    model, layer_map = checkpointed_model(hf_input_hook=False, builder=builder)
    grads = checkpoint_grads(model, layer_map, trainable_input=True)
    assert all(g is not None for g in grads)


def test_gradient_checkpointing_without_hook_loses_grads() -> None:
    """Control: the hazard is real, so the test above proves the hook, not luck."""
    model, layer_map = checkpointed_model(hf_input_hook=False)
    with pytest.warns(UserWarning, match="None of the inputs have requires_grad"):
        grads = checkpoint_grads(model, layer_map, trainable_input=False)
    assert all(g is None for g in grads)


def pre_hooks(model: nn.Module, layer_map: LayerMap) -> list[int]:
    return [len(model.get_submodule(path)._forward_pre_hooks) for path in layer_map.layer_paths]


def test_trainable_input_hook_follows_the_plan() -> None:
    model = tm.bert(num_layers=3)
    layer_map = discover_layers(model)
    ctl = FreezeController(model, layer_map, make_optimizer_factory("adamw"), BASE_LR)
    expected = {  # strategy -> hooks per block
        ("bottom_n", 1): [0, 1, 0],
        ("bottom_n", 2): [0, 0, 1],
        ("bottom_n", 3): [0, 0, 0],  # only the head trains: nothing checkpointed needs a grad input
        ("none", None): [0, 0, 0],  # embeddings train: their output already requires grad
        ("embeddings", None): [1, 0, 0],
    }
    for (name, n), hooks in expected.items():
        plan = build_strategy(name, {"n": n} if n is not None else {}).plan(layer_map, 0, 0)
        ctl.apply(plan)
        assert pre_hooks(model, layer_map) == hooks, name
        index = first_trainable_block(layer_map, plan)
        assert index == (hooks.index(1) if 1 in hooks else None)
    ctl.remove_hooks()
    assert pre_hooks(model, layer_map) == [0, 0, 0]


def test_trainable_input_hook_changes_no_value() -> None:
    model = tm.bert()
    layer_map = discover_layers(model)
    batch = tm.token_batch()
    model.eval()
    reference = model(**batch).logits
    ctl = FreezeController(model, layer_map, make_optimizer_factory("adamw"), BASE_LR)
    ctl.apply(build_strategy("bottom_n", {"n": 1}).plan(layer_map, 0, 0))
    assert torch.equal(model(**batch).logits, reference)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reference)


# -- the verifier ------------------------------------------------------------------------------------------------------


def test_verifier_passes_normally_and_catches_tampering() -> None:
    model, layer_map, ctl = mlp_setup()
    ctl.apply(build_strategy("bottom_n", {"n": 2}).plan(layer_map, 0, 0))
    mlp_step(model, ctl, 0)
    assert ctl.finish()
    ctl.require_verified()
    with torch.no_grad():  # behind the controller's back
        model.blocks[1].weight[0, 0] += 1e-3
    assert not ctl.finish()
    assert ctl.verifier is not None and ctl.verifier.failures == ["layer.1"]
    with pytest.raises(FrozenParameterChanged, match=r"layer\.1"):
        ctl.require_verified()


def test_require_verified_checks_groups_still_frozen() -> None:
    """No need to call finish() first: a change in a group that is still frozen is found."""
    model, layer_map, ctl = mlp_setup()
    ctl.apply(build_strategy("bottom_n", {"n": 1}).plan(layer_map, 0, 0))
    with torch.no_grad():
        model.embed.bias.mul_(2.0)
    with pytest.raises(FrozenParameterChanged, match="embeddings"):
        ctl.require_verified()


def test_verifier_catches_change_at_unfreeze_time() -> None:
    model, layer_map, ctl = mlp_setup()
    ctl.apply(uniform_plan(layer_map, frozen={"layer.3"}))
    with torch.no_grad():
        model.blocks[3].bias.zero_()
    ctl.apply(uniform_plan(layer_map))
    assert ctl.verifier is not None and ctl.verifier.failures == ["layer.3"]
    assert not ctl.finish()


# -- the scenarios that taught these lessons ---------------------------------------------------------------------------


def two_tower_step(model: tm.TwoTower, optimizer: torch.optim.Optimizer, task: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 4 if task == "a" else 6, generator=gen)
    y = torch.randint(0, 2, (8,), generator=gen)
    optimizer.zero_grad(set_to_none=False)  # zeroed grads, the setting that bit the original code
    nn.functional.cross_entropy(model(x, task), y).backward()
    optimizer.step()


def test_two_towers_alternating_tasks_under_adam() -> None:
    """Each task's step (Adam) must leave the other task's tower bit-identical."""
    model = tm.TwoTower()
    layer_map = discover_layers(model, LayerSpec(layers=["tower_a", "tower_b"]))
    ctl = FreezeController(model, layer_map, make_optimizer_factory("adam"), BASE_LR)
    towers = {"a": "layer.0", "b": "layer.1"}
    for step in range(8):
        task = "ab"[step % 2]
        other = towers["b" if task == "a" else "a"]
        ctl.apply(uniform_plan(layer_map, frozen={other}))
        other_params = layer_map.group(other).params
        own_params = layer_map.group(towers[task]).params
        before, own_before = snapshot(other_params), snapshot(own_params)
        ctl.train_mode()
        two_tower_step(model, ctl.optimizer, task, step)
        assert unchanged(other_params, before), f"step {step}: tower {other} moved during task {task}"
        assert all_changed(own_params, own_before)
    assert ctl.finish()


def test_two_towers_naive_requires_grad_toggle_moves_other_tower() -> None:
    """Control: toggling requires_grad with one Adam over all parameters moves the idle tower."""
    model = tm.TwoTower()
    optimizer = torch.optim.Adam(model.parameters(), lr=BASE_LR)
    two_tower_step(model, optimizer, "a", 0)
    model.tower_a.requires_grad_(False)
    before = snapshot(list(model.tower_a.named_parameters()))
    two_tower_step(model, optimizer, "b", 1)
    assert not unchanged(list(model.tower_a.named_parameters()), before)


def test_mlp_layer2_frozen_three_epochs_then_unfrozen() -> None:
    """AdamW with weight decay; layer 2 trained for an epoch, frozen for three, then unfrozen."""
    model, layer_map, ctl = mlp_setup("adamw_wd")
    layer2 = layer_map.group("layer.2").params

    def plan(epoch: int) -> Plan:
        return uniform_plan(layer_map, frozen={"layer.2"} if 1 <= epoch <= 3 else set())

    steps_per_epoch = 4
    marks: list[dict[str, torch.Tensor]] = []
    for epoch in range(5):
        ctl.apply(plan(epoch))
        marks.append(snapshot(layer2))
        for batch in range(steps_per_epoch):
            mlp_step(model, ctl, epoch * steps_per_epoch + batch)
        if 1 <= epoch <= 3:
            assert unchanged(layer2, marks[1]), f"layer.2 moved in frozen epoch {epoch}"
            assert_frozen_clean(ctl, layer2)
    assert all_changed(layer2, marks[0])  # trained in epoch 0
    assert all_changed(layer2, marks[4])  # and again after unfreezing
    assert ctl.finish()


def test_seed_classifier_freezing_layer1_leaves_layer10_and_11_training() -> None:
    model = tm.SeedClassifier(num_layers=12)
    layer_map = discover_layers(model)
    ctl = FreezeController(model, layer_map, make_optimizer_factory("adamw"), BASE_LR, weight_decay=WEIGHT_DECAY)
    ctl.apply(uniform_plan(layer_map, frozen={"layer.1"}))
    groups = {name: layer_map.group(name).params for name in ("layer.1", "layer.10", "layer.11", HEAD)}
    before = {name: snapshot(params) for name, params in groups.items()}
    batch = tm.token_batch()
    ctl.train_mode()
    ctl.optimizer.zero_grad()
    nn.functional.cross_entropy(model(batch["input_ids"]), batch["labels"]).backward()
    ctl.optimizer.step()
    assert unchanged(groups["layer.1"], before["layer.1"])
    head = [(n, p) for n, p in groups[HEAD] if n.startswith("head.")]
    assert [n for n, _ in head] == ["head.0.weight", "head.0.bias", "head.3.weight", "head.3.bias"]
    assert all_changed(head, before[HEAD])
    for name in ("layer.10", "layer.11"):
        # AdamW's first step moves every parameter with a non-zero gradient
        moved = [n for n, p in groups[name] if not torch.equal(p, before[name][n])]
        assert moved, name
        assert all(p.requires_grad for _, p in groups[name])


def test_body_head_two_group_learning_rates() -> None:
    """discriminative decay=1, head_lr_ratio=50: body at LR/50, head at LR, both reported."""
    model = tm.SeedClassifier(num_layers=2)
    layer_map = discover_layers(model)
    ctl = FreezeController(model, layer_map, make_optimizer_factory("adamw"), BASE_LR)
    ctl.apply(build_strategy("discriminative", {"decay": 1.0, "head_lr_ratio": 50}).plan(layer_map, 0, 0))
    rates = ctl.learning_rates()
    assert rates == {
        EMBEDDINGS: pytest.approx(BASE_LR / 50),
        "layer.0": pytest.approx(BASE_LR / 50),
        "layer.1": pytest.approx(BASE_LR / 50),
        HEAD: pytest.approx(BASE_LR),
    }
    assert sorted({g["lr"] for g in ctl.optimizer.param_groups}) == pytest.approx([BASE_LR / 50, BASE_LR])
    ctl.set_lr_factor(0.5)
    assert ctl.learning_rates()[HEAD] == pytest.approx(BASE_LR / 2)
    assert ctl.learning_rates()["layer.0"] == pytest.approx(BASE_LR / 100)
