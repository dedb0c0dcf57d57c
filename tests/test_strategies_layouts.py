"""Flat layouts for plain modules: ``fc1..fc5`` or an ``nn.Sequential`` of blocks maps without a ``layers:`` section,
and no model that was mapped before changes its mapping."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import tiny_models as tm
import torch
from torch import nn

import strategies.layers as layers
from strategies import (
    EMBEDDINGS,
    HEAD,
    FreezeController,
    LayerDiscoveryError,
    LayerMap,
    build_strategy,
    discover_layers,
    make_optimizer_factory,
    select_groups,
    uniform_plan,
)


class FcNet(nn.Module):
    """The issue's plain network: five Linear children, 73 parameters, ``fc2`` holding 12 of them."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(5, 3)
        self.act = nn.ReLU()  # parameter-free children are no layer
        self.fc2 = nn.Linear(3, 3)
        self.fc3 = nn.Linear(3, 3)
        self.drop = nn.Dropout(0.0)
        self.fc4 = nn.Linear(3, 4)
        self.fc5 = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(x))
        x = self.act(self.fc2(x))
        x = self.act(self.fc3(x))
        return self.fc5(self.drop(self.act(self.fc4(x))))


def block(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width), nn.GELU())


def modules_of(layer_map: LayerMap) -> dict[str, list[str]]:
    """Group → the module paths in it that hold parameters (parameter-free children such as ``act`` follow the
    before/after-the-stack rule of every layout; they carry no weights)."""
    return {
        g.name: [p for p in g.module_paths if any(n.startswith(f"{p}.") for n, _ in g.params)]
        for g in layer_map.groups
        if g.params
    }


def test_fc1_to_fc5_maps_in_definition_order() -> None:
    layer_map = discover_layers(FcNet())
    assert layer_map.source.startswith("flat layout")
    assert modules_of(layer_map) == {
        "layer.0": ["fc1"],
        "layer.1": ["fc2"],
        "layer.2": ["fc3"],
        "layer.3": ["fc4"],
        HEAD: ["fc5"],
    }
    assert layer_map.num_layers == 4
    assert EMBEDDINGS not in layer_map.names  # no embedding-side parameters: no empty group
    assert select_groups(layer_map, "fc2", "f") == ["layer.1"]
    assert select_groups(layer_map, "fc5", "f") == [HEAD]  # `act` and `drop` sit in head too, without weights


def test_freezing_fc2_changes_the_trainable_count_as_expected() -> None:
    model = FcNet()
    layer_map = discover_layers(model)
    ctl = FreezeController(model, layer_map, make_optimizer_factory("adamw"), 1e-2, weight_decay=0.1)
    ctl.apply(uniform_plan(layer_map))
    assert ctl.trainable_params() == 73
    ctl.apply(uniform_plan(layer_map, frozen={"layer.1"}))
    assert ctl.trainable_params() == 61
    assert ctl.frozen_params() == 12 == model.fc2.weight.numel() + model.fc2.bias.numel()
    assert not model.fc2.weight.requires_grad and model.fc3.weight.requires_grad


def test_fc2_recipe_as_a_schedule_is_bit_exact() -> None:
    """The issue's recipe, "fc2 frozen for the first 3 epochs, then train everything", in two phases: trainable
    61 → 73, fc2 bit-identical for three epochs under AdamW + weight decay, then trained with fresh state."""
    model = FcNet()
    layer_map = discover_layers(model)
    strategy = build_strategy("schedule", {"phases": [{"epoch": 0, "frozen": ["fc2"]}, {"epoch": 3}]})
    strategy.check(layer_map)
    assert strategy.schedule_end(layer_map) == 3
    ctl = FreezeController(model, layer_map, make_optimizer_factory("adamw"), 1e-2, weight_decay=0.1)
    fc2 = [model.fc2.weight, model.fc2.bias]
    start = [p.detach().clone() for p in fc2]
    counts = []
    for epoch in range(5):
        ctl.apply(strategy.plan(layer_map, epoch, 0))
        assert ctl.optimizer is not None
        counts.append(ctl.trainable_params())
        if epoch == 3:
            assert not any(p in ctl.optimizer.state for p in fc2)  # fresh state after the unfreeze
        for step in range(3):
            gen = torch.Generator().manual_seed(epoch * 3 + step)
            ctl.train_mode()
            ctl.optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(torch.randn(8, 5, generator=gen)), torch.randint(0, 3, (8,))).backward()
            ctl.optimizer.step()
        if epoch < 3:
            assert all(torch.equal(p, s) for p, s in zip(fc2, start)), f"fc2 moved in epoch {epoch}"
    assert counts == [61, 61, 61, 73, 73]
    assert all(not torch.equal(p, s) for p, s in zip(fc2, start))
    ctl.require_verified()


def test_sequential_of_blocks_maps_children_and_last_is_head() -> None:
    model = nn.Sequential(block(4), block(4), nn.Sequential(nn.Linear(4, 4), nn.Tanh()), nn.Flatten(), nn.Linear(4, 2))
    layer_map = discover_layers(model)
    assert layer_map.source.startswith("flat layout")
    assert modules_of(layer_map) == {"layer.0": ["0"], "layer.1": ["1"], "layer.2": ["2"], HEAD: ["4"]}
    plan = build_strategy("bottom_n", {"n": 2}).plan(layer_map, 0, 0)
    ctl = FreezeController(model, layer_map, make_optimizer_factory("sgd"), 0.1)
    ctl.apply(plan)
    assert ctl.trainable_params() == sum(p.numel() for p in (*model[2].parameters(), *model[4].parameters()))


def test_wrapper_around_one_sequential_uses_its_children() -> None:
    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(block(4), block(4), nn.Linear(4, 2))

    layer_map = discover_layers(Wrapped())
    assert modules_of(layer_map) == {"layer.0": ["net.0"], "layer.1": ["net.1"], HEAD: ["net.2"]}


def test_leading_embedding_children_are_the_embeddings() -> None:
    class Bag(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(10, 4)
            self.fc1 = nn.Linear(4, 4)
            self.fc2 = nn.Linear(4, 4)
            self.out = nn.Linear(4, 2)

    layer_map = discover_layers(Bag())
    assert modules_of(layer_map) == {EMBEDDINGS: ["tok"], "layer.0": ["fc1"], "layer.1": ["fc2"], HEAD: ["out"]}


def test_root_sequential_of_identical_blocks_uses_child_paths() -> None:
    """The block-stack rule at the root: blocks are "0", "1", "2" (they used to be ".0", ... and own nothing)."""
    model = nn.Sequential(block(4), block(4), block(4))
    layer_map = discover_layers(model)
    assert layer_map.layer_paths == ["0", "1", "2"]
    assert modules_of(layer_map) == {"layer.0": ["0"], "layer.1": ["1"], "layer.2": ["2"]}


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)),  # an MLP head shape
        nn.Sequential(nn.Linear(4, 2)),
        tm.MLPStack(),  # a ModuleList of leaf blocks: declared with layers: blocks, never guessed as one layer
    ],
    ids=["sequential-of-leaves", "one-child", "modulelist-child"],
)
def test_ambiguous_plain_models_still_ask_for_a_layers_section(model: nn.Module) -> None:
    with pytest.raises(LayerDiscoveryError, match="layers:"):
        discover_layers(model)


MAPPED_BEFORE: list[Callable[[], nn.Module]] = [
    tm.bert,
    tm.bare_bert,
    tm.roberta,
    tm.xlm_roberta,
    tm.distilbert,
    tm.albert,
    tm.electra,
    tm.deberta_v2,
    tm.modernbert,
    tm.gpt2,
    tm.llama,
    lambda: tm.SeedClassifier(num_layers=2),
    tm.TinyResNet,
    tm.DropoutNet,
]


@pytest.mark.parametrize("builder", MAPPED_BEFORE, ids=lambda b: getattr(b, "__name__", "seed"))
def test_models_mapped_before_keep_their_mapping(builder: Callable[[], nn.Module], monkeypatch) -> None:
    """Precedence: known layouts and the block-stack fallback win; the flat layout never sees these models."""
    model = builder()
    with_flat = discover_layers(model)
    monkeypatch.setattr(layers, "_flat_layout", lambda m: pytest.fail("flat layout consulted"))
    without_flat = discover_layers(model)
    assert with_flat.source == without_flat.source and "flat" not in with_flat.source
    assert [(g.name, g.module_paths, [n for n, _ in g.params]) for g in with_flat.groups] == [
        (g.name, g.module_paths, [n for n, _ in g.params]) for g in without_flat.groups
    ]
