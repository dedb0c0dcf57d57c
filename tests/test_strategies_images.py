"""Hugging Face image classifiers (ResNet, ConvNeXt, ViT, DeiT, DINOv2, Swin): stem/patch embeddings → embeddings,
stages (CNNs, Swin) or encoder blocks (ViTs) → layer.i, final norm + pooler + classifier → head. Tiny random configs,
no downloads. ``bottom_n`` freezes exactly the right parameters and they stay bit-identical under AdamW; frozen
BatchNorm statistics stay bit-identical unless ``train_bn``."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import transformers
from torch import nn
from transformers.utils import logging as hf_logging

from strategies import (
    EMBEDDINGS,
    HEAD,
    FreezeController,
    LayerMap,
    build_strategy,
    discover_layers,
    make_optimizer_factory,
)

hf_logging.set_verbosity_error()


def _seeded(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def builder() -> nn.Module:
        torch.manual_seed(0)
        return build()

    builder.__name__ = build.__name__
    return builder


@_seeded
def resnet() -> nn.Module:
    # depths [1, 3]: the longest run of identical blocks is stage 1's three blocks, which is what the structural
    # fallback alone would have taken as "the layers"
    return transformers.ResNetForImageClassification(
        transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 3], num_labels=3)
    )


@_seeded
def convnext() -> nn.Module:
    config = transformers.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 2], num_stages=2, num_labels=3)
    return transformers.ConvNextForImageClassification(config)


@_seeded
def convnextv2() -> nn.Module:
    config = transformers.ConvNextV2Config(hidden_sizes=[8, 16], depths=[1, 2], num_stages=2, num_labels=3)
    return transformers.ConvNextV2ForImageClassification(config)


_VIT = {
    "image_size": 16,
    "patch_size": 8,
    "hidden_size": 16,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "intermediate_size": 20,
    "num_labels": 3,
}


@_seeded
def vit() -> nn.Module:
    return transformers.ViTForImageClassification(transformers.ViTConfig(**_VIT))


@_seeded
def deit() -> nn.Module:
    return transformers.DeiTForImageClassification(transformers.DeiTConfig(**_VIT))


@_seeded
def dinov2() -> nn.Module:
    config = transformers.Dinov2Config(**{k: v for k, v in _VIT.items() if k != "intermediate_size"})
    return transformers.Dinov2ForImageClassification(config)


_SWIN = {"image_size": 32, "patch_size": 4, "embed_dim": 8, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4}


@_seeded
def swin() -> nn.Module:
    return transformers.SwinForImageClassification(transformers.SwinConfig(**_SWIN, num_labels=3))


@_seeded
def swinv2() -> nn.Module:
    return transformers.Swinv2ForImageClassification(transformers.Swinv2Config(**_SWIN, num_labels=3))


# builder -> (input size, block paths, group -> module paths that hold parameters)
CASES: dict[str, tuple[Callable[[], nn.Module], int, list[str], dict[str, list[str]]]] = {
    "resnet": (
        resnet,
        32,
        ["resnet.encoder.stages.0", "resnet.encoder.stages.1"],
        {EMBEDDINGS: ["resnet.embedder"], HEAD: ["classifier"]},
    ),
    "convnext": (
        convnext,
        32,
        ["convnext.encoder.stages.0", "convnext.encoder.stages.1"],
        {EMBEDDINGS: ["convnext.embeddings"], HEAD: ["convnext.layernorm", "classifier"]},
    ),
    "convnextv2": (
        convnextv2,
        32,
        ["convnextv2.encoder.stages.0", "convnextv2.encoder.stages.1"],
        {EMBEDDINGS: ["convnextv2.embeddings"], HEAD: ["convnextv2.layernorm", "classifier"]},
    ),
    "vit": (
        vit,
        16,
        ["vit.layers.0", "vit.layers.1", "vit.layers.2"],
        {EMBEDDINGS: ["vit.embeddings"], HEAD: ["vit.layernorm", "classifier"]},
    ),
    "deit": (
        deit,
        16,
        ["deit.layers.0", "deit.layers.1", "deit.layers.2"],
        {EMBEDDINGS: ["deit.embeddings"], HEAD: ["deit.layernorm", "classifier"]},
    ),
    "dinov2": (
        dinov2,
        16,
        ["dinov2.encoder.layer.0", "dinov2.encoder.layer.1", "dinov2.encoder.layer.2"],
        {EMBEDDINGS: ["dinov2.embeddings"], HEAD: ["dinov2.layernorm", "classifier"]},
    ),
    "swin": (
        swin,
        32,
        ["swin.encoder.layers.0", "swin.encoder.layers.1"],
        {EMBEDDINGS: ["swin.embeddings"], HEAD: ["swin.layernorm", "classifier"]},
    ),
    "swinv2": (
        swinv2,
        32,
        ["swinv2.encoder.layers.0", "swinv2.encoder.layers.1"],
        {EMBEDDINGS: ["swinv2.embeddings"], HEAD: ["swinv2.layernorm", "classifier"]},
    ),
}


def weighted_paths(layer_map: LayerMap, group: str) -> list[str]:
    g = layer_map.group(group)
    return [p for p in g.module_paths if any(n.startswith(f"{p}.") for n, _ in g.params)]


@pytest.mark.parametrize("case", list(CASES))
def test_image_model_groups(case: str) -> None:
    builder, _, blocks, expected = CASES[case]
    model = builder()
    layer_map = discover_layers(model)
    assert layer_map.source == f"known layout for model_type={model.config.model_type!r}"
    assert layer_map.layer_paths == blocks
    for group, paths in expected.items():
        assert weighted_paths(layer_map, group) == paths, group
    for i, path in enumerate(blocks):
        names = [n for n, _ in layer_map.group(f"layer.{i}").params]
        assert names and all(n.startswith(f"{path}.") for n in names)
    seen = sorted(n for g in layer_map.groups for n, _ in g.params)
    assert seen == sorted(n for n, _ in model.named_parameters())  # a partition: every parameter once


def test_bare_image_body_maps_without_prefix() -> None:
    torch.manual_seed(0)
    body = transformers.ResNetModel(transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 3]))
    layer_map = discover_layers(body)
    assert layer_map.layer_paths == ["encoder.stages.0", "encoder.stages.1"]
    assert weighted_paths(layer_map, EMBEDDINGS) == ["embedder"]


def images(size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, size, size, generator=gen), torch.randint(0, 3, (4,), generator=gen)


def train_steps(model: nn.Module, ctl: FreezeController, size: int, steps: int) -> None:
    for seed in range(steps):
        x, y = images(size, seed)
        ctl.train_mode()
        assert ctl.optimizer is not None
        ctl.optimizer.zero_grad(set_to_none=True)
        model(pixel_values=x, labels=y).loss.backward()
        ctl.optimizer.step()


@pytest.mark.parametrize("case", list(CASES))
def test_bottom_n_freezes_embeddings_and_lowest_stage_bit_identically(case: str) -> None:
    builder, size, blocks, _ = CASES[case]
    model = builder()
    layer_map = discover_layers(model)
    ctl = FreezeController(model, layer_map, make_optimizer_factory("adamw"), 1e-2, weight_decay=0.1)
    ctl.apply(build_strategy("bottom_n", {"n": 1}).plan(layer_map, 0, 0))
    frozen_prefixes = (*(f"{p}." for p in layer_map.group(EMBEDDINGS).module_paths), f"{blocks[0]}.")
    frozen = {n for n, _ in model.named_parameters() if n.startswith(frozen_prefixes)}
    assert frozen and {n for n, p in model.named_parameters() if not p.requires_grad} == frozen
    assert ctl.trainable_params() == sum(p.numel() for n, p in model.named_parameters() if n not in frozen)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model, ctl, size, steps=3)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert not moved & frozen, sorted(moved & frozen)
    trainable_groups = [g for g in layer_map.groups if g.params and g.name not in (EMBEDDINGS, "layer.0")]
    for group in trainable_groups:  # the rest really trains (AdamW moves every parameter with a gradient)
        assert any(n in moved for n, _ in group.params), group.name
    ctl.require_verified()


def bn_state(model: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """BatchNorm running statistics (mean, var, batch count) of the modules under ``prefix``."""
    stats = ("running_mean", "running_var", "num_batches_tracked")
    return {n: b.clone() for n, b in model.named_buffers() if n.startswith(prefix) and n.endswith(stats)}


@pytest.mark.parametrize("train_bn", [False, True])
def test_resnet_frozen_batchnorm_statistics(train_bn: bool) -> None:
    """Frozen stages run in eval mode: their BatchNorm running statistics stay bit-identical through training
    forwards (``train_bn: true`` lets them update); trainable stages update theirs either way."""
    model = resnet()
    layer_map = discover_layers(model)
    ctl = FreezeController(
        model, layer_map, make_optimizer_factory("sgd", momentum=0.9), 1e-2, weight_decay=0.1, train_bn=train_bn
    )
    ctl.apply(build_strategy("bottom_n", {"n": 1}).plan(layer_map, 0, 0))
    frozen_prefixes = ("resnet.embedder.", "resnet.encoder.stages.0.")
    frozen_bn = {p: bn_state(model, p) for p in frozen_prefixes}
    trained_bn = bn_state(model, "resnet.encoder.stages.1.")
    assert all(frozen_bn.values()) and trained_bn
    train_steps(model, ctl, 32, steps=3)
    for prefix, state in frozen_bn.items():
        now = bn_state(model, prefix)
        same = all(torch.equal(now[n], b) for n, b in state.items())
        assert same != train_bn, prefix
    now = bn_state(model, "resnet.encoder.stages.1.")
    assert all(not torch.equal(now[n], b) for n, b in trained_bn.items())
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    for name, module in bns.items():
        assert module.training == (train_bn or not name.startswith(frozen_prefixes)), name
    ctl.require_verified()  # statistics are buffers; the frozen parameters never moved, with or without train_bn
