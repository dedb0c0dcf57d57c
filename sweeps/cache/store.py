"""Finished cache entries: their ragged layout, the process-wide LRU in RAM, and the on-disk store that
worker processes share (published atomically: written in a temporary folder, fsynced, renamed).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sweeps.cache.keys import FORMAT_VERSION

if TYPE_CHECKING:
    from sweeps.cache.layout import BatchLayout

log = logging.getLogger(__name__)


# storage dtype name → (torch dtype the activations are rounded to, numpy dtype of the stored bytes).
# numpy has no bfloat16: its bits are stored as int16 and viewed back in torch.
CACHE_DTYPES: dict[str, tuple[torch.dtype, np.dtype[Any]]] = {
    "float16": (torch.float16, np.dtype(np.float16)),
    "bfloat16": (torch.bfloat16, np.dtype(np.int16)),
    "float32": (torch.float32, np.dtype(np.float32)),
}


_TORCH_VIEW = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclasses.dataclass(frozen=True)
class BlockFormat:
    """What a block returned, so cached tensors can be handed to the encoder loop in the same shape.

    Only formats that can be rebuilt from stored tensors alone are supported: a Tensor, or a tuple of Tensors and
    ``None`` s (``stored`` lists the positions of the Tensors). The ragged text layout stores one tensor, so there the
    tuple's items after the first must be ``None`` (transformers 4.x blocks' ``(hidden, None)``); an image layout
    stores every per-example tensor (Swin's ``(hidden, reshaped_hidden, None)``). Anything else (a non-tensor item, a
    tensor that is not per example such as Swin V2's window attention weights) disables caching.
    """

    kind: str  # "tensor" | "tuple"
    length: int = 1
    stored: tuple[int, ...] = (0,)

    def wrap(self, tensors: Sequence[torch.Tensor]) -> Any:
        if self.kind == "tensor":
            return tensors[0]
        items: list[torch.Tensor | None] = [None] * self.length
        for position, tensor in zip(self.stored, tensors, strict=True):
            items[position] = tensor
        return tuple(items)

    def tensors(self, output: Any) -> list[torch.Tensor]:
        return [output] if self.kind == "tensor" else [output[i] for i in self.stored]

    @staticmethod
    def of(output: Any, multi_tensor: bool = False) -> BlockFormat | None:
        if isinstance(output, torch.Tensor):
            return BlockFormat("tensor")
        if type(output) is not tuple or not output or not isinstance(output[0], torch.Tensor):
            return None
        if not all(item is None or isinstance(item, torch.Tensor) for item in output[1:]):
            return None
        stored = tuple(i for i, item in enumerate(output) if item is not None)
        if stored != (0,) and not multi_tensor:
            return None
        return BlockFormat("tuple", len(output), stored)


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


@dataclasses.dataclass
class CacheEntry:
    """One finished cache: the depth-``depth`` block outputs of every example of one split, as rows.

    ``tokens`` is ``(num_rows, width)`` in the storage dtype (a RAM array or a read-only memmap); ``index`` is
    ``(num_examples, 3)`` int64 rows ``(start, length, fingerprint)`` by example id, ``start = -1`` for an id that was
    never seen (possible only for entries whose completeness was inferred). How rows map to tensors is the entry's
    ``layout`` (:mod:`sweeps.cache.layout`): ragged tokens for text, one row per example for images.
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
    def layout(self) -> str:
        return str(self.meta.get("layout", "tokens"))

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
        return BlockFormat(kind, int(length), tuple(self.meta.get("stored", (0,))))

    def lookup(self, ids: np.ndarray, lengths: np.ndarray, fingerprints: np.ndarray) -> np.ndarray | None:
        """Rows of the index for ``ids``, or ``None`` when any example is missing or its inputs differ."""
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.index)):
            return None
        rows = self.index[ids]
        if (rows[:, 0] < 0).any() or (rows[:, 1] != lengths).any() or (rows[:, 2] != fingerprints).any():
            return None
        return rows

    def served(self, rows: np.ndarray, layout: BatchLayout) -> list[torch.Tensor]:
        """The cached outputs of ``rows`` (from :meth:`lookup`) as the block's tensors for this batch's ``layout``."""
        parts = [self.tokens[s : s + n] for s, n in zip(rows[:, 0].tolist(), rows[:, 1].tolist())]
        flat = np.concatenate(parts) if parts else np.zeros((0, self.tokens.shape[1]), self.tokens.dtype)
        values = torch.from_numpy(flat).view(_TORCH_VIEW[self.meta["cache_dtype"]])
        dtype = getattr(torch, self.meta["activation_dtype"].removeprefix("torch."))
        shapes = self.meta.get("item_shapes") or [[self.tokens.shape[1]]]
        return layout.unpack(values, shapes, dtype)


class _MemoryLRU:
    """Finished entries of this process, most recently used last; RAM-backed entries are bounded by ``budget``.

    Why process-wide: an Optuna worker runs many trials one after another in one process; the next trial with the
    same checkpoint and a compatible depth should not even read the disk.
    """

    def __init__(self) -> None:
        self.entries: OrderedDict[str, CacheEntry] = OrderedDict()

    def get(self, key: str) -> CacheEntry | None:
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
        return entry

    def used(self) -> int:
        return sum(e.ram_bytes for e in self.entries.values())

    def put(self, entry: CacheEntry, budget: int) -> None:
        """Add ``entry`` and evict down to ``budget`` bytes of RAM: the budget is the caller's (its runner's
        ``memory_budget_mb``), passed in rather than stored here, so no runner overwrites another's."""
        self.entries[entry.key] = entry
        self.entries.move_to_end(entry.key)
        self._evict(budget)

    def _evict(self, budget: int) -> None:
        """Oldest first, until RAM use fits; the newest entry stays (it is about to be served)."""
        newest = next(reversed(self.entries), None)
        for key in list(self.entries):
            if self.used() <= budget:
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
