""":class:`CachedPrefixForward`: the forward runner that serves a frozen prefix from the cache (see
:mod:`sweeps.cache` for the design).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from strategies import LayerMap
from strategies.base import embedding_side
from strategies.layers import layer_name
from sweeps.cache.capture import CaptureArena, _SplitCapture
from sweeps.cache.keys import (
    FORMAT_VERSION,
    _precision_key,
    entry_key,
    model_fingerprint,
    prefix_buffer_hashes,
    prefix_weight_hashes,
)
from sweeps.cache.layout import TOKENS, BatchLayout, batch_layout, layout_name
from sweeps.cache.patch import ABSENT, live_forward, served_forward
from sweeps.cache.store import (
    _LRU,
    CACHE_DTYPES,
    CacheEntry,
    load_entry,
    remove_stale_tmp,
)
from sweeps.data.batch import logits_of, model_inputs

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _SplitState:
    """What one split does at the current depth: serve depth ``serve_depth`` from ``serve`` and capture ``capture``."""

    keys: dict[int, str]
    layout: str
    serve: CacheEntry | None = None
    capture: _SplitCapture | None = None
    disabled: str | None = None

    @property
    def serve_depth(self) -> int:
        return self.serve.depth if self.serve is not None else 0


class CachedPrefixForward:
    """A :class:`~sweeps.train.forward.ForwardRunner` that serves the frozen prefix (embedding side + N lowest blocks)
    from a cache shared across epochs, trials and worker processes. See :mod:`sweeps.cache` for the design.

    Args:
        layer_map: the model's layer groups (:func:`strategies.discover_layers`); the prefix is read from it.
        split_keys: one key per split name ("train", "eval") that identifies its data and tokenisation (dataset
            fingerprint, tokenizer, max length, ...). A split without a key is never cached.
        cache_dir: folder of the on-disk store shared by trials and processes (the study's ``cache/``); ``None``
            keeps entries in this process only (in RAM, or memory-mapped from a temporary folder beyond the budget).
        cache_dtype: storage dtype of the activations: ``float16`` (default), ``bfloat16`` or ``float32`` (exact).
        memory_budget_mb: RAM for finished entries (process-wide LRU) and, separately, for the capture in progress;
            beyond it entries are memory-mapped and captures spill to disk.
        split_sizes: number of examples per split; makes "this capture saw every example" exact (recommended).
            ``example_id`` values must be distinct within a split but need not be ``0 … n-1`` (CV folds).
        capture: ``"all"`` stores every depth up to N in the cold pass (gradual unfreezing and shallower trials are
            then warm), ``"target"`` stores depth N only.
        frozen_dropout: the value given to :class:`~strategies.optim.FreezeController`; ``True`` disables caching.
        gradient_checkpointing: make the first trainable block's input a leaf that requires grad (reentrant
            checkpointing drops parameter gradients otherwise). ``None``: detect from the blocks' flags.

    ``stats`` (for the trial's logs): ``hits`` / ``partial_hits`` / ``misses`` count split resolutions (one per split
    and depth change: the deepest cached depth was N / between 1 and N-1 / absent); ``cache_hit`` and ``cache_depth``
    describe the latest resolution of the train split (served from depth ``cache_depth``; hit when that is N);
    ``built`` lists the entries this runner built (``"train@3"``), ``bytes_built`` their size, ``build_seconds`` the
    time spent in live frozen blocks and capture copies; ``served_batches`` / ``capture_batches`` / ``live_batches`` /
    ``direct_batches`` / ``fallback_batches`` count batches by path; ``mode`` and ``reason`` say why caching is off.
    """

    def __init__(
        self,
        layer_map: LayerMap,
        *,
        split_keys: Mapping[str, str],
        cache_dir: str | os.PathLike[str] | None = None,
        cache_dtype: str = "float16",
        memory_budget_mb: float = 2048.0,
        split_sizes: Mapping[str, int] | None = None,
        capture: str = "all",
        frozen_dropout: bool = False,
        gradient_checkpointing: bool | None = None,
    ) -> None:
        if cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"cache_dtype: {cache_dtype!r} is not one of {sorted(CACHE_DTYPES)}")
        if capture not in ("all", "target"):
            raise ValueError(f"capture: {capture!r} must be 'all' or 'target'")
        if memory_budget_mb < 0:
            raise ValueError("memory_budget_mb must be ≥ 0")
        self.layer_map = layer_map
        self.split_keys = dict(split_keys)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache_dtype = cache_dtype
        self.budget = int(memory_budget_mb * 2**20)
        self.split_sizes = dict(split_sizes or {})
        self.capture_mode = capture
        self.frozen_dropout = frozen_dropout
        self.gradient_checkpointing = gradient_checkpointing
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_tmp(self.cache_dir)
        self.arena = CaptureArena(self.budget, self.cache_dir)
        self.depth: int | None = None
        self.reason: str | None = "no prefix depth set yet"
        self._weights: dict[int, str] = {}
        self._prefix_params: list[nn.Parameter] = []
        self._states: dict[str, _SplitState] = {}
        self._last_split: str | None = None
        self._model_ref: weakref.ReferenceType[nn.Module] | None = None
        self._model_fp = ""
        self._prefix_modules: list[nn.Module] = []
        self._buffers: dict[int, str] = {}
        self._leaf_grad = False
        self._warned: set[str] = set()
        self.stats: dict[str, Any] = {
            "hits": 0,
            "partial_hits": 0,
            "misses": 0,
            "built": [],
            "bytes_built": 0,
            "build_seconds": 0.0,
            "served_batches": 0,
            "capture_batches": 0,
            "live_batches": 0,
            "direct_batches": 0,
            "fallback_batches": 0,
            "cache_hit": False,
            "cache_depth": 0,
            "mode": "direct",
            "reason": self.reason,
        }

    # -- ForwardRunner -------------------------------------------------------------------------------------------------
    def set_prefix_depth(self, depth: int | None) -> None:
        """Adopt a new frozen-prefix depth: decide cached vs direct, hash the prefix weights of every depth ≤ N."""
        reason = self._direct_reason(depth)
        weights: dict[int, str] = {}
        if reason is None:
            assert depth is not None
            weights = prefix_weight_hashes(self.layer_map, depth)
        if depth == self.depth and weights == self._weights and reason == self.reason:
            return  # e.g. only a learning-rate multiplier changed: keep captures in progress
        self._end_passes()
        self._discard_states()
        self.depth, self.reason, self._weights = depth, reason, weights
        self._prefix_params = (
            [p for name in self._prefix_group_names(depth or 0) for _, p in self.layer_map.group(name).params]
            if reason is None
            else []
        )
        self._model_ref = None  # prefix modules are re-resolved against the model on the next batch
        self.stats["mode"] = "direct" if reason else "cache"
        self.stats["reason"] = reason

    def logits(self, model: nn.Module, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        """Logits for ``batch``: direct, cold (live prefix, captured) or warm (prefix from the cache)."""
        if split != self._last_split and self._last_split is not None:
            self._end_pass(self._last_split, pass_ended=True)
        self._last_split = split
        reason = self._batch_direct_reason(model, batch, split)
        if reason is not None:
            if reason not in self._warned and self.reason is None:
                self._warned.add(reason)
                log.warning("activation cache: direct forward for split %r: %s", split, reason)
            self.stats["direct_batches"] += 1
            return logits_of(model(**model_inputs(batch)))
        state = self._state(split, batch)
        if state.disabled is not None:
            self.stats["direct_batches"] += 1
            return logits_of(model(**model_inputs(batch)))
        if layout_name(batch) != state.layout:
            self._note_fallback(split, f"a batch of another layout in a split cached as {state.layout}")
            return logits_of(model(**model_inputs(batch)))
        layout = batch_layout(batch)
        ids = batch["example_id"].detach().cpu().numpy().astype(np.int64)
        return self._forward(model, batch, split, state, layout, ids)

    def close(self) -> None:
        """Publish captures that are complete, drop incomplete ones and temporary files, release references."""
        self._end_passes()
        self._discard_states()
        self.arena.close()

    # -- decisions -----------------------------------------------------------------------------------------------------
    def _prefix_group_names(self, depth: int) -> list[str]:
        names = [n for n in self.layer_map.names if n in embedding_side(self.layer_map)]
        return names + [layer_name(i) for i in range(depth)]

    def _direct_reason(self, depth: int | None) -> str | None:
        """Why this depth cannot be cached at all (``None``: it can)."""
        if depth is None:
            return "the embedding side trains (no frozen prefix)"
        if depth <= 0:
            return "no block is frozen"
        if depth > self.layer_map.num_layers:
            raise ValueError(f"prefix depth {depth} > number of layers {self.layer_map.num_layers}")
        if self.layer_map.shared_layers:
            return "shared layers (ALBERT): one block runs at several depths, there is no prefix to cache"
        if self.frozen_dropout:
            return "frozen_dropout is on: the frozen prefix is stochastic"
        trainable = [
            pname
            for name in self._prefix_group_names(depth)
            for pname, p in self.layer_map.group(name).params
            if p.requires_grad
        ]
        if trainable:
            return f"prefix parameters require grad (e.g. {trainable[0]}): the prefix is not frozen"
        return None

    def _batch_direct_reason(self, model: nn.Module, batch: Mapping[str, torch.Tensor], split: str) -> str | None:
        """Per-batch checks: cheap, and they catch a plan change that bypassed :meth:`set_prefix_depth`.

        A prefix module found in training mode turns the cache off for the rest of this depth (``self.reason``), and
        drops what was built: BatchNorm in training mode (``train_bn``) has just moved its running statistics, so even
        an evaluation pass in eval mode afterwards would not match activations captured before.
        """
        if self.reason is not None:
            return self.reason
        if split not in self.split_keys:
            return f"split {split!r} has no entry in split_keys"
        if "example_id" not in batch:
            return "the batch has no example_id"
        if layout_name(batch) is None:
            return "the batch has neither input_ids nor pixel_values"
        self._bind(model)
        if any(p.requires_grad for p in self._prefix_params):
            return "a prefix parameter requires grad (the plan changed without set_prefix_depth)"
        training = next((m for m in self._prefix_modules if m.training), None)
        if training is not None:
            self._discard_states()
            self._last_split = split
            self.reason = (
                f"a prefix module ({type(training).__name__}) is in training mode (dropout/BatchNorm would make the "
                "prefix stochastic or change its statistics; with the FreezeController this means "
                "frozen_dropout/train_bn)"
            )
            self.stats["mode"], self.stats["reason"] = "direct", self.reason
            log.warning("activation cache: off for this prefix depth: %s", self.reason)
            self._warned.add(self.reason)
            return self.reason
        return None

    def _bind(self, model: nn.Module) -> None:
        """Resolve prefix modules against ``model`` once per depth; refuse a model the layer map was not built from."""
        if self._model_ref is not None and self._model_ref() is model:  # a weakref: ids are reused after GC
            return
        assert self.depth is not None
        blocks = self.layer_map.layer_modules(model)
        first = next(iter(blocks[0].parameters()), None)
        mapped = self.layer_map.group(layer_name(0)).params
        if first is not None and mapped and first is not mapped[0][1]:
            raise ValueError("activation cache: the model is not the one the layer map was discovered on")
        modules: list[nn.Module] = []
        for name in self._prefix_group_names(self.depth):
            for path in self.layer_map.group(name).module_paths:
                with contextlib.suppress(AttributeError):
                    modules.extend(model.get_submodule(path).modules())
        self._prefix_modules = modules
        self._buffers = prefix_buffer_hashes(model, self.layer_map, self.depth)
        self._model_fp = model_fingerprint(model)
        self._leaf_grad = (
            self.gradient_checkpointing
            if self.gradient_checkpointing is not None
            else any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())
        )
        self._model_ref = weakref.ref(model)

    def _state(self, split: str, batch: Mapping[str, torch.Tensor]) -> _SplitState:
        """The split's state, resolved on its first batch at this depth (the autocast state is known only here)."""
        state = self._states.get(split)
        if state is not None:
            return state
        assert self.depth is not None
        name = layout_name(batch)
        assert name is not None
        device = batch["input_ids" if name == TOKENS else "pixel_values"].device
        precision = _precision_key(device)
        keys = {
            d: entry_key(
                self._model_fp, self._prefix_hash(d), self.split_keys[split], d, self.cache_dtype, precision
            )
            for d in range(1, self.depth + 1)
        }
        state = _SplitState(keys=keys, layout=name)
        for d in range(self.depth, 0, -1):
            entry = self._find(keys[d])
            if entry is not None and entry.layout == name:  # another layout under one key would be a split-key bug
                state.serve = entry
                break
        found = state.serve_depth
        if found == self.depth:
            self.stats["hits"] += 1
        elif found:
            self.stats["partial_hits"] += 1
        else:
            self.stats["misses"] += 1
        if found < self.depth:
            depths = list(range(found + 1, self.depth + 1)) if self.capture_mode == "all" else [self.depth]
            state.capture = _SplitCapture(self.arena, split, depths, self.split_sizes.get(split))
        if split == "train":
            self.stats["cache_hit"] = found == self.depth
            self.stats["cache_depth"] = found
        self._states[split] = state
        return state

    def _prefix_hash(self, depth: int) -> str:
        """Weights and buffers (BatchNorm statistics) of the prefix of ``depth`` blocks."""
        return f"{self._weights[depth]}+{self._buffers[depth]}"

    def _find(self, key: str) -> CacheEntry | None:
        entry = _LRU.get(key)
        if entry is not None:
            return entry
        if self.cache_dir is None or not (self.cache_dir / key / "meta.json").exists():
            return None
        entry = load_entry(self.cache_dir / key, max(self.budget - _LRU.used(), 0))
        if entry is not None:
            _LRU.put(entry, self.budget)
        return entry

    # -- passes --------------------------------------------------------------------------------------------------------
    def _end_pass(self, split: str, pass_ended: bool) -> None:
        """A pass over ``split`` may have ended: publish its capture if it is complete."""
        state = self._states.get(split)
        if state is not None and state.capture is not None and state.capture.complete(pass_ended):
            self._finish(state, state.capture)

    def _end_passes(self) -> None:
        """At a depth change or close: the passes of every split but the one in progress have ended. The split in
        progress may be mid-pass (a stepwise plan change), so without a known size its capture is dropped."""
        for split in list(self._states):
            self._end_pass(split, pass_ended=split != self._last_split)

    def _discard_states(self) -> None:
        for state in self._states.values():
            if state.capture is not None:
                state.capture.release()
        self._states = {}
        self._last_split = None

    def _finish(self, state: _SplitState, capture: _SplitCapture) -> None:
        """Turn a complete capture into entries (one per depth), publish them, and serve the deepest from now on."""
        index = capture.index()
        for depth in capture.depths:
            sink = capture.sinks[depth]
            assert sink.format is not None and sink.hidden is not None
            meta = {
                "version": FORMAT_VERSION,
                "key": state.keys[depth],
                "depth": depth,
                "split": capture.split,
                "split_key": self.split_keys[capture.split],
                "weights": self._prefix_hash(depth),
                "model": self._model_fp,
                "cache_dtype": self.cache_dtype,
                "activation_dtype": sink.activation_dtype,
                "layout": state.layout,
                "format": [sink.format.kind, sink.format.length],
                "stored": list(sink.format.stored),
                "item_shapes": sink.item_shapes,
                "hidden": sink.hidden,
                "num_examples": len(index),
                "num_tokens": capture.num_tokens,
                "created": time.time(),
            }
            entry = sink.materialise(state.keys[depth], index, meta)
            sink.release()
            _LRU.put(entry, self.budget)
            self.stats["built"].append(f"{capture.split}@{depth}")
            self.stats["bytes_built"] += entry.nbytes
            if depth == self.depth:
                state.serve = entry
        state.capture = None
        if state.serve is None or state.serve.depth != self.depth:  # cannot happen; never serve a partial prefix
            state.disabled = "capture finished without the target depth"

    # -- the forward ---------------------------------------------------------------------------------------------------
    def _forward(
        self,
        model: nn.Module,
        batch: dict[str, torch.Tensor],
        split: str,
        state: _SplitState,
        layout: BatchLayout,
        ids: np.ndarray,
    ) -> torch.Tensor:
        assert self.depth is not None
        lengths, fps = layout.lengths, layout.fingerprints
        capture = state.capture
        if capture is not None:
            rows_new = capture.new_rows(ids)
            if not rows_new.all():
                # an id seen earlier in this capture: the previous pass ended
                self._end_pass(split, pass_ended=True)
                capture = state.capture
                if capture is not None:
                    rows_new = capture.new_rows(ids)
        serve_rows = None
        if state.serve is not None:
            serve_rows = state.serve.lookup(ids, lengths, fps)
            if serve_rows is None:
                self._note_fallback(split, "examples missing from the cache or with different inputs (split key?)")
                return logits_of(model(**model_inputs(batch)))
        capture_rows = None
        if capture is not None:
            capture.staged = {}  # a forward that raised earlier must not leave half a batch behind
            if rows_new.any():
                capture_rows = torch.from_numpy(rows_new).to(layout.device)
        live_from = state.serve_depth
        leaf_grad = self._leaf_grad and torch.is_grad_enabled()
        cached = state.serve.served(serve_rows, layout) if state.serve is not None and serve_rows is not None else None
        if cached is not None and leaf_grad and live_from == self.depth:
            for tensor in cached:
                tensor.requires_grad_(tensor.is_floating_point())
        with self._patched(model, state, cached, live_from, capture if capture_rows is not None else None,
                           capture_rows, layout, leaf_grad):
            out = logits_of(model(**model_inputs(batch)))
        if capture is not None and capture_rows is not None:
            keep = rows_new
            capture.commit(ids[keep], lengths[keep], fps[keep])
            self.stats["capture_batches"] += 1
            if capture.invalid is not None:
                log.warning("activation cache: capture of split %r abandoned: %s", split, capture.invalid)
                capture.release()
                state.capture = None
                state.disabled = capture.invalid
            elif capture.size is not None and capture.complete(pass_ended=False):
                self._finish(state, capture)
        elif live_from == self.depth:
            self.stats["served_batches"] += 1
        else:
            self.stats["live_batches"] += 1  # prefix (partly) live, nothing new to capture
        return out

    def _note_fallback(self, split: str, why: str) -> None:
        self.stats["fallback_batches"] += 1
        if why not in self._warned:
            self._warned.add(why)
            log.warning("activation cache: direct forward for a batch of split %r: %s", split, why)

    @contextlib.contextmanager
    def _patched(
        self,
        model: nn.Module,
        state: _SplitState,
        cached: list[torch.Tensor] | None,
        live_from: int,
        capture: _SplitCapture | None,
        capture_rows: torch.Tensor | None,
        layout: BatchLayout,
        leaf_grad: bool,
    ) -> Iterator[None]:
        """Replace the prefix blocks' ``forward`` on the instance for one model call; always restored."""
        assert self.depth is not None
        blocks = self.layer_map.layer_modules(model)
        saved: list[tuple[nn.Module, Any]] = []
        try:
            for i in range(self.depth):
                block = blocks[i]
                saved.append((block, block.__dict__.get("forward", ABSENT)))
                if i < live_from:
                    assert cached is not None and state.serve is not None
                    block.forward = served_forward(state.serve.block_format, cached)
                else:
                    block.forward = live_forward(
                        block.forward,
                        i + 1,
                        capture,
                        capture_rows,
                        layout,
                        leaf_grad=leaf_grad and i == self.depth - 1,
                        cache_dtype=self.cache_dtype,
                        stats=self.stats,
                    )
            yield
        finally:
            for block, previous in reversed(saved):
                if previous is ABSENT:
                    block.__dict__.pop("forward", None)
                else:
                    block.forward = previous
