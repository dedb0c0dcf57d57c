"""The frozen-prefix activation cache on image classifiers (issue 13, item 3).

Tiny random-init Hugging Face ResNet (BatchNorm), ConvNeXt (drop path), ViT (dropout) and Swin (tuple outputs)
configs, on generated pixel batches: served logits equal the direct forward, a cached ``bottom_n`` run equals an
uncached one and never runs the frozen stages after the cold epoch, frozen BatchNorm statistics stay bit-identical,
and every case that cannot be served (augmentation, ``train_bn``, Swin V2's window attention weights, pixels that
differ from the captured ones) runs the direct forward with its reason.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from loop_helpers import assert_same_metrics, run_loop
from torch import nn
from torch.utils.data import DataLoader
from transformers.utils import logging as hf_logging

from strategies import LayerMap, discover_layers
from strategies.bottom_n import BottomN
from strategies.gradual import Gradual
from sweeps.cache import CachedPrefixForward, clear_memory_cache
from sweeps.data.images import augment_pixels
from sweeps.train.forward import DirectForward, ForwardRunner
from sweeps.train.loop import LoopConfig

hf_logging.set_verbosity_error()

TOL = {"atol": 1e-5, "rtol": 1e-5}


def resnet() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16], depths=[1, 1, 1], num_labels=3)
    return transformers.ResNetForImageClassification(config)


def convnext() -> nn.Module:
    torch.manual_seed(0)
    # drop path is active in training mode only: the frozen stages run in eval mode, so they are deterministic
    config = transformers.ConvNextConfig(hidden_sizes=[8, 16, 16], depths=[1, 1, 1], num_stages=3, num_labels=3,
                                         drop_path_rate=0.2)
    return transformers.ConvNextForImageClassification(config)


def vit() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=3,
                                    num_attention_heads=2, intermediate_size=20, num_labels=3,
                                    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    return transformers.ViTForImageClassification(config)


_SWIN = {"image_size": 32, "patch_size": 4, "embed_dim": 8, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4,
         "num_labels": 3}


def swin() -> nn.Module:
    torch.manual_seed(0)
    return transformers.SwinForImageClassification(transformers.SwinConfig(**_SWIN))


def swinv2() -> nn.Module:
    torch.manual_seed(0)
    return transformers.Swinv2ForImageClassification(transformers.Swinv2Config(**_SWIN))


SIZES = {resnet: 32, convnext: 32, vit: 16, swin: 32, swinv2: 32}


def images(n: int, size: int, seed: int) -> list[dict[str, Any]]:
    """Generated examples: normalised-looking pixels, a label and an example id (what the ImageCollator yields)."""
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(n, 3, size, size, generator=gen)
    labels = torch.randint(0, 3, (n,), generator=gen)
    return [{"pixel_values": pixels[i], "labels": int(labels[i]), "example_id": i} for i in range(n)]


def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([r["pixel_values"] for r in rows]),
        "labels": torch.tensor([r["labels"] for r in rows]),
        "example_id": torch.tensor([r["example_id"] for r in rows]),
    }


def loader(rows: list[dict[str, Any]], batch_size: int = 8, shuffle: bool = True, seed: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(rows, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=gen)  # type: ignore[arg-type]


def freeze_prefix(model: nn.Module, layer_map: LayerMap, depth: int) -> None:
    """What the FreezeController does for bottom_n, in eval mode: no grad for the embedding side and blocks < depth."""
    model.eval()
    for name in ["embeddings", "other", *(f"layer.{i}" for i in range(depth))]:
        if name in layer_map.names:
            for _, p in layer_map.group(name).params:
                p.requires_grad_(False)


def logits_by_id(runner: ForwardRunner, model: nn.Module, data: DataLoader, split: str = "train") -> torch.Tensor:
    ids, out = [], []
    with torch.no_grad():
        for batch in data:
            out.append(runner.logits(model, batch, split))
            ids.append(batch["example_id"])
    return torch.cat(out)[torch.cat(ids).argsort()]


@contextlib.contextmanager
def count_calls(modules: list[nn.Module]) -> Iterator[list[int]]:
    """Real executions of each module: a hook on its first submodule that holds parameters (a replaced ``forward``
    never reaches it; containers such as a ResNet stage's ``layers`` are iterated, never called themselves)."""
    counts = [0] * len(modules)
    handles = []
    for i, module in enumerate(modules):
        child = next(m for m in module.modules() if any(True for _ in m.parameters(recurse=False)))

        def hook(_m: nn.Module, _a: object, _o: object, i: int = i) -> None:
            counts[i] += 1

        handles.append(child.register_forward_hook(hook))
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


def make_runner(layer_map: LayerMap, tmp_path: Path, **kwargs: Any) -> CachedPrefixForward:
    options: dict[str, Any] = {"split_keys": {"train": "img-train", "eval": "img-eval"}, "cache_dtype": "float32",
                               "cache_dir": tmp_path / "cache"}
    options.update(kwargs)
    return CachedPrefixForward(layer_map, **options)


@pytest.fixture(autouse=True)
def _fresh_memory_cache() -> Iterator[None]:
    clear_memory_cache()
    yield
    clear_memory_cache()


# -- exactness ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("build", [resnet, convnext, vit, swin], ids=lambda b: b.__name__)
@pytest.mark.parametrize("where", ["one", "all"])
def test_cached_logits_match_direct(build: Callable[[], nn.Module], where: str, tmp_path: Path) -> None:
    model = build()
    layer_map = discover_layers(model)
    depth = 1 if where == "one" else layer_map.num_layers
    freeze_prefix(model, layer_map, depth)
    rows = images(21, SIZES[build], seed=1)  # 21: a short last batch
    expected = logits_by_id(DirectForward(), model, loader(rows, shuffle=False))

    runner = make_runner(layer_map, tmp_path)
    runner.set_prefix_depth(depth)
    blocks = layer_map.layer_modules(model)
    with count_calls(blocks[:depth]) as counts:
        cold = logits_by_id(runner, model, loader(rows, seed=1))
        assert counts == [len(loader(rows))] * depth
        counts[:] = [0] * depth
        warm = logits_by_id(runner, model, loader(rows, seed=2))
        assert counts == [0] * depth  # the warm pass never runs a frozen stage/block
    torch.testing.assert_close(cold, expected, **TOL)
    torch.testing.assert_close(warm, expected, **TOL)
    assert runner.stats["mode"] == "cache" and runner.stats["served_batches"] == len(loader(rows))
    assert runner.stats["built"] == [f"train@{d}" for d in range(1, depth + 1)]
    runner.close()


def test_entries_hold_one_fixed_shape_row_per_image(tmp_path: Path) -> None:
    """A CNN stage's feature map, a Swin stage's (hidden, reshaped hidden) pair: one row per example, shapes kept."""
    import json

    for build, shapes in ((resnet, [[8, 8, 8]]), (swin, [[16, 16], [16, 4, 4]])):
        clear_memory_cache()
        model = build()
        layer_map = discover_layers(model)
        freeze_prefix(model, layer_map, 1)
        runner = make_runner(layer_map, tmp_path / build.__name__, capture="target", split_sizes={"train": 10})
        runner.set_prefix_depth(1)
        logits_by_id(runner, model, loader(images(10, SIZES[build], seed=3)))
        runner.close()
        [meta_file] = (tmp_path / build.__name__ / "cache").glob("*/meta.json")
        meta = json.loads(meta_file.read_text())
        assert meta["layout"] == "examples" and meta["item_shapes"] == shapes
        assert meta["num_examples"] == meta["num_tokens"] == 10


def test_float16_storage_is_close(tmp_path: Path) -> None:
    model = resnet()
    layer_map = discover_layers(model)
    freeze_prefix(model, layer_map, 2)
    rows = images(12, 32, seed=4)
    expected = logits_by_id(DirectForward(), model, loader(rows, shuffle=False))
    runner = make_runner(layer_map, tmp_path, cache_dtype="float16")
    runner.set_prefix_depth(2)
    logits_by_id(runner, model, loader(rows))
    warm = logits_by_id(runner, model, loader(rows, seed=5))
    assert runner.stats["served_batches"] == len(loader(rows))
    torch.testing.assert_close(warm, expected, atol=2e-2, rtol=2e-2)
    runner.close()


# -- the training loop -------------------------------------------------------------------------------------------------
def train(model: nn.Module, runner: ForwardRunner, n: int, size: int, epochs: int = 3, train_bn: bool = False,
          on_epoch: Callable[[int], None] | None = None, strategy: Any = None) -> list[dict[str, float]]:
    return run_loop(
        model, strategy or BottomN(n=n), runner,
        loader(images(24, size, seed=7), batch_size=8, seed=11),
        loader(images(12, size, seed=8), batch_size=6, shuffle=False),
        LoopConfig(epochs=epochs, batch_size=8, eval_batch_size=6, scheduler="constant", divergence_factor=0.0),
        train_bn=train_bn, on_epoch=on_epoch,
    )


@pytest.mark.parametrize(("build", "n"), [(resnet, 2), (convnext, 1), (vit, 2)], ids=["resnet", "convnext", "vit"])
def test_bottom_n_training_matches_direct_and_skips_the_prefix(build: Callable[[], nn.Module], n: int,
                                                              tmp_path: Path) -> None:
    size = SIZES[build]
    direct = train(build(), DirectForward(), n, size)
    model = build()
    layer_map = discover_layers(model)
    runner = make_runner(layer_map, tmp_path, split_sizes={"train": 24, "eval": 12})
    per_epoch: list[list[int]] = []
    with count_calls(layer_map.layer_modules(model)[:n]) as counts:

        def snapshot(_epoch: int) -> None:
            per_epoch.append(list(counts))
            counts[:] = [0] * n

        cached = train(model, runner, n, size, on_epoch=snapshot)
    assert_same_metrics(direct, cached)
    assert per_epoch[0] == [3 + 2] * n  # cold epoch: 3 train + 2 eval batches ran the frozen stages
    assert per_epoch[1:] == [[0] * n, [0] * n]  # afterwards: never
    assert runner.stats["built"] == [f"train@{d}" for d in range(1, n + 1)] + [f"eval@{d}" for d in range(1, n + 1)]


def test_gradual_unfreezing_on_a_cnn_matches_direct(tmp_path: Path) -> None:
    """Three stages, one unfrozen per epoch: depths 3, 2, 1 are served from the entries the first epoch built."""
    direct = train(resnet(), DirectForward(), 0, 32, epochs=4, strategy=Gradual(unfreeze_every=1))
    model = resnet()
    runner = make_runner(discover_layers(model), tmp_path, split_sizes={"train": 24, "eval": 12})
    cached = train(model, runner, 0, 32, epochs=4, strategy=Gradual(unfreeze_every=1))
    assert_same_metrics(direct, cached)
    assert sorted(runner.stats["built"]) == sorted(f"{s}@{d}" for s in ("train", "eval") for d in (1, 2, 3))
    assert runner.stats["hits"] == 4  # epochs 2 and 3 (depths 2, 1), both splits


def _bn_state(model: nn.Module, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    names = ("running_mean", "running_var", "num_batches_tracked")
    return {k: v.clone() for k, v in model.state_dict().items()
            if k.startswith(prefixes) and k.rsplit(".", 1)[-1] in names}


def test_frozen_batchnorm_in_a_cached_prefix_stays_bit_identical(tmp_path: Path) -> None:
    model = resnet()
    frozen_prefixes = ("resnet.embedder", "resnet.encoder.stages.0", "resnet.encoder.stages.1")
    frozen_before = _bn_state(model, frozen_prefixes)
    trained_before = _bn_state(model, ("resnet.encoder.stages.2",))
    assert frozen_before and trained_before
    runner = make_runner(discover_layers(model), tmp_path, split_sizes={"train": 24, "eval": 12})
    train(model, runner, 2, 32)
    assert runner.stats["mode"] == "cache" and runner.stats["served_batches"] > 0
    after = _bn_state(model, frozen_prefixes)
    assert all(torch.equal(after[k], v) for k, v in frozen_before.items())  # not one bit moved
    moved = _bn_state(model, ("resnet.encoder.stages.2",))
    assert any(not torch.equal(moved[k], v) for k, v in trained_before.items())  # the trainable stage's did


def test_train_bn_turns_the_cache_off_and_matches_direct(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Frozen BatchNorm in training mode moves its statistics every batch: nothing may be built or served, not even
    for the evaluation pass that runs in eval mode after it."""
    direct = train(resnet(), DirectForward(), 2, 32, train_bn=True)
    model = resnet()
    runner = make_runner(discover_layers(model), tmp_path, split_sizes={"train": 24, "eval": 12})
    with caplog.at_level(logging.WARNING, logger="sweeps.cache.forward"):
        cached = train(model, runner, 2, 32, train_bn=True)
    assert_same_metrics(direct, cached)
    assert runner.stats["mode"] == "direct" and "training mode" in runner.stats["reason"]
    assert runner.stats["built"] == [] and runner.stats["served_batches"] == 0
    assert "training mode" in caplog.text
    assert not list((tmp_path / "cache").glob("*/meta.json"))


# -- never serve wrong activations -------------------------------------------------------------------------------------
def test_other_pixels_for_a_cached_id_run_direct(tmp_path: Path) -> None:
    """An augmented batch (or a stale split key) carries other pixels under the same example ids: the per-example
    pixel fingerprints send it to the direct forward."""
    model = resnet()
    layer_map = discover_layers(model)
    freeze_prefix(model, layer_map, 2)
    rows = images(16, 32, seed=5)
    runner = make_runner(layer_map, tmp_path)
    runner.set_prefix_depth(2)
    logits_by_id(runner, model, loader(rows))
    gen = torch.Generator().manual_seed(0)
    augmented = [{**r, "pixel_values": augment_pixels(r["pixel_values"][None], gen)[0]} for r in rows]
    got = logits_by_id(runner, model, loader(augmented, shuffle=False))
    torch.testing.assert_close(got, logits_by_id(DirectForward(), model, loader(augmented, shuffle=False)), **TOL)
    assert runner.stats["fallback_batches"] == len(loader(rows)) and runner.stats["served_batches"] == 0
    runner.close()


def test_swinv2_window_attention_weights_cannot_be_served(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A Swin V2 stage returns its window attention weights (batch × windows first): not per example, so the capture
    is abandoned with the reason logged and the stage runs directly."""
    model = swinv2()
    layer_map = discover_layers(model)
    freeze_prefix(model, layer_map, 1)
    rows = images(12, 32, seed=6)
    expected = logits_by_id(DirectForward(), model, loader(rows, shuffle=False))
    runner = make_runner(layer_map, tmp_path)
    runner.set_prefix_depth(1)
    with caplog.at_level(logging.WARNING, logger="sweeps.cache.forward"):
        first = logits_by_id(runner, model, loader(rows))
        second = logits_by_id(runner, model, loader(rows, seed=3))
    torch.testing.assert_close(first, expected, **TOL)
    torch.testing.assert_close(second, expected, **TOL)
    assert "cannot be reproduced" in caplog.text
    assert runner.stats["built"] == [] and runner.stats["served_batches"] == 0
    runner.close()


def test_changed_batchnorm_statistics_change_the_key(tmp_path: Path) -> None:
    """Two checkpoints with equal weights but other running statistics do not share an entry."""
    rows = images(8, 32, seed=9)
    built = []
    for shift in (0.0, 0.5, 0.0):
        clear_memory_cache()
        model = resnet()
        with torch.no_grad():
            model.resnet.embedder.embedder.normalization.running_mean.add_(shift)
        layer_map = discover_layers(model)
        freeze_prefix(model, layer_map, 1)
        runner = make_runner(layer_map, tmp_path, capture="target", split_sizes={"train": 8})
        runner.set_prefix_depth(1)
        got = logits_by_id(runner, model, loader(rows))
        torch.testing.assert_close(got, logits_by_id(DirectForward(), model, loader(rows)), **TOL)
        built.append(runner.stats["built"])
        runner.close()
    assert built == [["train@1"], ["train@1"], []]  # the third trial finds the first one's entry on disk


# -- through the study: augmentation off by default, on → direct with the reason ---------------------------------------
@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from make_shapes import make_shapes, make_tiny_resnet

    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, per_class=4, validation_per_class=2, test=2, size=16)
    make_tiny_resnet(root / "tiny-resnet", size=16)
    return root


def _spec(shapes: Path, tmp_path: Path, *overrides: str) -> Any:
    import yaml

    from sweeps.config import load_spec

    study = {
        "name": "shapes-cache",
        "task": {"model": str(shapes / "tiny-resnet"),
                 "data": {"source": "imagefolder", "train": str(shapes / "train"),
                          "validation": str(shapes / "validation")}},
        "training": {"epochs": 2, "batch_size": 4, "learning_rate": 1e-2, "seed": 3},
        "strategies": [{"name": "bottom_n", "params": {"n": 1}}],
        "optuna": {"n_trials": 1, "pruner": "none"},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return load_spec(path, overrides=list(overrides))


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [((), None), (("task.data.augment=true",), "task.data.augment is on"), (("training.train_bn=true",), "train_bn")],
)
def test_study_trial_caches_unless_augment_or_train_bn(shapes: Path, tmp_path: Path, overrides: tuple[str, ...],
                                                       reason: str | None, caplog: pytest.LogCaptureFixture) -> None:
    from sweeps.train import StudyContext
    from sweeps.train.trial import train_once

    spec = _spec(shapes, tmp_path, *overrides)
    ctx = StudyContext.prepare(spec, tmp_path / "out")
    with caplog.at_level(logging.INFO, logger="sweeps.train.trial"):
        result, verified, _, _, stats = train_once(
            ctx, "bottom_n", {"n": 1}, spec.training, ctx.tokenized["train"], ctx.tokenized["validation"],
            {"train": ctx.split_keys["train"], "eval": ctx.split_keys["validation"]})
    assert verified and len(result.epochs) == 2
    if reason is None:
        assert stats["mode"] == "cache" and stats["built"] == ["train@1", "eval@1"]
        assert stats["served_batches"] == stats["capture_batches"] > 0  # epoch 2 served what epoch 1 captured
    else:
        assert stats["mode"] == "direct" and reason in stats["reason"]  # recorded with the trial (cache.reason)
        assert f"activation cache: off: {stats['reason']}" in caplog.text  # and logged
