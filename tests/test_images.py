"""Image classification through the sweep runner (issue 13): data, models, BatchNorm, cache decision, predict, CLI.

Everything is generated locally: coloured shapes and tiny random-init ResNet/ViT checkpoints from
``scripts/make_shapes.py`` (the study example's own generator), so the real ``from_pretrained`` paths run.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from make_shapes import LABELS, make_shapes, make_tiny_resnet, make_tiny_vit
from PIL import Image

from sweeps.data import load_task_data
from sweeps.data.images import ImageCollator, augment_pixels, image_split_key
from sweeps.errors import DataError, ModelLoadError, SpecError


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, per_class=8, validation_per_class=4, test=6, size=16)
    make_tiny_resnet(root / "tiny-resnet", size=16)
    return root


def _cfg(**kw: object) -> SimpleNamespace:
    base = {"source": "auto", "train": None, "validation": None, "test": None, "label_column": "label",
            "validation_fraction": 0.25, "shuffle_seed": 0, "image_column": None}
    return SimpleNamespace(**{**base, **kw})


# -- data ---------------------------------------------------------------------------------------------------------


def test_imagefolder_reads_labels_from_subfolders(shapes: Path) -> None:
    cfg = _cfg(source="imagefolder", train=str(shapes / "train"), validation=str(shapes / "validation"))
    data = load_task_data(cfg)
    assert data.label_names == sorted(LABELS)
    assert len(data.train) == 24 and len(data.validation) == 12
    row = data.train[0]
    assert Path(row["image"]["path"]).is_file() and Path(row["image"]["path"]).parent.name == data.label_names[
        row["label"]]
    assert len(row["image_digest"]) == 64


def test_csv_paths_are_relative_to_the_csv_and_content_is_in_the_fingerprint(shapes: Path, tmp_path: Path) -> None:
    files = sorted((shapes / "train").glob("*/*.png"))
    folder = tmp_path / "csvdata"
    (folder / "img").mkdir(parents=True)
    for f in files:
        (folder / "img" / f"{f.parent.name}-{f.name}").write_bytes(f.read_bytes())
    frame = pd.DataFrame({"file": [f"img/{f.parent.name}-{f.name}" for f in files],
                          "label": [f.parent.name for f in files]})
    frame.to_csv(folder / "train.csv", index=False)
    cfg = _cfg(train=str(folder / "train.csv"), image_column="file")
    first = load_task_data(cfg)
    assert len(first.train) + len(first.validation) == len(files)
    # same paths, different pixels: the fingerprint (and every cache key built on it) changes
    victim = folder / "img" / f"{files[0].parent.name}-{files[0].name}"
    Image.new("RGB", (16, 16), (1, 2, 3)).save(victim)
    assert load_task_data(cfg).fingerprint != first.fingerprint


def test_datasets_image_feature_from_python(shapes: Path) -> None:
    files = sorted((shapes / "train").glob("*/*.png"))
    ds = datasets.Dataset.from_dict(
        {"img": [{"bytes": f.read_bytes(), "path": None} for f in files], "label": [f.parent.name for f in files]},
        features=datasets.Features({"img": datasets.Image(), "label": datasets.Value("string")}),
    )
    data = load_task_data(_cfg(train="unused", image_column="img"), dataframe=ds)
    assert data.num_labels == 3
    assert data.train[0]["image"]["bytes"] is not None  # embedded bytes (as hub datasets have), no path needed


@pytest.mark.parametrize("problem", ["missing", "unreadable", "mode"])
def test_bad_images_name_the_file_and_the_row(shapes: Path, tmp_path: Path, problem: str) -> None:
    good = [f for label in LABELS for f in sorted((shapes / "train" / label).glob("*.png"))[:2]]
    rows = [(str(f), f.parent.name) for f in good]
    bad = tmp_path / "bad.png"
    if problem == "unreadable":
        bad.write_bytes(b"not a png at all")
    elif problem == "mode":
        Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(bad)  # 16-bit grey: mode I;16
    rows.insert(3, (str(bad), "circle"))
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(DataError) as err:
        load_task_data(_cfg(train=str(tmp_path / "train.csv"), image_column="path"))
    message = str(err.value)
    assert "bad.png" in message and "row 4" in message and "data.image_column" in message
    expected = {"missing": "does not exist", "unreadable": "not a readable image", "mode": "I;16"}[problem]
    assert expected in message


def test_missing_image_column_lists_the_columns(shapes: Path, tmp_path: Path) -> None:
    pd.DataFrame({"file": ["a.png"], "label": ["x"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match=r"no column 'image' \(data.image_column\); columns found: 'file'"):
        load_task_data(_cfg(train=str(tmp_path / "t.csv"), image_column="image"))


# -- batches -----------------------------------------------------------------------------------------------------


def test_eval_batches_are_deterministic_and_augmentation_is_seeded(shapes: Path) -> None:
    from sweeps.train.image_models import load_image_processor
    from sweeps.train.models import resolve_model

    processor = load_image_processor(resolve_model(str(shapes / "tiny-resnet")))
    data = load_task_data(_cfg(source="imagefolder", train=str(shapes / "train")))
    train = data.train.rename_column("label", "labels")  # as StudyContext hands splits to the loaders
    examples = [train[i] for i in range(4)]
    plain = ImageCollator(processor)
    first, second = plain(examples), plain(examples)
    assert first["pixel_values"].shape == (4, 3, 16, 16)
    assert torch.equal(first["pixel_values"], second["pixel_values"])
    assert first["labels"].tolist() == [ex["labels"] for ex in examples]
    augmented = ImageCollator(processor, augment=True, seed=3)(examples)["pixel_values"]
    again = ImageCollator(processor, augment=True, seed=3)(examples)["pixel_values"]
    assert augmented.shape == first["pixel_values"].shape
    assert torch.equal(augmented, again) and not torch.equal(augmented, first["pixel_values"])
    # the split key follows the processor's configuration
    processor.size = {"height": 8, "width": 8}
    assert image_split_key(processor, data.fingerprint) != image_split_key(
        load_image_processor(resolve_model(str(shapes / "tiny-resnet"))), data.fingerprint)


def test_augmentation_keeps_pixels_of_the_image() -> None:
    pixels = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    out = augment_pixels(pixels, torch.Generator().manual_seed(0))
    assert out.shape == pixels.shape
    assert set(out.flatten().tolist()) <= set(pixels.flatten().tolist())  # crops and flips, no new values


# -- models -------------------------------------------------------------------------------------------------------


def test_image_model_gets_a_fresh_head(shapes: Path) -> None:
    from transformers import ResNetForImageClassification

    from sweeps.train.image_models import is_image_model
    from sweeps.train.models import load_classifier, resolve_model

    source = resolve_model(str(shapes / "tiny-resnet"))
    assert is_image_model(source)
    model = load_classifier(source, ["a", "b"])  # saved with 3 labels: the head is replaced
    assert isinstance(model, ResNetForImageClassification)
    assert model.config.id2label == {0: "a", 1: "b"}
    assert model(pixel_values=torch.zeros(1, 3, 16, 16)).logits.shape == (1, 2)


def test_vit_discovery_through_the_loader(tmp_path: Path) -> None:
    from strategies import discover_layers
    from sweeps.train.models import load_classifier, resolve_model

    model = load_classifier(resolve_model(str(make_tiny_vit(tmp_path / "vit", size=16))), ["a", "b"])
    layer_map = discover_layers(model)
    assert layer_map.names == ["embeddings", "layer.0", "layer.1", "head"]


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed: the error path is moot")
def test_timm_without_timm_is_a_clear_error() -> None:
    from sweeps.train.models import load_classifier, resolve_model

    source = resolve_model("timm:resnet18.a1_in1k")
    assert source.location == "timm/resnet18.a1_in1k"
    with pytest.raises(ModelLoadError, match="needs the timm package"):
        load_classifier(source, ["a", "b"])


def _timm_imports() -> bool:
    try:
        import timm  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _timm_imports(), reason="timm cannot be imported here (it needs torchvision, whose wheel "
                    "does not import against this CPU build of torch)")
def test_timm_model_loads_and_maps(tmp_path: Path) -> None:  # pragma: no cover - needs timm
    import timm
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    from strategies import discover_layers
    from sweeps.train.models import load_classifier, resolve_model

    assert timm.list_models("resnet18*")
    config = TimmWrapperConfig(architecture="resnet18", num_labels=3)
    TimmWrapperForImageClassification(config).save_pretrained(tmp_path / "timm-resnet")
    model = load_classifier(resolve_model(str(tmp_path / "timm-resnet")), ["a", "b"])
    assert discover_layers(model).num_layers >= 2


def test_config_checks() -> None:
    from sweeps.config import parse_spec

    base = {"name": "x", "task": {"model": "m", "data": {"train": "t.csv"}}, "strategies": [{"name": "none"}]}
    with pytest.raises(SpecError, match=r"task\.data\.image_column"):
        parse_spec({**base, "task": {"model": "m", "modality": "text",
                                     "data": {"train": "t.csv", "image_column": "img"}}}, Path("/tmp"))
    with pytest.raises(SpecError, match=r"task\.data\.augment"):
        parse_spec({**base, "task": {"model": "m", "data": {"train": "t.csv", "augment": True}}}, Path("/tmp"))
    spec = parse_spec({**base, "task": {"model": "m", "data": {"source": "imagefolder", "train": "train"}}},
                      Path("/tmp"))
    assert spec.task.data.has_images


# -- trials -------------------------------------------------------------------------------------------------------


def _study(shapes: Path, tmp_path: Path, **training: object) -> Path:
    study = {
        "name": "shapes",
        "task": {
            "model": str(shapes / "tiny-resnet"),
            "data": {"source": "imagefolder", "train": str(shapes / "train"),
                     "validation": str(shapes / "validation"), "test": str(shapes / "test")},
        },
        "training": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-2, "seed": 3, "train_bn": False, **training},
        "strategies": [{"name": "none"}, {"name": "bottom_n", "params": {"n": 1}}],
        "optuna": {"n_trials": 2, "pruner": "none"},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def _bn_buffers(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    names = ("running_mean", "running_var", "num_batches_tracked")
    return {k: v for k, v in state.items() if k.startswith(prefix) and k.rsplit(".", 1)[-1] in names}


def test_frozen_batchnorm_statistics_stay_bit_identical(shapes: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from sweeps.config import load_spec
    from sweeps.train import StudyContext
    from sweeps.train.trial import train_once

    spec = load_spec(_study(shapes, tmp_path))
    ctx = StudyContext.prepare(spec, tmp_path / "out")
    assert ctx.modality == "image"
    training = spec.training  # nothing searched: the study file's values
    result, verified, _, _, stats = train_once(
        ctx, "bottom_n", {"n": 1}, training, ctx.tokenized["train"], ctx.tokenized["validation"],
        {"train": ctx.split_keys["train"], "eval": ctx.split_keys["validation"]}, save_to=tmp_path / "saved")
    assert verified and result.epochs
    assert stats["mode"] == "cache" and stats["built"]  # the frozen stem + stage 0 were served from the cache
    before = load_file(str(shapes / "tiny-resnet" / "model.safetensors"))
    after = load_file(str(tmp_path / "saved" / "model.safetensors"))
    frozen = {**_bn_buffers(before, "resnet.embedder"), **_bn_buffers(before, "resnet.encoder.stages.0")}
    assert frozen
    for name, value in frozen.items():
        assert torch.equal(after[name], value), name  # eval-mode BatchNorm in frozen blocks: not one bit moved
    trained = _bn_buffers(before, "resnet.encoder.stages.1")
    assert any(not torch.equal(after[k], v) for k, v in trained.items())  # the trainable stage's statistics moved


def test_augmentation_is_for_training_batches_only_and_turns_the_cache_off(shapes: Path, tmp_path: Path) -> None:
    from strategies import discover_layers
    from sweeps.config import load_spec
    from sweeps.train import StudyContext
    from sweeps.train.trial import _loader, _make_runner

    spec = load_spec(_study(shapes, tmp_path), overrides=["task.data.augment=true"])
    ctx = StudyContext.prepare(spec, tmp_path / "out")
    train, validation = ctx.tokenized["train"], ctx.tokenized["validation"]
    train_loader = _loader(ctx, train, 8, True, 1, False)
    eval_loader = _loader(ctx, validation, 8, False, 1, False)
    assert train_loader.collate_fn.augment and not eval_loader.collate_fn.augment
    first, again = next(iter(eval_loader)), next(iter(eval_loader))
    assert torch.equal(first["pixel_values"], again["pixel_values"])  # evaluation stays deterministic
    model = ctx.build_model()
    layer_map = discover_layers(model)
    runner = _make_runner(ctx, model, layer_map, spec.training, {"train": "k", "eval": "k2"}, train, validation)
    assert runner.stats["mode"] == "direct" and "augment" in runner.stats["reason"]


def test_cross_validation_on_images(shapes: Path, tmp_path: Path) -> None:
    from sweeps.config import load_spec
    from sweeps.train import StudyContext
    from sweeps.train.trial import run_trial

    spec = load_spec(_study(shapes, tmp_path), overrides=["task.cv.folds=2", "task.data.validation=null"])
    ctx = StudyContext.prepare(spec, tmp_path / "out")
    training = spec.training
    outcome = run_trial(ctx, "none", {}, training)
    assert len(outcome.fold_metrics) == 2
    assert outcome.eval_probs.shape == (len(ctx.tokenized["train"]), 3)
    assert "oof_accuracy" in outcome.metrics


# -- the CLI, end to end ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_image_study_through_the_cli(shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    import optuna
    from mlflow.tracking import MlflowClient

    from sweeps import api
    from sweeps.cli import main

    shapes = Path(shutil.copytree(shapes, tmp_path / "shapes"))  # this test damages an image at the end
    study = _study(shapes, tmp_path)
    out = tmp_path / "out"
    assert main(["run", str(study), "--output", str(out), "--no-report"]) == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("shapes").experiment_id
    trials = [r for r in client.search_runs([exp]) if r.data.tags.get("sweeps.role") == "trial"]
    assert len(trials) == 2
    for run in trials:
        assert run.data.tags["frozen_params_verified"] == "true"
        assert {"accuracy", "f1_macro", "eval_loss", "peak_memory_mb", "lr/head"} <= set(run.data.metrics)
        if run.data.tags["sweeps.strategy"] == "bottom_n":  # a frozen stem and stage: cached (built here, or served
            # from the process-wide LRU when an earlier test of this module built the same entry)
            used = int(run.data.tags["cache.capture_batches"]) + int(run.data.tags["cache.served_batches"])
            assert run.data.tags["cache.mode"] == "cache" and used > 0
        else:  # the stem trains: nothing to cache, and the reason is recorded
            assert run.data.tags["cache.mode"] == "direct" and "embedding side trains" in run.data.tags["cache.reason"]

    assert main(["report", str(study), "--output", str(out)]) == 0
    assert (out / "report" / "index.html").is_file()

    assert main(["predict", str(study), "--output", str(out)]) == 0  # task.data.test: a folder of images
    submission = pd.read_csv(out / "submission.csv", dtype=str)
    assert list(submission.columns) == ["id", "label"]
    assert sorted(submission["id"]) == [f"t{n:04d}" for n in range(6)]
    assert set(submission["label"]) <= set(LABELS)

    csv_out = tmp_path / "from_csv.csv"
    assert main(["predict", str(study), "--output", str(out), "--test", str(shapes / "test.csv"),
                 "--out", str(csv_out), "--proba"]) == 0
    probs = pd.read_csv(csv_out, dtype={"id": str})
    assert sorted(probs.columns[1:]) == sorted(LABELS)
    np.testing.assert_allclose(probs[list(LABELS)].sum(axis=1), 1.0, atol=1e-5)

    # another trial: retrained (an image model too), and a labelled image folder is scored like training scores it
    best_trial = json.loads((out / "models" / "best.json").read_text())["trial"]
    other = 1 - best_trial
    capsys.readouterr()
    assert main(["predict", str(study), "--output", str(out), "--trial", str(other), "--test",
                 str(shapes / "validation"), "--out", str(tmp_path / "val.csv")]) == 0
    captured = capsys.readouterr()
    assert f"trial {other}'s model was not kept; retraining" in captured.err and "as recorded" in captured.err
    recorded = optuna.load_study(study_name="shapes", storage=f"sqlite:///{out / 'optuna.db'}").trials[other]
    accuracy = recorded.user_attrs["metric.accuracy"]
    assert f"trial {other}: accuracy={accuracy:.4f} " in captured.out
    ids = pd.read_csv(tmp_path / "val.csv", dtype=str)["id"]  # the classes reuse file names: ids are <label>/<name>
    assert ids.is_unique and all(i.split("/")[0] in LABELS for i in ids)

    # the notebook API: the same predictions for the same images
    frame = api.predict(out, [str(shapes / "test" / f"{i}.png") for i in sorted(submission["id"])])
    by_id = dict(zip(submission["id"], submission["label"], strict=True))
    assert frame["prediction"].tolist() == [by_id[i] for i in sorted(submission["id"])]
    info = json.loads((out / "models" / "best.json").read_text())
    assert (out / "models" / info.get("path", f"trial_{info['trial']}") / "preprocessor_config.json").is_file()

    # a damaged image found on resume: a clear error naming the file, and the completed trials are all still there
    damaged = sorted((shapes / "train" / "square").glob("*.png"))[2]
    damaged.write_bytes(b"\x89PNG truncated")
    capsys.readouterr()
    assert main(["run", str(study), "--output", str(out), "--no-report", "--set", "optuna.n_trials=3"]) != 0
    error = capsys.readouterr().err
    assert str(damaged) in error and "not a readable image" in error
    stored = optuna.load_study(study_name="shapes", storage=f"sqlite:///{out / 'optuna.db'}")
    assert [t.state for t in stored.trials] == [optuna.trial.TrialState.COMPLETE] * 2


def test_inspect_shows_an_image_model_s_groups(shapes: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sweeps.cli import main

    assert main(["inspect", str(shapes / "tiny-resnet"), "--strategy", "bottom_n", "--param", "n=1"]) == 0
    text = capsys.readouterr().out
    assert "resnet.encoder.stages.0" in text and "resnet.pooler, classifier" in text
    assert "known layout for model_type='resnet'" in text
