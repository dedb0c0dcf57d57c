"""Parameters that never receive a gradient: found with one backward pass, kept out of the optimizer and the counts.

The model is the most common Kaggle pattern: a ``BertModel`` body whose head mean-pools ``last_hidden_state``, so
``bert.pooler`` is never used.
"""

from __future__ import annotations

import pytest
import tiny_models as tm
import torch
import transformers
from torch import nn

from strategies import (
    HEAD,
    FreezeController,
    FrozenParameterChanged,
    build_strategy,
    discover_layers,
    find_unused_parameters,
    make_optimizer_factory,
    unused_by_group,
)

POOLER = {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}


class MeanPoolClassifier(nn.Module):
    def __init__(self, num_labels: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.bert = transformers.BertModel(transformers.BertConfig(**tm._COMMON))
        self.head = nn.Sequential(nn.Linear(tm.HIDDEN, 16), nn.Tanh(), nn.Linear(16, num_labels))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1))


def batch() -> dict[str, torch.Tensor]:
    return {"input_ids": tm.token_batch()["input_ids"]}


def test_mean_pool_head_leaves_the_pooler_without_gradient() -> None:
    model = MeanPoolClassifier()
    assert find_unused_parameters(model, batch()) == POOLER
    labels = tm.token_batch()["labels"]
    by_loss = find_unused_parameters(model, lambda m: nn.functional.cross_entropy(m(**batch()), labels))
    assert by_loss == POOLER
    layer_map = discover_layers(model)
    assert unused_by_group(layer_map, POOLER) == {HEAD: ["bert.pooler.dense.weight", "bert.pooler.dense.bias"]}


def test_a_model_that_uses_everything_has_nothing_unused() -> None:
    model = tm.bert()  # BertForSequenceClassification reads the pooler
    assert find_unused_parameters(model, tm.token_batch()) == set()
    frozen_part = MeanPoolClassifier()
    frozen_part.bert.embeddings.requires_grad_(False)  # frozen parameters are not "unused": only trainable ones count
    assert find_unused_parameters(frozen_part, batch()) == POOLER


def test_the_probe_leaves_the_model_as_it_was() -> None:
    """Gradients, BatchNorm statistics and the RNG state after the probe are what they were before it."""
    model = tm.TinyResNet()
    model.train()
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()  # gradients a training loop might hold
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    assert find_unused_parameters(model, x) == set()
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert model.training
    dropout = tm.DropoutNet(p=0.5)  # dropout draws random numbers: the probe must not shift the training RNG stream
    dropout.train()
    sample = torch.randn(4, 4)
    rng = torch.get_rng_state()
    assert find_unused_parameters(dropout, sample) == set()
    assert torch.equal(torch.get_rng_state(), rng)


def controller(model: nn.Module, exclude: set[str]) -> FreezeController:
    layer_map = discover_layers(model)
    return FreezeController(
        model, layer_map, make_optimizer_factory("adamw"), 1e-2, weight_decay=0.1, exclude=exclude
    )


def in_optimizer(ctl: FreezeController) -> set[int]:
    assert ctl.optimizer is not None
    return {id(p) for g in ctl.optimizer.param_groups for p in g["params"]}


def step(model: nn.Module, ctl: FreezeController, seed: int) -> None:
    data = tm.token_batch(seed=seed)
    ctl.train_mode()
    assert ctl.optimizer is not None
    ctl.optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(data["input_ids"]), data["labels"]).backward()
    ctl.optimizer.step()


def test_excluded_pooler_is_not_in_the_optimizer_and_not_counted() -> None:
    model = MeanPoolClassifier()
    pooler = {n: p for n, p in model.named_parameters() if n in POOLER}
    pooler_size = sum(p.numel() for p in pooler.values())
    total = sum(p.numel() for p in model.parameters())

    naive = controller(MeanPoolClassifier(), exclude=set())  # control: what happens without the probe
    naive.apply(build_strategy("none").plan(naive.layer_map, 0, 0))
    assert naive.trainable_params() == total
    naive_pooler = [p for n, p in naive.model.named_parameters() if n in POOLER]
    assert all(id(p) in in_optimizer(naive) for p in naive_pooler)

    ctl = controller(model, exclude=find_unused_parameters(model, batch()))
    assert ctl.excluded == POOLER and ctl.excluded_params() == pooler_size
    ctl.apply(build_strategy("none").plan(ctl.layer_map, 0, 0))
    assert not any(id(p) in in_optimizer(ctl) for p in pooler.values())
    assert ctl.trainable_params() == total - pooler_size
    head_trainable = sum(p.numel() for n, p in ctl.layer_map.group(HEAD).params if n not in POOLER)
    ctl.apply(build_strategy("bottom_n", {"n": 2}).plan(ctl.layer_map, 0, 0))  # linear probe: head only
    assert ctl.trainable_params() == head_trainable
    before = {n: p.detach().clone() for n, p in pooler.items()}
    for seed in range(2):
        step(model, ctl, seed)
    ctl.apply(build_strategy("none").plan(ctl.layer_map, 0, 0))  # unfreezing the head group again skips the pooler
    step(model, ctl, 2)
    assert not any(id(p) in in_optimizer(ctl) for p in pooler.values())
    assert all(not p.requires_grad and p.grad is None for p in pooler.values())
    assert all(torch.equal(p, before[n]) for n, p in pooler.items())
    ctl.require_verified()


def test_excluded_parameters_are_verified_and_checked() -> None:
    model = MeanPoolClassifier()
    with pytest.raises(ValueError, match="does not have"):
        controller(model, exclude={"bert.pooler.weight"})
    ctl = controller(model, exclude=POOLER)
    ctl.apply(build_strategy("none").plan(ctl.layer_map, 0, 0))
    with torch.no_grad():
        model.bert.pooler.dense.bias.add_(1.0)  # behind the controller's back
    with pytest.raises(FrozenParameterChanged, match="excluded"):
        ctl.require_verified()


def test_a_group_that_is_all_excluded_cannot_be_the_only_one_training() -> None:
    model = MeanPoolClassifier()
    head = {n for n, _ in discover_layers(model).group(HEAD).params}
    ctl = controller(model, exclude=head)
    with pytest.raises(ValueError, match="nothing would train"):
        ctl.apply(build_strategy("bottom_n", {"n": 2}).plan(ctl.layer_map, 0, 0))
