"""Shared builders for end-to-end tests: a tiny local BERT checkpoint, a tiny dataset and a study file.

Everything is made locally (no hub): a 2-layer, hidden-32 BERT with a word-level vocabulary covering the generated
sentences, saved with ``save_pretrained`` so the real ``from_pretrained`` path is exercised.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import yaml

POSITIVE = ["good", "great", "fine", "lovely", "superb", "nice"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring", "weak"]
SUBJECTS = ["the film", "the plot", "the acting", "the story", "the food", "the service"]


def make_dataset(folder: Path, n_train: int = 80, n_validation: int = 40, seed: int = 0, noise: float = 0.1) -> Path:
    """train.csv / validation.csv / test.csv with columns id,text,label (labels ``pos``/``neg``)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def row(i: int) -> tuple[int, str, str]:
        label = rng.random() < 0.5
        word = rng.choice(POSITIVE if label else NEGATIVE)
        negated = rng.random() < 0.3
        text = f"{rng.choice(SUBJECTS)} was {'not ' if negated else ''}{word}"
        truth = label != negated
        if rng.random() < noise:
            truth = not truth
        return i, text, "pos" if truth else "neg"

    for name, n in (("train", n_train), ("validation", n_validation), ("test", 20)):
        rows = [row(i) for i in range(n)]
        lines = ["id,text" if name == "test" else "id,text,label"]
        lines += [f"{i},{t}" if name == "test" else f"{i},{t},{lab}" for i, t, lab in rows]
        (folder / f"{name}.csv").write_text("\n".join(lines) + "\n")
    return folder


def make_tiny_model(folder: Path, layers: int = 2, hidden: int = 32) -> Path:
    """A tiny BertForSequenceClassification + word-level tokenizer saved in ``folder``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    torch.manual_seed(0)  # the same tiny checkpoint in every test session: end-to-end results are reproducible

    folder.mkdir(parents=True, exist_ok=True)
    words = sorted({w for phrase in SUBJECTS for w in phrase.split()} | set(POSITIVE) | set(NEGATIVE) | {"was", "not"})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=64,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def write_study(path: Path, model: Path, data: Path, **overrides: Any) -> Path:
    """A small study file; ``overrides`` replace top-level sections (dicts are merged one level deep)."""
    study: dict[str, Any] = {
        "name": "tiny",
        "task": {
            "model": str(model),
            "max_length": 16,
            "data": {
                "train": str(data / "train.csv"),
                "validation": str(data / "validation.csv"),
                "test": str(data / "test.csv"),
                "id_column": "id",
            },
        },
        # a (narrow) searched LR: every trial is a new configuration, so none is skipped as a duplicate of another
        "training": {"epochs": 2, "batch_size": 16, "learning_rate": {"type": "float", "low": 4e-3, "high": 6e-3},
                     "seed": 7},
        "strategies": [{"name": "none"}, {"name": "bottom_n", "params": {"n": {"type": "int", "low": 1, "high": 2}}}],
        "optuna": {"n_trials": 2, "pruner": "none"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(study.get(key), dict):
            study[key] = {**study[key], **value}
        else:
            study[key] = value
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path
