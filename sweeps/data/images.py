"""Image examples: reading ``train/<label>/*.png`` folders, checking every image before trial 0, and turning batches
of images into ``pixel_values`` with the model's own image processor.

Why check every image up front: a missing or truncated file found in trial 7's third epoch fails that trial (and every
later one) after hours of work; found here, it is one clear message naming the file and the row, before any model is
loaded and before any trial (completed trials in the study's storage are never touched).

A normalised image split holds, instead of ``text``, an ``image`` column in the ``datasets`` ``Image`` storage format
(``{"bytes": ..., "path": ...}``, not decoded: decoding happens per batch) and an ``image_digest`` (sha256 of the
image's bytes), so the split's fingerprint, and every cache keyed by it, changes when a file's content does.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import torch

from sweeps.data.read import _Raw
from sweeps.errors import DataError

IMAGE = "image"
DIGEST = "image_digest"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# PIL modes that convert to RGB without losing meaning. 16/32-bit integer and float modes ("I", "I;16", "F") do not:
# PIL clips them to 8 bits, which silently turns most medical/scientific images black or white.
CONVERTIBLE_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
)

_MAX_LISTED = 5


# --------------------------------------------------------------------------------------------------------------------
# Reading and checking
# --------------------------------------------------------------------------------------------------------------------


def read_imagefolder(folder: Path, split: str, label_column: str) -> _Raw:
    """One split from a folder: ``<folder>/<label>/*.png`` (labelled), or ``<folder>/*.png`` (unlabelled test data).

    Read through ``datasets``' ``imagefolder`` builder; labels become the sub-folder names (strings, so train and
    validation folders with different sets of classes still map by name), rows are sorted by path (a stable order
    across file systems), and ``id`` is the file name without its extension (a Kaggle submission's usual id) — in a
    labelled folder whose classes reuse file names (``cat/0001.png``, ``dog/0001.png``), ``<label>/<name>``, so a
    labelled folder can be predicted (and scored) like a test folder.
    """
    where = f"{folder} (data.{split})"
    if not folder.exists():
        raise DataError(f"{where}: folder does not exist")
    if not folder.is_dir():
        raise DataError(f"{where}: is a file; data.source imagefolder expects a folder of <label>/ sub-folders")
    labelled = any(p.is_dir() for p in folder.iterdir())
    if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*") if p.is_file()):
        raise DataError(f"{where}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder or its sub-folders")
    try:
        ds = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train", drop_labels=not labelled)
    except Exception as exc:  # the builder raises many types for odd layouts
        raise DataError(f"{where}: cannot read as an image folder: {type(exc).__name__}: {exc}") from exc
    ds = ds.cast_column(IMAGE, datasets.Image(decode=False))
    frame = pd.DataFrame({IMAGE: ds[IMAGE]})
    if labelled:
        if "label" not in ds.column_names:
            raise DataError(f"{where}: images must be in one sub-folder per class (<label>/*.png)")
        names = ds.features["label"].names
        frame[label_column] = [names[i] for i in ds["label"]]
    frame["id"] = [Path(ref["path"]).stem for ref in frame[IMAGE]]
    if labelled and frame["id"].duplicated().any():
        frame["id"] = [f"{label}/{stem}" for label, stem in zip(frame[label_column], frame["id"], strict=True)]
    frame = frame.sort_values(by=IMAGE, key=lambda refs: refs.map(lambda r: r["path"]), kind="stable")
    return _Raw(frame.reset_index(drop=True), where, base_dir=folder.resolve())


def _reference(value: Any, base_dir: Path | None) -> dict[str, Any]:
    """``{"bytes", "path"}`` of one cell: a path (relative to the data file), a ``datasets`` Image dict or a PIL
    image."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("empty file name")
        path = Path(value.strip()).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return {"bytes": None, "path": str(path)}
    if isinstance(value, Mapping) and ("bytes" in value or "path" in value):
        if value.get("bytes") is not None:
            return {"bytes": bytes(value["bytes"]), "path": value.get("path")}
        if value.get("path"):
            return _reference(str(value["path"]), base_dir)
        raise ValueError("image entry has neither bytes nor a path")
    if hasattr(value, "save") and hasattr(value, "mode"):  # a PIL image handed over in a DataFrame
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}
    if value is None or (isinstance(value, float) and value != value):
        raise ValueError("no image")
    raise ValueError(f"expected a file path or an image, found {type(value).__name__}")


def _image_bytes(ref: Mapping[str, Any]) -> bytes:
    if ref.get("bytes") is not None:
        return bytes(ref["bytes"])
    path = Path(ref["path"])
    if not path.exists():
        raise ValueError("file does not exist")
    if path.is_dir():
        raise ValueError("is a folder, not an image file")
    return path.read_bytes()


def _name(ref: Mapping[str, Any]) -> str:
    return str(ref.get("path") or "<image bytes>")


def decode_image(ref: Mapping[str, Any], where: str) -> Any:
    """The RGB PIL image of ``ref``; any problem is a :class:`DataError` naming ``where`` and the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        data = _image_bytes(ref)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode not in CONVERTIBLE_MODES:
                raise ValueError(
                    f"image mode {image.mode!r} (16/32-bit or float) cannot be converted to 8-bit RGB without "
                    f"clipping; convert the file to 8-bit first"
                )
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        detail = "not a readable image file" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise DataError(f"{where}: image {_name(ref)}: {detail}") from exc


def check_images(raw: _Raw, column: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Decode every image of ``raw[column]`` once: (normalised references, sha256 digests of their bytes).

    Raises one :class:`DataError` listing the first offending rows (file, row, cause), so a data set with several bad
    files is fixed in one go rather than one rerun per file.
    """
    refs: list[dict[str, Any]] = []
    digests: list[str] = []
    problems: list[str] = []
    count = 0
    for i, value in enumerate(raw.frame[column].tolist()):
        try:
            ref = _reference(value, raw.base_dir)
        except ValueError as exc:
            count += 1
            if len(problems) < _MAX_LISTED:
                problems.append(f"{raw.row(i)}: {exc}")
            continue
        try:
            decode_image(ref, raw.row(i))
            digests.append(hashlib.sha256(_image_bytes(ref)).hexdigest())
        except (DataError, ValueError) as exc:
            count += 1
            if len(problems) < _MAX_LISTED:
                problems.append(str(exc))
            continue
        refs.append(ref)
    if count:
        more = f"; and {count - len(problems)} more" if count > len(problems) else ""
        raise DataError(
            f"{raw.where}: {count} bad image(s) in column {column!r} (data.image_column): "
            f"{'; '.join(problems)}{more}. Fix or remove those rows"
        )
    return refs, digests


def image_column(cfg: Any) -> str:
    """The configured image column; ``image`` (what ``datasets`` and the imagefolder reader call it) by default."""
    return getattr(cfg, "image_column", None) or IMAGE


# --------------------------------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------------------------------


def augment_pixels(pixel_values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The standard light augmentation: a random horizontal flip (p = 0.5) and a random crop of the image padded by an
    eighth of its side (reflection), per image. On the processed tensor, so it needs no torchvision and keeps the
    processor's resize and normalisation exactly as at evaluation."""
    n, _, h, w = pixel_values.shape
    pad_h, pad_w = max(h // 8, 1), max(w // 8, 1)
    padded = torch.nn.functional.pad(pixel_values, (pad_w, pad_w, pad_h, pad_h), mode="reflect")
    flips = torch.rand(n, generator=generator) < 0.5
    dy = torch.randint(0, 2 * pad_h + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad_w + 1, (n,), generator=generator)
    out = torch.empty_like(pixel_values)
    for k in range(n):
        crop = padded[k, :, dy[k] : dy[k] + h, dx[k] : dx[k] + w]
        out[k] = crop.flip(-1) if flips[k] else crop
    return out


class ImageCollator:
    """Decode, process (the model's ``AutoImageProcessor``: resize, crop, rescale, normalise) and stack a batch.

    Evaluation batches are deterministic: the same image gives the same ``pixel_values`` in every epoch and trial.
    With ``augment`` (training batches only, ``task.data.augment``) :func:`augment_pixels` runs after the processor,
    from a generator seeded with ``seed``, so a trial's augmentations are reproducible.
    """

    def __init__(self, processor: Any, *, augment: bool = False, seed: int = 0) -> None:
        self.processor = processor
        self.augment = augment
        self._generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        images = [decode_image(ex[IMAGE], f"example {ex.get('example_id', i)}") for i, ex in enumerate(examples)]
        pixel_values = self.processor(images=images, return_tensors="pt")["pixel_values"]
        if self.augment:
            pixel_values = augment_pixels(pixel_values, self._generator)
        batch = {"pixel_values": pixel_values}
        for name in ("labels", "example_id"):
            if name in examples[0]:
                batch[name] = torch.tensor([int(ex[name]) for ex in examples], dtype=torch.long)
        return batch


def processor_digest(processor: Any) -> str:
    """What decides ``pixel_values``: the processor's class and full configuration (size, crop, mean, std ...)."""
    text = processor.to_json_string() if hasattr(processor, "to_json_string") else repr(processor)
    try:
        config = json.loads(text)
        config.pop("processor_class", None)
        text = json.dumps(config, sort_keys=True)
    except ValueError:
        pass
    return hashlib.sha256(f"{type(processor).__name__}|{text}".encode()).hexdigest()


def image_split_key(processor: Any, fingerprint: str) -> str:
    """The key of a processed image split (the counterpart of :func:`sweeps.data.tokenization_key`)."""
    return hashlib.sha256(f"images-v1|{processor_digest(processor)}|{fingerprint}".encode()).hexdigest()[:40]
