"""A capture in progress: the activations of one split at the depths being built, batch by batch, and how a
finished capture becomes a store entry.

A batch is staged while the model runs and committed only after the forward returned, so an exception in the middle
of a forward never leaves depths with different examples.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from sweeps.cache.store import _LRU, CACHE_DTYPES, BlockFormat, CacheEntry, load_entry, publish


@dataclasses.dataclass
class Staged:
    """One depth's output for the new examples of the batch being run: its stored rows, the block's output format
    (``None``: it cannot be reproduced, the capture is abandoned), the activation dtype and per-example shapes."""

    rows: np.ndarray
    format: BlockFormat | None
    dtype: str
    item_shapes: list[list[int]]


class CaptureArena:
    """The RAM a runner's captures in progress may use, and where they spill beyond it.

    Why an object of its own: a token sink needs only its budget, its running total and a temporary folder on the
    store's file system; it used to reach them through its capture's owning runner.
    """

    def __init__(self, budget: int, cache_dir: Path | None) -> None:
        self.budget = budget
        self.cache_dir = cache_dir
        self.used = 0
        self._tmp_root: Path | None = None

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

    def close(self) -> None:
        """Remove the private temporary root (without ``cache_dir``) and forget the entries that lived in it."""
        if self._tmp_root is not None:
            _LRU.drop_under(self._tmp_root)
            shutil.rmtree(self._tmp_root, ignore_errors=True)
            self._tmp_root = None


class _TokenSink:
    """The rows of one depth during a capture (tokens for text, one per image): RAM chunks, then (past the budget) a
    raw spill file."""

    def __init__(self, arena: CaptureArena) -> None:
        self.arena = arena
        self.chunks: list[np.ndarray] = []
        self.ram_bytes = 0
        self.spill_rows = 0
        self.tmp: Path | None = None
        self.hidden: int | None = None  # row width
        self.format: BlockFormat | None = None
        self.activation_dtype: str | None = None
        self.item_shapes: list[list[int]] | None = None  # per-example shapes of the output's tensors

    def append(self, tokens: np.ndarray) -> None:
        self.hidden = tokens.shape[1]
        if self.tmp is None and self.arena.used + tokens.nbytes <= self.arena.budget:
            self.chunks.append(tokens)
            self.ram_bytes += tokens.nbytes
            self.arena.used += tokens.nbytes
            return
        if self.tmp is None:
            self.tmp = self.arena.new_tmp()
        with (self.tmp / "tokens.spill").open("ab") as fh:
            fh.write(np.ascontiguousarray(tokens).tobytes())
        self.spill_rows += tokens.shape[0]

    def release(self) -> None:
        self.arena.used -= self.ram_bytes
        self.chunks, self.ram_bytes = [], 0
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def materialise(self, key: str, index: np.ndarray, meta: dict[str, Any]) -> CacheEntry:
        """These tokens as a finished entry: kept in RAM when they fit the budget, published to the store when
        there is one (or when they spilled), read back as a memmap otherwise."""
        hidden = self.hidden
        assert hidden is not None
        arena = self.arena
        dtype = CACHE_DTYPES[meta["cache_dtype"]][1]
        fits = self.tmp is None and self.ram_bytes <= arena.budget
        if self.tmp is None:
            tokens = np.concatenate(self.chunks) if self.chunks else np.zeros((0, hidden), dtype)
            if arena.cache_dir is None and fits:
                return CacheEntry(key, meta, tokens, index, None)
            tmp = arena.new_tmp()
            root = arena.cache_dir if arena.cache_dir is not None else tmp.parent
            folder = publish(root, key, tmp, meta, index, tokens)
            if fits:  # keep the RAM copy rather than reading back what was just written
                return CacheEntry(key, meta, tokens, index, folder)
        else:
            tmp = self.tmp
            total = meta["num_tokens"]
            out = np.lib.format.open_memmap(tmp / "tokens.npy", mode="w+", dtype=dtype, shape=(total, hidden))
            row = 0
            for chunk in self.chunks:
                out[row : row + len(chunk)] = chunk
                row += len(chunk)
            spill = np.memmap(tmp / "tokens.spill", dtype=dtype, mode="r", shape=(self.spill_rows, hidden))
            step = max(1, (64 << 20) // max(hidden * dtype.itemsize, 1))
            for start in range(0, self.spill_rows, step):
                out[row : row + min(step, self.spill_rows - start)] = spill[start : start + step]
                row += min(step, self.spill_rows - start)
            out.flush()
            del out, spill
            (tmp / "tokens.spill").unlink()
            self.tmp = None  # ownership moves to the store
            root = arena.cache_dir if arena.cache_dir is not None else tmp.parent
            folder = publish(root, key, tmp, meta, index, None)
        entry = load_entry(folder, max(arena.budget - _LRU.used(), 0))
        if entry is None:
            raise RuntimeError(f"activation cache: the entry just written to {folder} cannot be read back")
        return entry


class _SplitCapture:
    """A capture pass over one split at depths ``depths``: which ids were seen, their lengths and fingerprints (shared
    by all depths, captured in the same order), and one :class:`_TokenSink` per depth.

    A batch is staged while the model runs and committed only after the forward returned, so an exception in the
    middle of a forward never leaves depths with different examples.
    """

    def __init__(self, arena: CaptureArena, split: str, depths: list[int], size: int | None) -> None:
        self.split = split
        self.depths = depths
        self.size = size
        self.sinks = {d: _TokenSink(arena) for d in depths}
        self.seen = np.zeros(0, dtype=bool)
        self.ids: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []
        self.fps: list[np.ndarray] = []
        self.count = 0
        self.num_tokens = 0
        self.invalid: str | None = None
        self.staged: dict[int, Staged] = {}

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
        for depth, staged in self.staged.items():
            sink = self.sinks[depth]
            if staged.format is None:
                self.invalid = "a block's output format cannot be reproduced from the stored tensors"
            elif sink.format is not None and (sink.format, sink.item_shapes) != (staged.format, staged.item_shapes):
                self.invalid = "a block changed its output format or shape between batches"
            sink.format, sink.activation_dtype, sink.item_shapes = staged.format, staged.dtype, staged.item_shapes
            sink.append(staged.rows)
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
