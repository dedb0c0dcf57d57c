"""Tests of :mod:`sweeps.cache`: the cached frozen prefix must give the logits of a direct forward, skip the prefix
when warm, share entries across runner instances (trials) through ``cache_dir``, invalidate on any change of weights,
data key or depth, spill to memory-mapped files, and fall back to a direct forward wherever caching would be wrong.

Models are tiny (hidden 32, 2-4 layers) and built from configs with every dropout at 0, so a direct run and a cached
run are comparable number for number (``cache_dtype="float32"``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
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
from sweeps.cache import CachedPrefixForward, clear_memory_cache, publish, remove_stale_tmp, token_fingerprints
from sweeps.train.forward import DirectForward, ForwardRunner
from sweeps.train.loop import LoopConfig

hf_logging.set_verbosity_error()

VOCAB = 60
HIDDEN = 32
TOL = {"atol": 2e-5, "rtol": 1e-4}


# -- models and data ---------------------------------------------------------------------------------------------------
def bert(num_layers: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForSequenceClassification(config).eval()


def gpt2(num_layers: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=HIDDEN,
        n_layer=num_layers,
        n_head=2,
        n_positions=64,
        num_labels=3,
        pad_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return transformers.GPT2ForSequenceClassification(config).eval()


def distilbert(num_layers: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.DistilBertConfig(
        vocab_size=VOCAB, dim=HIDDEN, n_layers=num_layers, n_heads=2, hidden_dim=48, max_position_embeddings=64,
        num_labels=3, dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0,
    )
    return transformers.DistilBertForSequenceClassification(config).eval()


def albert(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.AlbertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, embedding_size=16, num_hidden_layers=3, num_attention_heads=2,
        intermediate_size=48, max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0,
    )
    return transformers.AlbertForSequenceClassification(config).eval()


def dataset(n: int, seed: int, token_types: bool = False) -> list[dict[str, object]]:
    """Random token ids (never the pad id 0) of lengths 3..20, 3 classes."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    for i in range(n):
        length = int(rng.integers(3, 21))
        row: dict[str, object] = {
            "input_ids": rng.integers(1, VOCAB, length).tolist(),
            "labels": int(rng.integers(0, 3)),
            "example_id": i,
        }
        if token_types:
            row["token_type_ids"] = [0] * (length // 2) + [1] * (length - length // 2)
        rows.append(row)
    return rows


def collate(rows: list[dict[str, object]]) -> dict[str, torch.Tensor]:
    """Dynamic right padding with pad id 0, like DataCollatorWithPadding."""
    width = max(len(r["input_ids"]) for r in rows)  # type: ignore[arg-type]
    out: dict[str, torch.Tensor] = {
        "input_ids": torch.zeros(len(rows), width, dtype=torch.long),
        "attention_mask": torch.zeros(len(rows), width, dtype=torch.long),
    }
    if "token_type_ids" in rows[0]:
        out["token_type_ids"] = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids = r["input_ids"]
        out["input_ids"][i, : len(ids)] = torch.tensor(ids)  # type: ignore[arg-type]
        out["attention_mask"][i, : len(ids)] = 1  # type: ignore[arg-type]
        if "token_type_ids" in r:
            out["token_type_ids"][i, : len(ids)] = torch.tensor(r["token_type_ids"])  # type: ignore[arg-type]
    out["labels"] = torch.tensor([r["labels"] for r in rows])
    out["example_id"] = torch.tensor([r["example_id"] for r in rows])
    return out


def loader(rows: list[dict[str, object]], batch_size: int = 8, shuffle: bool = True, seed: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(rows, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=gen)  # type: ignore[arg-type]


def freeze_prefix(model: nn.Module, layer_map: LayerMap, depth: int) -> None:
    """What the FreezeController does for bottom_n: no grad for the embedding side and blocks 0..depth-1."""
    for name in ["embeddings", "other", *(f"layer.{i}" for i in range(depth))]:
        if name in layer_map.names:
            for _, p in layer_map.group(name).params:
                p.requires_grad_(False)


def logits_by_id(runner: ForwardRunner, model: nn.Module, data: DataLoader, split: str = "train") -> torch.Tensor:
    """One pass of ``data`` through ``runner``; logits ordered by example id."""
    ids, out = [], []
    with torch.no_grad():
        for batch in data:
            out.append(runner.logits(model, batch, split))
            ids.append(batch["example_id"])
    order = torch.cat(ids).argsort()
    return torch.cat(out)[order]


@contextlib.contextmanager
def count_calls(modules: list[nn.Module]) -> Iterator[list[int]]:
    """Counts real executions of each module (a hook on a child: a replaced ``forward`` never reaches it)."""
    counts = [0] * len(modules)
    handles = []
    for i, module in enumerate(modules):
        child = next(iter(module.children()))

        def hook(_m: nn.Module, _a: object, _o: object, i: int = i) -> None:
            counts[i] += 1

        handles.append(child.register_forward_hook(hook))
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


def make_runner(layer_map: LayerMap, tmp_path: Path | None, **kwargs: object) -> CachedPrefixForward:
    options: dict[str, object] = {
        "split_keys": {"train": "data-v1", "eval": "eval-v1"},
        "cache_dtype": "float32",
        "cache_dir": tmp_path / "cache" if tmp_path is not None else None,
    }
    options.update(kwargs)
    return CachedPrefixForward(layer_map, **options)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _fresh_memory_cache() -> Iterator[None]:
    """The in-process LRU is shared by design; tests must not see each other's entries."""
    clear_memory_cache()
    yield
    clear_memory_cache()


# -- exactness --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("build", "depth", "token_types"),
    [
        (bert, 1, True),
        (bert, 4, True),
        (gpt2, 1, False),
        (gpt2, 3, False),
        (distilbert, 2, False),
    ],
)
def test_cached_logits_match_direct(build: Callable[[], nn.Module], depth: int, token_types: bool,
                                    tmp_path: Path) -> None:
    model = build()
    layer_map = discover_layers(model)
    freeze_prefix(model, layer_map, depth)
    rows = dataset(37, seed=1, token_types=token_types)
    expected = logits_by_id(DirectForward(), model, loader(rows, shuffle=False))

    runner = make_runner(layer_map, tmp_path)
    runner.set_prefix_depth(depth)
    blocks = layer_map.layer_modules(model)
    with count_calls(blocks[:depth]) as counts:
        cold = logits_by_id(runner, model, loader(rows, seed=1))
        assert counts == [len(loader(rows))] * depth  # the cold pass runs the prefix once per batch
        counts[:] = [0] * depth
        warm = logits_by_id(runner, model, loader(rows, seed=2))
        assert counts == [0] * depth  # the warm pass never runs a frozen block
    torch.testing.assert_close(cold, expected, **TOL)
    torch.testing.assert_close(warm, expected, **TOL)
    assert runner.stats["misses"] == 1 and runner.stats["served_batches"] == len(loader(rows))
    runner.close()


def test_float16_and_bfloat16_storage_are_close_and_compact(tmp_path: Path) -> None:
    model = bert(num_layers=2)
    layer_map = discover_layers(model)
    freeze_prefix(model, layer_map, 2)
    rows = dataset(20, seed=3)
    expected = logits_by_id(DirectForward(), model, loader(rows, shuffle=False))
    sizes = {}
    for dtype in ("float32", "float16", "bfloat16"):
        runner = make_runner(layer_map, None, cache_dtype=dtype, capture="target")
        runner.set_prefix_depth(2)
        logits_by_id(runner, model, loader(rows))
        warm = logits_by_id(runner, model, loader(rows, seed=5))
        torch.testing.assert_close(warm, expected, atol=5e-2, rtol=5e-2)
        sizes[dtype] = runner.stats["bytes_built"]
        runner.close()
    assert sizes["float16"] < 0.6 * sizes["float32"] and sizes["bfloat16"] == sizes["float16"]


# -- the training loop -------------------------------------------------------------------------------------------------
def train(model: nn.Module, strategy: object, runner: ForwardRunner, epochs: int = 3,
          on_epoch: Callable[[int], None] | None = None) -> list[dict[str, float]]:
    return run_loop(
        model, strategy, runner,
        loader(dataset(48, seed=7), batch_size=8, seed=11),
        loader(dataset(24, seed=8), batch_size=16, shuffle=False),
        LoopConfig(epochs=epochs, batch_size=8, eval_batch_size=16, scheduler="constant", divergence_factor=0.0),
        on_epoch=on_epoch,
    )


@pytest.mark.parametrize("n", [2, 4])
def test_training_bottom_n_matches_direct_and_skips_prefix(n: int, tmp_path: Path) -> None:
    direct = train(bert(), BottomN(n=n), DirectForward())

    model = bert()
    layer_map = discover_layers(model)
    runner = make_runner(layer_map, tmp_path, split_sizes={"train": 48, "eval": 24})
    per_epoch: list[list[int]] = []
    with count_calls(layer_map.layer_modules(model)[:n]) as counts:

        def snapshot(_epoch: int) -> None:
            per_epoch.append(list(counts))
            counts[:] = [0] * n

        cached = train(model, BottomN(n=n), runner, on_epoch=snapshot)
    assert_same_metrics(direct, cached)
    assert per_epoch[0] == [6 + 2] * n  # cold: 6 train + 2 eval batches ran the prefix
    assert per_epoch[1:] == [[0] * n, [0] * n]  # warm epochs: never
    assert runner.stats["built"] == [f"train@{d}" for d in range(1, n + 1)] + [f"eval@{d}" for d in range(1, n + 1)]
    assert runner.stats["build_seconds"] > 0 and runner.stats["bytes_built"] > 0


def test_gradual_unfreezing_matches_direct_and_reuses_shallower_depths(tmp_path: Path) -> None:
    # 3 layers: depth 3, 2, 1, 0 (direct), then the embeddings train (None)
    strategy = Gradual(unfreeze_every=1)
    direct = train(bert(num_layers=3), strategy, DirectForward(), epochs=5)
    model = bert(num_layers=3)
    runner = make_runner(discover_layers(model), tmp_path, split_sizes={"train": 48, "eval": 24})
    cached = train(model, strategy, runner, epochs=5)
    assert_same_metrics(direct, cached)
    # epoch 0 builds depths 1..3 for both splits; epochs 1 and 2 (depths 2, 1) are hits for both splits
    assert runner.stats["misses"] == 2 and runner.stats["hits"] == 4
    assert sorted(runner.stats["built"]) == sorted(f"{s}@{d}" for s in ("train", "eval") for d in (1, 2, 3))
    assert runner.stats["mode"] == "direct" and runner.stats["direct_batches"] > 0


def test_gradient_checkpointing_gets_the_same_gradients(tmp_path: Path) -> None:
    """Reentrant checkpointing drops the gradients of a block none of whose inputs requires grad: the cached input of
    the first trainable block must be a leaf that requires grad."""
    rows = dataset(16, seed=9)
    grads = {}
    for name in ("direct", "cached"):
        model = bert()
        model.activation_checkpointing_enable({"use_reentrant": True})
        layer_map = discover_layers(model)
        freeze_prefix(model, layer_map, 2)
        runner: ForwardRunner = DirectForward() if name == "direct" else make_runner(layer_map, tmp_path)
        runner.set_prefix_depth(2)
        batches = list(loader(rows, seed=3))
        if name == "cached":
            logits_by_id(runner, model.eval(), loader(rows))  # cold pass
        model.train()
        for module in [model.bert.embeddings, *layer_map.layer_modules(model)[:2]]:
            module.eval()  # frozen modules run in eval mode, as the FreezeController sets them
        loss = sum(nn.functional.cross_entropy(runner.logits(model, b, "train"), b["labels"]) for b in batches)
        loss.backward()  # type: ignore[union-attr]
        grads[name] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        assert all(g is not None and g.abs().sum() > 0 for g in grads[name].values())
    assert runner.stats["served_batches"] == len(batches)  # type: ignore[attr-defined]
    assert grads["direct"].keys() == grads["cached"].keys()
    for key, g in grads["direct"].items():
        torch.testing.assert_close(grads["cached"][key], g, **TOL)


# -- sharing across trials ---------------------------------------------------------------------------------------------
def test_second_trial_hits_the_disk_cache(tmp_path: Path) -> None:
    rows = dataset(30, seed=4)
    first = bert()
    layer_map = discover_layers(first)
    freeze_prefix(first, layer_map, 2)
    runner = make_runner(layer_map, tmp_path, split_sizes={"train": 30})
    runner.set_prefix_depth(2)
    logits_by_id(runner, first, loader(rows))
    runner.close()
    assert len(list((tmp_path / "cache").glob("*/meta.json"))) == 2  # depths 1 and 2
    assert not list((tmp_path / "cache").glob(".tmp-*"))
    clear_memory_cache()  # a new process: only the disk is shared

    second = bert()  # same checkpoint, new objects
    layer_map2 = discover_layers(second)
    freeze_prefix(second, layer_map2, 2)
    runner2 = make_runner(layer_map2, tmp_path, split_sizes={"train": 30})
    runner2.set_prefix_depth(2)
    with count_calls(layer_map2.layer_modules(second)[:2]) as counts:
        got = logits_by_id(runner2, second, loader(rows, seed=9))
    assert counts == [0, 0]
    assert runner2.stats["hits"] == 1 and runner2.stats["cache_hit"] and runner2.stats["cache_depth"] == 2
    torch.testing.assert_close(got, logits_by_id(DirectForward(), second, loader(rows)), **TOL)


def test_deeper_trial_reuses_shallower_depth_and_builds_only_the_rest(tmp_path: Path) -> None:
    rows = dataset(30, seed=5)
    shallow = bert()
    layer_map = discover_layers(shallow)
    freeze_prefix(shallow, layer_map, 1)
    runner = make_runner(layer_map, tmp_path, split_sizes={"train": 30})
    runner.set_prefix_depth(1)
    logits_by_id(runner, shallow, loader(rows))
    runner.close()

    deep = bert()
    layer_map2 = discover_layers(deep)
    freeze_prefix(deep, layer_map2, 3)
    runner2 = make_runner(layer_map2, tmp_path, split_sizes={"train": 30})
    runner2.set_prefix_depth(3)
    blocks = layer_map2.layer_modules(deep)
    with count_calls(blocks[:3]) as counts:
        cold = logits_by_id(runner2, deep, loader(rows, seed=2))
        assert counts[0] == 0 and counts[1] == counts[2] == len(loader(rows))  # block 0 from the cache
        warm = logits_by_id(runner2, deep, loader(rows, seed=3))
        assert counts[1] == counts[2] == len(loader(rows))  # unchanged: warm at depth 3
    assert runner2.stats["partial_hits"] == 1 and runner2.stats["cache_depth"] == 1
    assert runner2.stats["built"] == ["train@2", "train@3"]
    expected = logits_by_id(DirectForward(), deep, loader(rows))
    torch.testing.assert_close(cold, expected, **TOL)
    torch.testing.assert_close(warm, expected, **TOL)


# -- invalidation ------------------------------------------------------------------------------------------------------
def _one_trial(model: nn.Module, depth: int, tmp_path: Path, rows: list[dict[str, object]],
               **kwargs: object) -> CachedPrefixForward:
    layer_map = discover_layers(model)
    freeze_prefix(model, layer_map, depth)
    runner = make_runner(layer_map, tmp_path, split_sizes={"train": len(rows)}, **kwargs)
    runner.set_prefix_depth(depth)
    got = logits_by_id(runner, model, loader(rows))
    torch.testing.assert_close(got, logits_by_id(DirectForward(), model, loader(rows, shuffle=False)), **TOL)
    runner.close()
    return runner


def test_changed_prefix_weights_invalidate(tmp_path: Path) -> None:
    rows = dataset(20, seed=6)
    assert _one_trial(bert(), 2, tmp_path, rows).stats["misses"] == 1
    assert _one_trial(bert(), 2, tmp_path, rows).stats["hits"] == 1
    changed = bert()
    with torch.no_grad():
        changed.bert.encoder.layer[1].output.dense.weight.mul_(1.01)  # block 1 only: depth 1 stays valid
    stats = _one_trial(changed, 2, tmp_path, rows).stats
    assert stats["partial_hits"] == 1 and stats["cache_depth"] == 1 and stats["built"] == ["train@2"]
    other_seed = bert(seed=1)  # different embeddings: nothing is valid
    assert _one_trial(other_seed, 2, tmp_path, rows).stats["misses"] == 1
    # a head change does not matter
    head = bert()
    with torch.no_grad():
        head.classifier.weight.add_(1.0)
    assert _one_trial(head, 2, tmp_path, rows).stats["hits"] == 1


def test_changed_split_key_or_dtype_invalidates(tmp_path: Path) -> None:
    rows = dataset(20, seed=6)
    _one_trial(bert(), 2, tmp_path, rows)
    stats = _one_trial(bert(), 2, tmp_path, rows, split_keys={"train": "data-v1|max_length=16"}).stats
    assert stats["misses"] == 1
    assert _one_trial(bert(), 2, tmp_path, rows, cache_dtype="float16").stats["misses"] == 1


def test_changed_depth_invalidates(tmp_path: Path) -> None:
    rows = dataset(20, seed=6)
    assert _one_trial(bert(), 2, tmp_path, rows, capture="target").stats["built"] == ["train@2"]
    assert _one_trial(bert(), 1, tmp_path, rows, capture="target").stats["misses"] == 1  # no depth-1 entry
    stats = _one_trial(bert(), 3, tmp_path, rows, capture="target").stats  # depth 2 reused, 3 built
    assert stats["partial_hits"] == 1 and stats["cache_depth"] == 2 and stats["built"] == ["train@3"]


def test_stale_split_key_never_serves_other_tokens(tmp_path: Path) -> None:
    model = bert(num_layers=2)
    layer_map = discover_layers(model)
    freeze_prefix(model, layer_map, 2)
    runner = make_runner(layer_map, tmp_path, split_sizes={"train": 20})
    runner.set_prefix_depth(2)
    logits_by_id(runner, model, loader(dataset(20, seed=1)))
    other = dataset(20, seed=2)  # retokenised data under the same key
    got = logits_by_id(runner, model, loader(other))
    torch.testing.assert_close(got, logits_by_id(DirectForward(), model, loader(other)), **TOL)
    assert runner.stats["fallback_batches"] == len(loader(other))


def test_fingerprints_ignore_padding() -> None:
    rows = dataset(6, seed=3)
    a = collate(rows)
    b = collate([*rows, {"input_ids": [1] * 30, "labels": 0, "example_id": 6}])  # longer padding
    np.testing.assert_array_equal(
        token_fingerprints(a, a["attention_mask"].bool()), token_fingerprints(b, b["attention_mask"].bool())[:6]
    )


# -- storage -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_dir", [True, False])
def test_tiny_budget_spills_and_serves_from_mmap(with_dir: bool, tmp_path: Path) -> None:
    model = bert(num_layers=3)
    layer_map = discover_layers(model)
    freeze_prefix(model, layer_map, 3)
    rows = dataset(40, seed=2)
    runner = make_runner(layer_map, tmp_path if with_dir else None, memory_budget_mb=0.002)  # ~2 kB
    runner.set_prefix_depth(3)
    cold = logits_by_id(runner, model, loader(rows))
    runner._end_pass("train", pass_ended=True)
    state = runner._states["train"]
    assert state.serve is not None and not state.serve.in_ram  # a memmap
    with count_calls(layer_map.layer_modules(model)) as counts:
        warm = logits_by_id(runner, model, loader(rows, seed=4))
    assert counts == [0, 0, 0]
    expected = logits_by_id(DirectForward(), model, loader(rows, shuffle=False))
    torch.testing.assert_close(cold, expected, **TOL)
    torch.testing.assert_close(warm, expected, **TOL)
    runner.close()
    if with_dir:
        assert len(list((tmp_path / "cache").glob("*/tokens.npy"))) == 3
        assert not list((tmp_path / "cache").glob(".tmp-*")) and not list((tmp_path / "cache").rglob("*.spill"))


def test_publish_is_first_writer_wins(tmp_path: Path) -> None:
    index = np.zeros((1, 3), np.int64)
    meta = {"version": 1, "num_tokens": 1}
    for value in (1.0, 2.0):
        tmp = tmp_path / f".tmp-{value}"
        tmp.mkdir()
        publish(tmp_path, "k", tmp, meta, index, np.full((1, 4), value, np.float32))
    assert np.load(tmp_path / "k" / "tokens.npy")[0, 0] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


def test_stale_temporary_folders_are_removed(tmp_path: Path) -> None:
    import os

    old, fresh = tmp_path / ".tmp-1-old", tmp_path / ".tmp-2-fresh"
    for folder in (old, fresh):
        folder.mkdir()
        (folder / "tokens.spill").write_bytes(b"x")
    past = time.time() - 2 * 24 * 3600
    for path in (old / "tokens.spill", old):
        os.utime(path, (past, past))
    assert remove_stale_tmp(tmp_path) == 1
    assert not old.exists() and fresh.exists()


def test_incomplete_capture_is_never_used(tmp_path: Path) -> None:
    model = bert(num_layers=2)
    layer_map = discover_layers(model)
    freeze_prefix(model, layer_map, 2)
    rows = dataset(32, seed=1)
    runner = make_runner(layer_map, tmp_path, split_sizes={"train": 32})
    runner.set_prefix_depth(2)
    with torch.no_grad():
        for i, batch in enumerate(loader(rows)):
            runner.logits(model, batch, "train")
            if i == 1:
                break  # half a pass, then the trial ends
    runner.close()
    assert not list((tmp_path / "cache").iterdir())
    again = make_runner(layer_map, tmp_path, split_sizes={"train": 32})
    again.set_prefix_depth(2)
    logits_by_id(again, model, loader(rows))
    assert again.stats["misses"] == 1


# -- fall back to a direct forward -------------------------------------------------------------------------------------
def test_albert_shared_layers_run_direct(tmp_path: Path) -> None:
    model = albert()
    layer_map = discover_layers(model)
    assert layer_map.shared_layers
    freeze_prefix(model, layer_map, 1)
    runner = make_runner(layer_map, tmp_path)
    runner.set_prefix_depth(1)
    rows = dataset(12, seed=1)
    got = logits_by_id(runner, model, loader(rows))
    torch.testing.assert_close(got, logits_by_id(DirectForward(), model, loader(rows)), **TOL)
    assert runner.stats["mode"] == "direct" and "shared" in runner.stats["reason"]
    assert runner.stats["direct_batches"] == len(loader(rows))
    assert not list((tmp_path / "cache").glob("*/meta.json"))


@pytest.mark.parametrize("case", ["frozen_dropout", "none", "zero", "trainable_prefix", "train_mode"])
def test_direct_fallbacks(case: str, tmp_path: Path) -> None:
    model = bert(num_layers=2)
    layer_map = discover_layers(model)
    freeze_prefix(model, layer_map, 2)
    runner = make_runner(layer_map, tmp_path, frozen_dropout=case == "frozen_dropout")
    depth = {"none": None, "zero": 0}.get(case, 2)
    if case == "trainable_prefix":
        model.bert.encoder.layer[0].output.dense.weight.requires_grad_(True)
    runner.set_prefix_depth(depth)
    if case == "train_mode":
        model.train()  # dropout p=0 here, but a prefix module in training mode is refused on principle
    rows = dataset(12, seed=1)
    logits_by_id(runner, model, loader(rows))
    logits_by_id(runner, model, loader(rows))
    assert runner.stats["direct_batches"] == 2 * len(loader(rows))
    assert runner.stats["built"] == [] and runner.stats["served_batches"] == 0
    runner.close()


def test_requires_grad_flip_after_set_depth_is_caught(tmp_path: Path) -> None:
    model = bert(num_layers=2)
    layer_map = discover_layers(model)
    freeze_prefix(model, layer_map, 2)
    runner = make_runner(layer_map, tmp_path)
    runner.set_prefix_depth(2)
    rows = dataset(12, seed=1)
    logits_by_id(runner, model, loader(rows))
    model.bert.embeddings.word_embeddings.weight.requires_grad_(True)
    logits_by_id(runner, model, loader(rows))
    assert runner.stats["direct_batches"] == len(loader(rows))


def test_completeness_without_split_sizes_is_inferred_conservatively(tmp_path: Path) -> None:
    model = bert(num_layers=2)
    layer_map = discover_layers(model)
    freeze_prefix(model, layer_map, 2)
    train_rows, eval_rows = dataset(24, seed=1), dataset(24, seed=2)
    runner = make_runner(layer_map, tmp_path, capture="target")  # no split_sizes
    runner.set_prefix_depth(2)
    logits_by_id(runner, model, loader(train_rows))
    assert runner.stats["built"] == []  # the pass may not be over yet
    second = logits_by_id(runner, model, loader(train_rows, seed=4))  # a repeated id: the first pass was complete
    assert runner.stats["built"] == ["train@2"] and runner.stats["served_batches"] == len(loader(train_rows))
    torch.testing.assert_close(second, logits_by_id(DirectForward(), model, loader(train_rows)), **TOL)
    with torch.no_grad():
        for i, batch in enumerate(loader(eval_rows, shuffle=False)):
            runner.logits(model, batch, "eval")
            if i == 1:
                break  # a partial, contiguous pass (ids 0..15) ...
    runner.close()  # ... that close() must not take for complete
    assert runner.stats["built"] == ["train@2"]


def test_sparse_example_ids_of_a_fold_subset(tmp_path: Path) -> None:
    """A cross-validation fold keeps the example ids of the full split: ids are sparse, split_sizes is the fold size."""
    model = bert(num_layers=2)
    layer_map = discover_layers(model)
    freeze_prefix(model, layer_map, 2)
    fold = [r for r in dataset(30, seed=1) if int(r["example_id"]) % 3 != 0]  # type: ignore[call-overload]
    runner = make_runner(layer_map, tmp_path, split_sizes={"train": len(fold)})
    runner.set_prefix_depth(2)
    logits_by_id(runner, model, loader(fold))
    assert runner.stats["built"] == ["train@1", "train@2"]
    warm = logits_by_id(runner, model, loader(fold, seed=5))
    assert runner.stats["served_batches"] == len(loader(fold))
    torch.testing.assert_close(warm, logits_by_id(DirectForward(), model, loader(fold)), **TOL)

