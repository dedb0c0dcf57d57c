"""Image classifiers: ``AutoModelForImageClassification`` and the model's own ``AutoImageProcessor``, from a hub id, a
local folder, or ``timm:<name>`` (a timm checkpoint through transformers' timm wrapper; needs the ``timm`` package).

Why a module of its own: text and image models share the source resolution (:mod:`sweeps.train.models`) but nothing
else; keeping the vision side here keeps the text loader small. Which side a study takes is ``task.modality``
(:func:`resolve_modality`).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from sweeps.errors import ModelLoadError
from sweeps.train.models import ModelSource, _hub_hint, head_config

TIMM_PREFIX = "timm:"


def timm_location(spec: str) -> str:
    """``timm:resnet18.a1_in1k`` → ``timm/resnet18.a1_in1k`` (the hub id transformers' timm wrapper loads)."""
    name = spec[len(TIMM_PREFIX) :]
    return name if "/" in name else f"timm/{name}"


def require_timm(spec: str) -> None:
    """A clear error for ``timm:<name>`` without an importable ``timm`` (it also needs a working torchvision)."""
    if importlib.util.find_spec("timm") is None:
        raise ModelLoadError(f"task.model: {spec!r} needs the timm package (pip install 'freeze-sweeps[timm]')")
    try:
        import timm  # noqa: F401
    except Exception as exc:  # e.g. a torchvision wheel built for another torch
        raise ModelLoadError(f"task.model: {spec!r}: timm is installed but cannot be imported: {exc}") from exc


def is_image_model(source: ModelSource) -> bool:
    """Whether the checkpoint's config is a vision classifier (its ``model_type`` has an image-classification class,
    or it is a timm model)."""
    if source.spec.startswith(TIMM_PREFIX):
        return True
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(source.location, revision=source.revision)
    except Exception as exc:
        raise _hub_hint(source, exc) from exc
    return config.model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES


def resolve_modality(spec: Any, source: ModelSource) -> str:
    """``text`` or ``image``: ``task.modality`` when set; with ``auto`` image when the data has images
    (``data.image_column`` or ``source: imagefolder``), else when the model is a vision classifier, else text."""
    modality = getattr(spec.task, "modality", "auto")
    if modality != "auto":
        return modality
    if spec.task.data.has_images or is_image_model(source):
        return "image"
    return "text"


def load_image_processor(source: ModelSource) -> Any:
    """The checkpoint's image processor (resize, crop, rescale, normalise exactly as the model was trained).

    Without torchvision (the CPU machines cannot import it) the PIL backend is asked for explicitly: transformers
    would fall back to it anyway, with a warning per load.
    """
    from transformers import AutoImageProcessor

    if source.spec.startswith(TIMM_PREFIX):
        require_timm(source.spec)
    backend = None if _torchvision_works() else "pil"
    try:
        return AutoImageProcessor.from_pretrained(source.location, revision=source.revision, backend=backend)
    except Exception as exc:
        raise _hub_hint(source, exc) from exc


def load_saved_image_processor(folder: str) -> Any:
    """A saved study model's image processor (``predict``), with the same backend choice as in training."""
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(folder, backend=None if _torchvision_works() else "pil")


def _torchvision_works() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


def load_image_classifier(source: ModelSource, label_names: list[str]) -> Any:
    """An image classifier with a fresh head of ``len(label_names)`` outputs and readable ``id2label``.

    ``ignore_mismatched_sizes``: an ImageNet checkpoint's 1000-class head is replaced by a new one of the right size
    (and logged by transformers), rather than failing to load.
    """
    from transformers import AutoModelForImageClassification

    if source.spec.startswith(TIMM_PREFIX):
        require_timm(source.spec)
    try:
        return AutoModelForImageClassification.from_pretrained(
            source.location, revision=source.revision, **head_config(label_names)
        )
    except Exception as exc:
        raise _hub_hint(source, exc) from exc
