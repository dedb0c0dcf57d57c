"""Serve a frozen prefix's activations from a cache, so that later epochs (and later trials) skip it.

Why: with ``bottom_n``, linear probes and gradual unfreezing, the embedding side and the N lowest blocks never change
during a trial, and every trial of a study starts from the same checkpoint. Recomputing those blocks every epoch, in
every trial, is most of the work of a shallow fine-tune. :class:`CachedPrefixForward` is a
:class:`~sweeps.forward.ForwardRunner` that computes the prefix once, keeps the output of each frozen depth per
example, and afterwards runs only the trainable top.

How a batch is served
    The model is always called as a whole (``model(**inputs)``), so the base model's attention-mask, position and
    embedding code runs normally (the embedding module is cheap and its output is simply ignored). For the duration of
    the call, the frozen blocks' ``forward`` is replaced on the instance and restored in a ``finally``:

    * blocks ``0 … d-1`` (``d`` = the deepest cached depth) return the cached hidden states of depth ``d``, padded back
      to this batch's length (zeros at padding) and wrapped in the format the block returned when they were captured
      (a Tensor for transformers 5.x blocks, or a tuple whose extra items were ``None``). The lower blocks return the
      same tensor: their output is never read, because the next block is patched as well;
    * blocks ``d … N-1`` run live under ``torch.no_grad()`` and their outputs are captured (depths ``d+1 … N`` with
      ``capture="all"``, only ``N`` with ``capture="target"``);
    * blocks ``N …`` and the head run unchanged, with autograd.

    Padding is stripped with ``attention_mask`` at capture (ragged storage). Non-padding positions never read padding
    positions (they are masked out of attention), so zeros at padding give the same logits as the garbage a live
    prefix leaves there, for every head that pools from real tokens (CLS, first token, last non-pad token) — which is
    every transformers ``*ForSequenceClassification`` head. A custom head that averages over padding without the mask
    would see a difference; such a head depends on the batch's padding anyway.

Correctness rules (never silently wrong)
    The runner behaves exactly like :class:`~sweeps.forward.DirectForward` when: the depth is ``None``/0 (the embedding
    side trains, or no block is frozen); the layer map has ``shared_layers`` (ALBERT: one block object runs at every
    depth, so "block i" is not a prefix); ``frozen_dropout`` is on (a stochastic prefix cannot be cached); a prefix
    parameter requires grad; a prefix module is in training mode (dropout or BatchNorm would make it stochastic or
    stateful); a split has no key in ``split_keys``; the batch has no ``example_id``; or a block's output format
    cannot be reproduced. The checks that can change between batches (modes, ``requires_grad``) run on every batch.
    Each cached example also stores its token count and a fingerprint of its token ids; a batch whose examples are
    missing or whose tokens differ (a wrong split key) is computed directly and counted in ``stats``.

Keys and storage
    An entry is one (prefix weights, split data, depth, storage dtype, model architecture, compute precision). The
    weights part chains :func:`strategies.optim.checksum` of the embedding side and of blocks ``0 … d-1``, so a deeper
    prefix shares the shallower entries, and any change of a prefix weight changes the key. The split key is the
    caller's (dataset, tokenizer, max length …) string. Entries are ragged: all tokens concatenated in capture order
    (``tokens.npy``, ``(num_tokens, hidden)``) plus an ``index.npy`` of ``(start, length, fingerprint)`` per example id.

    Entries are kept in a process-wide LRU in RAM up to ``memory_budget_mb``; larger ones are memory-mapped ``.npy``
    files. With ``cache_dir`` every finished entry is also published to ``cache_dir/<key>/`` — written in a temporary
    folder, fsynced, then ``os.replace``-d into place, so concurrent worker processes see either nothing or a whole
    entry; if two processes build the same entry the second one's copy is discarded. A capture that grows beyond the
    budget spills its tokens to a file in the same temporary folder, so studies whose activations do not fit in RAM
    work too. Only a capture in which every example id of the split was seen becomes an entry: with ``split_sizes``
    that is exact; without it, a pass is taken as complete when ids ``0 … max`` were all seen and the pass visibly
    ended (a repeated id, or a batch of another split); the capture of the split in progress at a depth change or at
    :meth:`~CachedPrefixForward.close` is then dropped (it may be mid-pass). The per-batch id check keeps even a wrong
    inference (``drop_last`` dropping exactly the highest ids) from producing wrong logits.

Which depths are captured
    ``capture="all"`` (default) stores every depth ``d+1 … N`` in the cold pass. It costs N× the disk/RAM of one depth,
    and buys: gradual unfreezing (the prefix shrinks top-down, one block per stage) is warm at every stage, and other
    trials with fewer frozen blocks hit the cache. ``capture="target"`` stores depth N only (for big models/datasets).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from strategies.base import embedding_side
from strategies.layers import LayerMap, layer_name
from strategies.optim import checksum
from sweeps.forward import model_inputs

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

# storage dtype name → (torch dtype the activations are rounded to, numpy dtype of the stored bytes).
# numpy has no bfloat16: its bits are stored as int16 and viewed back in torch.
CACHE_DTYPES: dict[str, tuple[torch.dtype, np.dtype[Any]]] = {
    "float16": (torch.float16, np.dtype(np.float16)),
    "bfloat16": (torch.bfloat16, np.dtype(np.int16)),
    "float32": (torch.float32, np.dtype(np.float32)),
}
_TORCH_VIEW = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}

# Config fields that cannot change a frozen prefix's output (labels, the head, switches of what is returned, dropout:
# the prefix runs in eval mode, which is checked on every batch). Leaving them out lets trials that vary them share.
_CONFIG_IGNORED = {
    "id2label",
    "label2id",
    "num_labels",
    "problem_type",
    "architectures",
    "transformers_version",
    "_name_or_path",
    "name_or_path",
    "finetuning_task",
    "return_dict",
    "output_attentions",
    "output_hidden_states",
    "use_cache",
    "torch_dtype",
    "dtype",
}

_MIX = tuple(np.uint64(k) for k in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93))


# ---------------------------------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BlockFormat:
    """What a block returned, so a cached tensor can be handed to the encoder loop in the same shape.

    Only formats that can be rebuilt from the hidden state alone are supported: a Tensor, or a tuple whose items after
    the first are ``None``. Anything else (attention weights, a legacy KV cache tuple) disables caching.
    """

    kind: str  # "tensor" | "tuple"
    length: int = 1

    def wrap(self, hidden: torch.Tensor) -> Any:
        return hidden if self.kind == "tensor" else (hidden, *([None] * (self.length - 1)))

    @staticmethod
    def of(output: Any) -> BlockFormat | None:
        if isinstance(output, torch.Tensor):
            return BlockFormat("tensor")
        if (
            type(output) is tuple
            and output
            and isinstance(output[0], torch.Tensor)
            and all(item is None for item in output[1:])
        ):
            return BlockFormat("tuple", len(output))
        return None


def _hidden_of(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def token_fingerprints(batch: Mapping[str, torch.Tensor], mask: torch.Tensor) -> np.ndarray:
    """Per-example 64-bit fingerprint of the (unpadded) token ids and token types, independent of padding side/length.

    Why: the split key is the caller's promise that the tokenisation did not change; this checks it per example for
    the price of a few integer operations, so a stale key degrades to a direct forward instead of wrong activations.
    """
    m = mask.cpu().numpy().astype(bool)
    ids = batch["input_ids"].cpu().numpy().astype(np.uint64)
    pos = (np.cumsum(m, axis=1) - 1).clip(min=0).astype(np.uint64) + np.uint64(1)
    x = ids * _MIX[0] + pos * _MIX[1]
    if "token_type_ids" in batch:
        x = x + (batch["token_type_ids"].cpu().numpy().astype(np.uint64) + np.uint64(1)) * _MIX[2]
    x ^= x >> np.uint64(31)
    x *= _MIX[3]
    x ^= x >> np.uint64(29)
    x[~m] = 0
    return x.sum(axis=1, dtype=np.uint64).view(np.int64)


def model_fingerprint(model: nn.Module) -> str:
    """Architecture part of the key: class, config (minus fields that cannot affect the prefix) and parameter dtypes.

    Why: the weights hash alone does not cover hyperparameters such as ``layer_norm_eps``, the number of heads or the
    attention implementation, which change the prefix's output for identical weights.
    """
    config = getattr(model, "config", None)
    fields: dict[str, Any] = {}
    if config is not None and hasattr(config, "to_dict"):
        fields = {
            k: v
            for k, v in config.to_dict().items()
            if k not in _CONFIG_IGNORED and "dropout" not in k and not k.endswith("pdrop")
        }
        fields["_attn_implementation"] = getattr(config, "_attn_implementation", None)
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    text = json.dumps({"class": type(model).__name__, "config": fields, "dtypes": dtypes}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _precision_key(device: torch.device) -> str:
    """The prefix computed under bf16 autocast differs from fp32: the autocast state is part of the key."""
    if torch.is_autocast_enabled(device.type):
        return f"autocast-{torch.get_autocast_dtype(device.type)}"
    return "plain"


def _fsync_save(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as fh:
        np.save(fh, array)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_write(path: Path, text: str) -> None:
    with path.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


# ---------------------------------------------------------------------------------------------------------------------
# entries and the process-wide LRU
# ---------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class CacheEntry:
    """One finished cache: the depth-``depth`` hidden states of every example of one split, ragged.

    ``tokens`` is ``(num_tokens, hidden)`` in the storage dtype (a RAM array or a read-only memmap); ``index`` is
    ``(num_examples, 3)`` int64 rows ``(start, length, fingerprint)`` by example id, ``start = -1`` for an id that was
    never seen (possible only for entries whose completeness was inferred).
    """

    key: str
    meta: dict[str, Any]
    tokens: np.ndarray
    index: np.ndarray
    path: Path | None = None

    @property
    def depth(self) -> int:
        return int(self.meta["depth"])

    @property
    def in_ram(self) -> bool:
        return not isinstance(self.tokens, np.memmap)

    @property
    def nbytes(self) -> int:
        return int(self.tokens.nbytes + self.index.nbytes)

    @property
    def ram_bytes(self) -> int:
        return self.nbytes if self.in_ram else int(self.index.nbytes)

    @property
    def block_format(self) -> BlockFormat:
        kind, length = self.meta["format"]
        return BlockFormat(kind, int(length))

    def lookup(self, ids: np.ndarray, lengths: np.ndarray, fingerprints: np.ndarray) -> np.ndarray | None:
        """Rows of the index for ``ids``, or ``None`` when any example is missing or its tokens differ."""
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.index)):
            return None
        rows = self.index[ids]
        if (rows[:, 0] < 0).any() or (rows[:, 1] != lengths).any() or (rows[:, 2] != fingerprints).any():
            return None
        return rows

    def padded(self, rows: np.ndarray, mask: torch.Tensor) -> torch.Tensor:
        """The cached states of ``rows`` scattered into a zero ``(B, T, hidden)`` tensor at non-padding positions."""
        parts = [self.tokens[s : s + n] for s, n in zip(rows[:, 0].tolist(), rows[:, 1].tolist())]
        flat = np.concatenate(parts) if parts else np.zeros((0, self.tokens.shape[1]), self.tokens.dtype)
        values = torch.from_numpy(flat).view(_TORCH_VIEW[self.meta["cache_dtype"]])
        dtype = getattr(torch, self.meta["activation_dtype"].removeprefix("torch."))
        out = torch.zeros((*mask.shape, self.tokens.shape[1]), dtype=dtype, device=mask.device)
        out[mask] = values.to(device=mask.device, dtype=dtype)
        return out


class _MemoryLRU:
    """Finished entries of this process, most recently used last; RAM-backed entries are bounded by ``budget``.

    Why process-wide: an Optuna worker runs many trials one after another in one process; the next trial with the
    same checkpoint and a compatible depth should not even read the disk.
    """

    def __init__(self) -> None:
        self.entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self.budget = 0

    def get(self, key: str) -> CacheEntry | None:
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
        return entry

    def used(self) -> int:
        return sum(e.ram_bytes for e in self.entries.values())

    def put(self, entry: CacheEntry) -> None:
        self.entries[entry.key] = entry
        self.entries.move_to_end(entry.key)
        self._evict()

    def _evict(self) -> None:
        """Oldest first, until RAM use fits; the newest entry stays (it is about to be served)."""
        newest = next(reversed(self.entries), None)
        for key in list(self.entries):
            if self.used() <= self.budget:
                break
            if key != newest:
                del self.entries[key]

    def drop_under(self, root: Path) -> None:
        for key in [k for k, e in self.entries.items() if e.path is not None and root in e.path.parents]:
            del self.entries[key]

    def clear(self) -> None:
        self.entries.clear()


_LRU = _MemoryLRU()


def clear_memory_cache() -> None:
    """Forget every entry held in this process (the on-disk store is untouched). For tests and long-lived workers."""
    _LRU.clear()


def load_entry(folder: Path, ram_budget: int) -> CacheEntry | None:
    """Open a published entry; RAM if it fits ``ram_budget`` bytes, else a memmap. ``None`` if unreadable."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("version") != FORMAT_VERSION:
            return None
        index = np.load(folder / "index.npy")
        tokens = np.load(folder / "tokens.npy", mmap_mode="r")
        if tokens.nbytes <= ram_budget:
            tokens = np.array(tokens)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("activation cache entry %s is unreadable (%s); ignoring it", folder, exc)
        return None
    if tokens.ndim != 2 or index.ndim != 2 or index.shape[1] != 3 or int(meta["num_tokens"]) != tokens.shape[0]:
        log.warning("activation cache entry %s is inconsistent; ignoring it", folder)
        return None
    return CacheEntry(key=folder.name, meta=meta, tokens=tokens, index=index, path=folder)


def publish(root: Path, key: str, tmp: Path, meta: dict[str, Any], index: np.ndarray,
            tokens: np.ndarray | None) -> Path:
    """Write ``index``/``meta`` (and ``tokens`` unless already in ``tmp``) into ``tmp``, then atomically rename it to
    ``root/key``. If another process published the same key first, ours is discarded and theirs is returned."""
    if tokens is not None:
        _fsync_save(tmp / "tokens.npy", tokens)
    _fsync_save(tmp / "index.npy", index)
    _fsync_write(tmp / "meta.json", json.dumps(meta, sort_keys=True, indent=1))
    final = root / key
    try:
        os.replace(tmp, final)
    except OSError:
        if not (final / "meta.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final


STALE_TMP_SECONDS = 24 * 3600


def remove_stale_tmp(root: Path, max_age_s: float = STALE_TMP_SECONDS) -> int:
    """Delete ``.tmp-*`` folders older than ``max_age_s`` (left by a worker that crashed mid-write); returns how many.

    Why by age and not by process id: workers on several hosts may share the folder, where a pid means nothing.
    A capture in progress rewrites its spill file at least once per batch, so a day-old folder is abandoned.
    """
    removed = 0
    now = time.time()
    for tmp in root.glob(".tmp-*"):
        try:
            newest = max([tmp.stat().st_mtime, *(f.stat().st_mtime for f in tmp.iterdir())])
        except OSError:
            continue
        if now - newest > max_age_s:
            shutil.rmtree(tmp, ignore_errors=True)
            removed += 1
    return removed


# ---------------------------------------------------------------------------------------------------------------------
# capture
# ---------------------------------------------------------------------------------------------------------------------
class _TokenSink:
    """The tokens of one depth during a capture: RAM chunks, then (past the budget) a raw spill file."""

    def __init__(self, capture: _SplitCapture) -> None:
        self.capture = capture
        self.chunks: list[np.ndarray] = []
        self.ram_bytes = 0
        self.spill_rows = 0
        self.tmp: Path | None = None
        self.hidden: int | None = None
        self.format: BlockFormat | None = None
        self.activation_dtype: str | None = None

    def append(self, tokens: np.ndarray) -> None:
        self.hidden = tokens.shape[1]
        if self.tmp is None and self.capture.owner.capture_ram + tokens.nbytes <= self.capture.owner.budget:
            self.chunks.append(tokens)
            self.ram_bytes += tokens.nbytes
            self.capture.owner.capture_ram += tokens.nbytes
            return
        if self.tmp is None:
            self.tmp = self.capture.owner.new_tmp()
        with (self.tmp / "tokens.spill").open("ab") as fh:
            fh.write(np.ascontiguousarray(tokens).tobytes())
        self.spill_rows += tokens.shape[0]

    def release(self) -> None:
        self.capture.owner.capture_ram -= self.ram_bytes
        self.chunks, self.ram_bytes = [], 0
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


class _SplitCapture:
    """A capture pass over one split at depths ``depths``: which ids were seen, their lengths and fingerprints (shared
    by all depths, captured in the same order), and one :class:`_TokenSink` per depth.

    A batch is staged while the model runs and committed only after the forward returned, so an exception in the
    middle of a forward never leaves depths with different examples.
    """

    def __init__(self, owner: CachedPrefixForward, split: str, depths: list[int], size: int | None) -> None:
        self.owner = owner
        self.split = split
        self.depths = depths
        self.size = size
        self.sinks = {d: _TokenSink(self) for d in depths}
        self.seen = np.zeros(0, dtype=bool)
        self.ids: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []
        self.fps: list[np.ndarray] = []
        self.count = 0
        self.num_tokens = 0
        self.invalid: str | None = None
        self.staged: dict[int, tuple[np.ndarray, BlockFormat | None, str]] = {}

    def new_rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows of the batch whose example was not captured yet. Ids may be sparse (a cross-validation fold keeps the
        ids of the full split), so ``seen`` is indexed by id and grows as needed."""
        if ids.size and ids.min() < 0:
            raise ValueError(f"activation cache: negative example_id in split {self.split!r}")
        if ids.size and ids.max() >= len(self.seen):
            grown = np.zeros(int(ids.max()) + 1, dtype=bool)
            grown[: len(self.seen)] = self.seen
            self.seen = grown
        return ~self.seen[ids]

    def commit(self, ids: np.ndarray, lengths: np.ndarray, fps: np.ndarray) -> None:
        if set(self.staged) != set(self.depths):
            missing = sorted(set(self.depths) - set(self.staged))
            self.invalid = f"blocks for depths {missing} did not run during a capture"
        for depth, (tokens, fmt, act_dtype) in self.staged.items():
            sink = self.sinks[depth]
            if fmt is None:
                self.invalid = "a block's output format cannot be reproduced from its hidden state"
            elif sink.format is not None and sink.format != fmt:
                self.invalid = "a block changed its output format between batches"
            sink.format, sink.activation_dtype = fmt, act_dtype
            sink.append(tokens)
        self.staged = {}
        self.seen[ids] = True
        self.ids.append(ids)
        self.lengths.append(lengths)
        self.fps.append(fps)
        self.count += len(ids)
        self.num_tokens += int(lengths.sum())
        if self.size is not None and self.count > self.size:
            self.invalid = f"more than split_sizes[{self.split!r}] = {self.size} distinct example ids"

    def complete(self, pass_ended: bool) -> bool:
        """Exact with a known split size (number of distinct ids); otherwise ids 0 … max all seen and the caller saw
        the pass end."""
        if self.invalid is not None or self.count == 0:
            return False
        if self.size is not None:
            return self.count == self.size
        return pass_ended and bool(self.seen.all())

    def index(self) -> np.ndarray:
        ids = np.concatenate(self.ids)
        lengths = np.concatenate(self.lengths)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        index = np.full((len(self.seen), 3), -1, dtype=np.int64)
        index[:, 1:] = 0
        index[ids, 0] = starts
        index[ids, 1] = lengths
        index[ids, 2] = np.concatenate(self.fps)
        return index

    def release(self) -> None:
        for sink in self.sinks.values():
            sink.release()


# ---------------------------------------------------------------------------------------------------------------------
# the runner
# ---------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _SplitState:
    """What one split does at the current depth: serve depth ``serve_depth`` from ``serve`` and capture ``capture``."""

    keys: dict[int, str]
    serve: CacheEntry | None = None
    capture: _SplitCapture | None = None
    disabled: str | None = None

    @property
    def serve_depth(self) -> int:
        return self.serve.depth if self.serve is not None else 0


class CachedPrefixForward:
    """A :class:`~sweeps.forward.ForwardRunner` that serves the frozen prefix (embedding side + N lowest blocks) from
    a cache shared across epochs, trials and worker processes. See the module docstring for the design.

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
        _LRU.budget = self.budget
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_tmp(self.cache_dir)
        self._tmp_root: Path | None = None
        self.capture_ram = 0
        self.depth: int | None = None
        self.reason: str | None = "no prefix depth set yet"
        self._weights: dict[int, str] = {}
        self._prefix_params: list[nn.Parameter] = []
        self._states: dict[str, _SplitState] = {}
        self._last_split: str | None = None
        self._model_ref: weakref.ReferenceType[nn.Module] | None = None
        self._model_fp = ""
        self._prefix_modules: list[nn.Module] = []
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
            weights = self._weight_hashes(depth)
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
            return model(**model_inputs(batch)).logits
        state = self._state(model, split, batch)
        if state.disabled is not None:
            self.stats["direct_batches"] += 1
            return model(**model_inputs(batch)).logits
        mask = self._mask(batch)
        ids = batch["example_id"].detach().cpu().numpy().astype(np.int64)
        lengths = mask.sum(dim=1).cpu().numpy().astype(np.int64)
        fps = token_fingerprints(batch, mask)
        return self._forward(model, batch, split, state, mask, ids, lengths, fps)

    def close(self) -> None:
        """Publish captures that are complete, drop incomplete ones and temporary files, release references."""
        self._end_passes()
        self._discard_states()
        if self._tmp_root is not None:
            _LRU.drop_under(self._tmp_root)
            shutil.rmtree(self._tmp_root, ignore_errors=True)
            self._tmp_root = None

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
        """Per-batch checks: cheap, and they catch a plan change that bypassed :meth:`set_prefix_depth`."""
        if self.reason is not None:
            return self.reason
        if split not in self.split_keys:
            return f"split {split!r} has no entry in split_keys"
        if "example_id" not in batch:
            return "the batch has no example_id"
        self._bind(model)
        if any(p.requires_grad for p in self._prefix_params):
            return "a prefix parameter requires grad (the plan changed without set_prefix_depth)"
        training = next((m for m in self._prefix_modules if m.training), None)
        if training is not None:
            return (
                f"a prefix module ({type(training).__name__}) is in training mode (dropout/BatchNorm would make the "
                "prefix stochastic; with the FreezeController this means frozen_dropout/train_bn)"
            )
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
        self._model_fp = model_fingerprint(model)
        self._leaf_grad = (
            self.gradient_checkpointing
            if self.gradient_checkpointing is not None
            else any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())
        )
        self._model_ref = weakref.ref(model)

    def _key(self, split: str, depth: int, precision: str) -> str:
        parts = {
            "version": FORMAT_VERSION,
            "model": self._model_fp,
            "weights": self._weights[depth],
            "split_key": self.split_keys[split],
            "depth": depth,
            "cache_dtype": self.cache_dtype,
            "precision": precision,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def _weight_hashes(self, depth: int) -> dict[int, str]:
        """``{d: hash of embedding side + blocks 0 … d-1}`` for d = 1 … depth, each group hashed once."""
        digest = hashlib.sha256()
        for name in sorted(embedding_side(self.layer_map) & set(self.layer_map.names)):
            digest.update(f"{name}:{checksum(p for _, p in self.layer_map.group(name).params)};".encode())
        out: dict[int, str] = {}
        for i in range(depth):
            name = layer_name(i)
            digest.update(f"{name}:{checksum(p for _, p in self.layer_map.group(name).params)};".encode())
            out[i + 1] = digest.copy().hexdigest()
        return out

    def _state(self, model: nn.Module, split: str, batch: Mapping[str, torch.Tensor]) -> _SplitState:
        """The split's state, resolved on its first batch at this depth (the autocast state is known only here)."""
        state = self._states.get(split)
        if state is not None:
            return state
        assert self.depth is not None
        device = batch["input_ids"].device
        precision = _precision_key(device)
        keys = {d: self._key(split, d, precision) for d in range(1, self.depth + 1)}
        state = _SplitState(keys=keys)
        for d in range(self.depth, 0, -1):
            entry = self._find(keys[d])
            if entry is not None:
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
            state.capture = _SplitCapture(self, split, depths, self.split_sizes.get(split))
        if split == "train":
            self.stats["cache_hit"] = found == self.depth
            self.stats["cache_depth"] = found
        self._states[split] = state
        return state

    def _find(self, key: str) -> CacheEntry | None:
        entry = _LRU.get(key)
        if entry is not None:
            return entry
        if self.cache_dir is None or not (self.cache_dir / key / "meta.json").exists():
            return None
        entry = load_entry(self.cache_dir / key, max(self.budget - _LRU.used(), 0))
        if entry is not None:
            _LRU.put(entry)
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

    def new_tmp(self) -> Path:
        """A private temporary folder on the same file system as the store (so the final rename is atomic)."""
        if self.cache_dir is not None:
            root = self.cache_dir
        else:
            if self._tmp_root is None:
                self._tmp_root = Path(tempfile.mkdtemp(prefix="freeze-sweeps-cache-"))
            root = self._tmp_root
        tmp = root / f".tmp-{os.getpid()}-{uuid.uuid4().hex}"
        tmp.mkdir()
        return tmp

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
                "weights": self._weights[depth],
                "model": self._model_fp,
                "cache_dtype": self.cache_dtype,
                "activation_dtype": sink.activation_dtype,
                "format": [sink.format.kind, sink.format.length],
                "hidden": sink.hidden,
                "num_examples": len(index),
                "num_tokens": capture.num_tokens,
                "created": time.time(),
            }
            entry = self._materialise(state.keys[depth], sink, index, meta)
            sink.release()
            _LRU.put(entry)
            self.stats["built"].append(f"{capture.split}@{depth}")
            self.stats["bytes_built"] += entry.nbytes
            if depth == self.depth:
                state.serve = entry
        state.capture = None
        if state.serve is None or state.serve.depth != self.depth:  # cannot happen; never serve a partial prefix
            state.disabled = "capture finished without the target depth"

    def _materialise(self, key: str, sink: _TokenSink, index: np.ndarray, meta: dict[str, Any]) -> CacheEntry:
        hidden = sink.hidden
        assert hidden is not None
        dtype = CACHE_DTYPES[self.cache_dtype][1]
        fits = sink.tmp is None and sink.ram_bytes <= self.budget
        if sink.tmp is None:
            tokens = np.concatenate(sink.chunks) if sink.chunks else np.zeros((0, hidden), dtype)
            if self.cache_dir is None and fits:
                return CacheEntry(key, meta, tokens, index, None)
            tmp = self.new_tmp()
            root = self.cache_dir if self.cache_dir is not None else tmp.parent
            folder = publish(root, key, tmp, meta, index, tokens)
            if fits:  # keep the RAM copy rather than reading back what was just written
                return CacheEntry(key, meta, tokens, index, folder)
        else:
            tmp = sink.tmp
            total = meta["num_tokens"]
            out = np.lib.format.open_memmap(tmp / "tokens.npy", mode="w+", dtype=dtype, shape=(total, hidden))
            row = 0
            for chunk in sink.chunks:
                out[row : row + len(chunk)] = chunk
                row += len(chunk)
            spill = np.memmap(tmp / "tokens.spill", dtype=dtype, mode="r", shape=(sink.spill_rows, hidden))
            step = max(1, (64 << 20) // max(hidden * dtype.itemsize, 1))
            for start in range(0, sink.spill_rows, step):
                out[row : row + min(step, sink.spill_rows - start)] = spill[start : start + step]
                row += min(step, sink.spill_rows - start)
            out.flush()
            del out, spill
            (tmp / "tokens.spill").unlink()
            sink.tmp = None  # ownership moves to the store
            root = self.cache_dir if self.cache_dir is not None else tmp.parent
            folder = publish(root, key, tmp, meta, index, None)
        entry = load_entry(folder, max(self.budget - _LRU.used(), 0))
        if entry is None:
            raise RuntimeError(f"activation cache: the entry just written to {folder} cannot be read back")
        return entry

    # -- the forward ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _mask(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        mask = batch.get("attention_mask")
        if mask is None:
            return torch.ones_like(batch["input_ids"], dtype=torch.bool)
        return mask.bool()

    def _forward(
        self,
        model: nn.Module,
        batch: dict[str, torch.Tensor],
        split: str,
        state: _SplitState,
        mask: torch.Tensor,
        ids: np.ndarray,
        lengths: np.ndarray,
        fps: np.ndarray,
    ) -> torch.Tensor:
        assert self.depth is not None
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
                self._note_fallback(split, "examples missing from the cache or with different tokens (split key?)")
                return model(**model_inputs(batch)).logits
        capture_rows = None
        if capture is not None:
            capture.staged = {}  # a forward that raised earlier must not leave half a batch behind
            if rows_new.any():
                capture_rows = torch.from_numpy(rows_new).to(mask.device)
        live_from = state.serve_depth
        leaf_grad = self._leaf_grad and torch.is_grad_enabled()
        cached = state.serve.padded(serve_rows, mask) if state.serve is not None and serve_rows is not None else None
        if cached is not None and leaf_grad and live_from == self.depth:
            cached.requires_grad_(True)
        with self._patched(model, state, cached, live_from, capture if capture_rows is not None else None,
                           capture_rows, mask, leaf_grad):
            out = model(**model_inputs(batch)).logits
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
        cached: torch.Tensor | None,
        live_from: int,
        capture: _SplitCapture | None,
        capture_rows: torch.Tensor | None,
        mask: torch.Tensor,
        leaf_grad: bool,
    ) -> Iterator[None]:
        """Replace the prefix blocks' ``forward`` on the instance for one model call; always restored."""
        assert self.depth is not None
        blocks = self.layer_map.layer_modules(model)
        saved: list[tuple[nn.Module, Any]] = []
        try:
            for i in range(self.depth):
                block = blocks[i]
                saved.append((block, block.__dict__.get("forward", _ABSENT)))
                if i < live_from:
                    assert cached is not None and state.serve is not None
                    block.forward = _served_forward(state.serve.block_format, cached)
                else:
                    block.forward = self._live_forward(
                        block.forward, i + 1, capture, capture_rows, mask, leaf_grad and i == self.depth - 1
                    )
            yield
        finally:
            for block, previous in reversed(saved):
                if previous is _ABSENT:
                    block.__dict__.pop("forward", None)
                else:
                    block.forward = previous

    def _live_forward(
        self,
        original: Callable[..., Any],
        depth: int,
        capture: _SplitCapture | None,
        rows: torch.Tensor | None,
        mask: torch.Tensor,
        leaf_grad: bool,
    ) -> Callable[..., Any]:
        """A frozen block run live: no autograd, and its output captured when this depth is being built."""

        def forward(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            with torch.no_grad():
                out = original(*args, **kwargs)
            if capture is not None and rows is not None and depth in capture.sinks:
                fmt = BlockFormat.of(out)
                hidden = _hidden_of(out) if fmt is not None else None
                if hidden is None or hidden.dim() != 3 or tuple(hidden.shape[:2]) != tuple(mask.shape):
                    fmt, tokens = None, np.zeros((0, 1), CACHE_DTYPES[self.cache_dtype][1])
                    act_dtype = "torch.float32"
                else:
                    torch_dtype, np_dtype = CACHE_DTYPES[self.cache_dtype]
                    picked = hidden[rows][mask[rows]].to(torch_dtype).cpu()
                    if self.cache_dtype == "bfloat16":
                        picked = picked.view(torch.int16)
                    tokens = picked.numpy().astype(np_dtype, copy=False)
                    act_dtype = str(hidden.dtype)
                capture.staged[depth] = (tokens, fmt, act_dtype)
            if leaf_grad:
                fmt_out = BlockFormat.of(out)
                if fmt_out is not None:  # a fresh leaf (detach), not a view created under no_grad
                    out = fmt_out.wrap(_hidden_of(out).detach().requires_grad_(True))
            self.stats["build_seconds"] += time.perf_counter() - start
            return out

        return forward


_ABSENT = object()


def _served_forward(fmt: BlockFormat, cached: torch.Tensor) -> Callable[..., Any]:
    """A frozen block replaced by the cached output of the deepest cached depth (its inputs are not even read)."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        return fmt.wrap(cached)

    return forward


__all__ = [
    "CACHE_DTYPES",
    "BlockFormat",
    "CacheEntry",
    "CachedPrefixForward",
    "clear_memory_cache",
    "load_entry",
    "model_fingerprint",
    "publish",
    "remove_stale_tmp",
    "token_fingerprints",
]
