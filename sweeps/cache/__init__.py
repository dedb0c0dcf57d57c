"""Serve a frozen prefix's activations from a cache, so that later epochs (and later trials) skip it.

Why: with ``bottom_n``, linear probes and gradual unfreezing, the embedding side and the N lowest blocks never change
during a trial, and every trial of a study starts from the same checkpoint. Recomputing those blocks every epoch, in
every trial, is most of the work of a shallow fine-tune. :class:`CachedPrefixForward` is a
:class:`~sweeps.train.forward.ForwardRunner` that computes the prefix once, keeps the output of each frozen depth per
example, and afterwards runs only the trainable top.

How a batch is served
    The model is always called as a whole (``model(**inputs)``), so the base model's attention-mask, position and
    embedding code runs normally (the embedding module is cheap and its output is simply ignored). For the duration of
    the call, the frozen blocks' ``forward`` is replaced on the instance and restored in a ``finally``:

    * blocks ``0 … d-1`` (``d`` = the deepest cached depth) return the cached output of depth ``d``, rebuilt for this
      batch by its layout (below) and wrapped in the format the block returned when it was captured (a Tensor for
      transformers 5.x blocks; a tuple of Tensors and ``None`` s, such as Swin's ``(hidden, reshaped, None)``). The
      lower blocks return the same tensors: their output is never read, because the next block is patched as well;
    * blocks ``d … N-1`` run live under ``torch.no_grad()`` and their outputs are captured (depths ``d+1 … N`` with
      ``capture="all"``, only ``N`` with ``capture="target"``);
    * blocks ``N …`` and the head run unchanged, with autograd.

Layouts: text and images in one store (:mod:`sweeps.cache.layout`)
    Every entry is a 2-D array of rows plus an index of ``(start, length, fingerprint)`` per example id; a batch's
    layout says how a block's output becomes rows. *Tokens* (batches with ``input_ids``): the non-padding tokens of
    each example, ``length`` rows of ``hidden``, fingerprinted by their token ids. *Examples* (batches with
    ``pixel_values``): an image model's block output has the same shape for every example (a CNN stage's
    ``(C, H, W)``, a ViT block's ``(tokens, hidden)``, both tensors of a Swin stage), so each example is one row, its
    tensors flattened side by side, ``item_shapes`` in the metadata; fingerprinted by the exact bits of its pixels
    (deterministic evaluation transforms give the same bits every epoch; an augmented or otherwise different image
    runs directly). A tensor that is not per example (Swin V2's window attention weights) cannot be split into rows:
    the block's format is refused and the split runs directly.

    Padding is stripped with ``attention_mask`` at capture (ragged storage). Non-padding positions never read padding
    positions (they are masked out of attention), so zeros at padding give the same logits as the garbage a live
    prefix leaves there, for every head that pools from real tokens (CLS, first token, last non-pad token) — which is
    every transformers ``*ForSequenceClassification`` head. A custom head that averages over padding without the mask
    would see a difference; such a head depends on the batch's padding anyway.

Correctness rules (never silently wrong)
    The runner behaves exactly like :class:`~sweeps.train.forward.DirectForward` when: the depth is ``None``/0 (the
    embedding side trains, or no block is frozen); the layer map has ``shared_layers`` (ALBERT: one block object runs
    at every depth, so "block i" is not a prefix); ``frozen_dropout`` is on (a stochastic prefix cannot be cached); a
    prefix parameter requires grad; a prefix module is in training mode (dropout or BatchNorm would make it stochastic
    or stateful); a split has no key in ``split_keys``; the batch has no ``example_id``; or a block's output format
    cannot be reproduced. The checks that can change between batches (modes, ``requires_grad``) run on every batch; a
    prefix module found in training mode turns caching off for the rest of that depth and drops what was being built
    (BatchNorm in training mode, ``train_bn``, has just moved the running statistics that the evaluation pass would
    read). Each cached example also stores its row count and a fingerprint of its inputs; a batch whose examples are
    missing or whose inputs differ (a wrong split key) is computed directly and counted in ``stats``.

Keys and storage
    An entry is one (prefix weights and buffers, split data, depth, storage dtype, model architecture, compute
    precision). The weights part chains :func:`strategies.optim.checksum` of the embedding side and of blocks
    ``0 … d-1``, so a deeper prefix shares the shallower entries, and any change of a prefix weight changes the key;
    the buffers part does the same for the prefix's buffers (BatchNorm running statistics decide a frozen CNN stage's
    output). The split key is the caller's (dataset, tokenizer, max length … or image processor and image digests)
    string. Entries are rows concatenated in capture order (``tokens.npy``, ``(num_rows, width)``) plus an
    ``index.npy`` of ``(start, length, fingerprint)`` per example id.

    Entries are kept in a process-wide LRU in RAM up to ``memory_budget_mb``; larger ones are memory-mapped ``.npy``
    files. With ``cache_dir`` every finished entry is also published to ``cache_dir/<key>/`` — written in a temporary
    folder, fsynced, then ``os.replace``-d into place, so concurrent worker processes see either nothing or a whole
    entry; if two processes build the same entry the second one's copy is discarded. A capture that grows beyond the
    budget spills its tokens to a file in the same temporary folder, so studies whose activations do not fit in RAM
    work too. Only a capture in which every example id of the split was seen becomes an entry: with ``split_sizes``
    that is exact; without it, a pass is taken as complete when ids ``0 … max`` were all seen and the pass visibly
    ended (a repeated id, or a batch of another split); the capture of the split in progress at a depth change or at
    :meth:`~sweeps.cache.forward.CachedPrefixForward.close` is then dropped (it may be mid-pass). The per-batch id
    check keeps even a wrong inference (``drop_last`` dropping exactly the highest ids) from producing wrong logits.

Which depths are captured
    ``capture="all"`` (default) stores every depth ``d+1 … N`` in the cold pass. It costs N× the disk/RAM of one depth,
    and buys: gradual unfreezing (the prefix shrinks top-down, one block per stage) is warm at every stage, and other
    trials with fewer frozen blocks hit the cache. ``capture="target"`` stores depth N only (for big models/datasets).
"""

from sweeps.cache.forward import CachedPrefixForward
from sweeps.cache.keys import model_fingerprint, token_fingerprints
from sweeps.cache.store import (
    CACHE_DTYPES,
    BlockFormat,
    CacheEntry,
    clear_memory_cache,
    load_entry,
    publish,
    remove_stale_tmp,
)

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
