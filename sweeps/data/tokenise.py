"""Tokenisation, cached on disk and in process, keyed by the tokenizer, ``max_length`` and the split's
content, so the trials of a study tokenise each split once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import datasets

from sweeps.data.task import _FORMAT_VERSION, split_fingerprint
from sweeps.errors import DataError

_TOKENIZED: dict[str, datasets.Dataset] = {}


def clear_tokenization_memo() -> None:
    """Forget the in-process tokenisation memo (the disk cache stays); for tests and long-lived notebooks."""
    _TOKENIZED.clear()


def _tokenizer_digest(tokenizer: Any) -> str:
    """Hash what decides the token ids: the full fast-tokenizer definition (a few ms), or the vocab for slow ones.

    The backend's ``truncation``/``padding`` entries are dropped: transformers mutates them on every call, so keeping
    them would make the key depend on what the tokenizer was last used for.
    """
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        definition.pop("truncation", None)
        definition.pop("padding", None)
        digest.update(json.dumps(definition, sort_keys=True).encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(str(getattr(tokenizer, "truncation_side", "right")).encode())
    return digest.hexdigest()


def tokenization_key(tokenizer: Any, max_length: int, split: datasets.Dataset | str) -> str:
    """Cache key of a tokenised split: tokenizer (name, vocab size, definition hash), ``max_length``, split content.

    ``split`` is the normalised split itself or its :func:`split_fingerprint` (cheaper when already known).
    """
    fingerprint = split if isinstance(split, str) else split_fingerprint(split)
    parts = [
        _FORMAT_VERSION,
        str(getattr(tokenizer, "name_or_path", "")),
        str(getattr(tokenizer, "vocab_size", "")),
        str(len(tokenizer)),
        _tokenizer_digest(tokenizer),
        str(int(max_length)),
        fingerprint,
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:40]


def _encode_batch(batch: dict[str, list[Any]], tokenizer: Any, max_length: int) -> dict[str, list[Any]]:
    """Tokenise one batch without padding (the collator pads per batch, which is far cheaper for short texts)."""
    if "text_pair" in batch:
        encoded = tokenizer(batch["text"], batch["text_pair"], truncation=True, max_length=max_length)
    else:
        encoded = tokenizer(batch["text"], truncation=True, max_length=max_length)
    out = dict(encoded)
    out["length"] = [len(ids) for ids in encoded["input_ids"]]
    return out


def tokenize_split(
    ds: datasets.Dataset, tokenizer: Any, max_length: int, cache_dir: Path | str | None
) -> datasets.Dataset:
    """Tokenise a normalised split: ``input_ids``, ``attention_mask`` (+ ``token_type_ids`` if the tokenizer makes
    them), ``labels`` (when labelled), ``example_id`` and ``length``; unpadded.

    Cached under :func:`tokenization_key` twice: in this process (so the trials of a study share one object) and, when
    ``cache_dir`` is given, as ``cache_dir/tok-<key>.arrow`` (so reruns and other workers skip tokenisation).
    """
    if max_length <= 0:
        raise DataError(f"max_length must be positive, got {max_length}")
    if "text" not in ds.column_names:
        raise DataError(f"tokenize_split: expected a normalised split with a 'text' column, got {ds.column_names}")
    key = tokenization_key(tokenizer, max_length, ds)
    memo_key = f"{key}|{Path(cache_dir).resolve() if cache_dir is not None else ''}"
    if memo_key in _TOKENIZED:
        return _TOKENIZED[memo_key]

    drop = [c for c in ds.column_names if c not in ("label", "example_id")]
    kwargs: dict[str, Any] = {
        "batched": True,
        "remove_columns": drop,
        "fn_kwargs": {"tokenizer": tokenizer, "max_length": int(max_length)},
        "new_fingerprint": key,  # skip datasets' dill-hashing of the tokenizer
        "desc": "Tokenising",
    }
    if cache_dir is not None:
        cache_path = Path(cache_dir) / f"tok-{key}.arrow"
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        if cache_path.exists():
            tokenized = datasets.Dataset.from_file(str(cache_path))
        else:
            tokenized = ds.map(_encode_batch, cache_file_name=str(cache_path), load_from_cache_file=True, **kwargs)
    else:
        tokenized = ds.map(_encode_batch, keep_in_memory=True, **kwargs)
    if "label" in tokenized.column_names:
        tokenized = tokenized.rename_column("label", "labels")
    _TOKENIZED[memo_key] = tokenized
    return tokenized
