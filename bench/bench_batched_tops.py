"""Batched trainable tops on a shared frozen prefix (a lever of issue 15): is it worth building into the runner?

K trials that differ only in the trainable top's learning rate see the same cached prefix activations. Trained one
after another, each pass reads the activations and runs its top; trained side by side, one pass runs all K tops at
once (the K parameter sets stacked, ``torch.func.functional_call`` under ``vmap``: one batched matmul per layer
instead of K), each top with its own AdamW at its own LR and its own gradient clipping. This script measures both on
the same activations in one process, interleaved and repeated, for a top of the blocks above the frozen prefix +
pooler + classifier (``--depths``: the prefix depth; the model's depth means head only), and checks the batched
tops train *exactly* like the one-by-one ones (largest difference of the evaluation logits, and the same accuracy).

Dropout is off in both arms (the top in eval mode): vmap draws one set of masks for the stacked models, not the masks
each trial would draw alone, so with dropout the two are different trainings, not the same one batched.

    python bench/bench_batched_tops.py --data ../shared/data/sst2
    python bench/bench_batched_tops.py --data ../shared/data/sst2 --attention eager --depths 4
    python bench/bench_batched_tops.py --smoke --model ../inputs/model --data ../inputs/data --out tops-out
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_trainer import MODEL, bench_inputs, cli_model, cli_path  # noqa: E402

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # prefix output, additive attention mask, labels


class Top(nn.Module):
    """The trainable top of a BERT classifier above a frozen prefix of ``depth`` blocks: the remaining blocks, the
    pooler and the classifier, run on the prefix's output (as the activation cache serves it)."""

    def __init__(self, model: nn.Module, depth: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(copy.deepcopy(list(model.bert.encoder.layer[depth:])))
        self.pooler = copy.deepcopy(model.bert.pooler)
        self.classifier = copy.deepcopy(model.classifier)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            out = block(hidden, attention_mask=mask)
            hidden = out[0] if isinstance(out, tuple) else out
        return self.classifier(self.pooler(hidden))


def read_tsv(path: Path, rows: int) -> tuple[list[str], list[int]]:
    with open(path, newline="") as f:
        records = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:rows]
    return [r["sentence"] for r in records], [int(r["label"]) for r in records]


@torch.no_grad()
def prefix_batches(model: nn.Module, tokenizer: Any, texts: list[str], labels: list[int], depth: int,
                   batch_size: int) -> list[Batch]:
    """The frozen prefix's output for every batch, computed once (what the activation cache holds)."""
    batches = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], padding="longest", truncation=True, max_length=64,
                        return_tensors="pt")
        out = model.bert(**enc, output_hidden_states=True)
        mask = (1.0 - enc["attention_mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min
        batches.append((out.hidden_states[depth], mask, torch.tensor(labels[i:i + batch_size])))
    return batches


def _clip_and_step(params: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def train_one_by_one(tops: list[Top], lrs: list[float], train: list[Batch]) -> None:
    loss_fn = nn.CrossEntropyLoss()
    for top, lr in zip(tops, lrs, strict=True):
        params = list(top.parameters())
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        for hidden, mask, labels in train:
            loss_fn(top(hidden, mask), labels).backward()
            _clip_and_step(params, optimizer)


def train_side_by_side(tops: list[Top], lrs: list[float], train: list[Batch]) -> None:
    """One pass: the K tops' parameters stacked along a new first dimension for every step (so each top keeps its
    own leaf tensors, optimizer and clipping), all K logits from one vmapped call, the sum of the K losses backward
    (each top's gradient is its own loss's)."""
    base = copy.deepcopy(tops[0]).to("meta")
    names = [n for n, _ in tops[0].named_parameters()]
    per_top = [dict(t.named_parameters()) for t in tops]
    optimizers = [torch.optim.AdamW(list(p.values()), lr=lr, weight_decay=0.01)
                  for p, lr in zip(per_top, lrs, strict=True)]

    def call(params: dict[str, torch.Tensor], hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return functional_call(base, params, (hidden, mask))

    batched = vmap(call, in_dims=(0, None, None))
    for hidden, mask, labels in train:
        stacked = {n: torch.stack([p[n] for p in per_top]) for n in names}
        logits = batched(stacked, hidden, mask)  # [K, batch, classes]
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.repeat(len(tops)), reduction="sum")
        (loss / len(labels)).backward()
        for params, optimizer in zip(per_top, optimizers, strict=True):
            _clip_and_step(list(params.values()), optimizer)


@torch.no_grad()
def evaluate(top: Top, batches: list[Batch]) -> tuple[torch.Tensor, float]:
    logits = torch.cat([top(h, m) for h, m, _ in batches])
    labels = torch.cat([y for _, _, y in batches])
    return logits, float((logits.argmax(-1) == labels).float().mean())


def measure_depth(model: nn.Module, depth: int, lrs: list[float], train: list[Batch], dev: list[Batch],
                  repeats: int) -> dict[str, Any]:
    """Interleaved repeats of both arms from the same initial top; the ratio is one-by-one time / side-by-side."""
    initial = Top(model, depth).eval()
    rows: list[dict[str, float]] = []
    exact: dict[str, Any] = {}
    for r in range(repeats):
        times = {}
        trained = {}
        arms = (("one_by_one", train_one_by_one), ("side_by_side", train_side_by_side))
        for arm, train_fn in arms if r % 2 == 0 else arms[::-1]:  # alternate which arm runs first
            tops = [copy.deepcopy(initial) for _ in lrs]
            start = time.perf_counter()
            train_fn(tops, lrs, train)
            times[arm] = time.perf_counter() - start
            trained[arm] = tops
        rows.append({**times, "ratio": times["one_by_one"] / times["side_by_side"]})
        if r == 0:
            diffs, same_accuracy = [], True
            for a, b in zip(trained["one_by_one"], trained["side_by_side"], strict=True):
                (la, acc_a), (lb, acc_b) = evaluate(a, dev), evaluate(b, dev)
                diffs.append(float((la - lb).abs().max()))
                same_accuracy &= acc_a == acc_b
            accuracies = [evaluate(t, dev)[1] for t in trained["one_by_one"]]
            exact = {"max_logit_diff": max(diffs), "same_accuracy": same_accuracy, "accuracies": accuracies}
    ratios = [row["ratio"] for row in rows]
    return {
        "depth": depth,
        "trainable_blocks": len(initial.blocks),
        "trainable_params": sum(p.numel() for p in initial.parameters()),
        "k": len(lrs),
        "repeats": rows,
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        **exact,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=cli_path, help="SST-2 folder (train.tsv, dev.tsv)")
    parser.add_argument("--model", type=cli_model, default=MODEL)
    parser.add_argument("--rows", type=int, help="training rows, one epoch (default 1024; 64 with --smoke)")
    parser.add_argument("--k", type=int, default=4, help="trials trained side by side")
    parser.add_argument("--depths", default="4,6", help="frozen prefix depths (blocks); the model's depth: head only")
    parser.add_argument("--repeats", type=int, help="interleaved repeats (default 3; 1 with --smoke)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--attention", choices=("sdpa", "eager"), default="sdpa",
                        help="attention of both arms (on CPU, SDPA has no vmap batching rule: vmap loops over it)")
    parser.add_argument("--out", type=cli_path, default=cli_path("bench-out/batched-tops"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: runs every step, measures nothing")
    args = parser.parse_args()
    args.rows = args.rows or (64 if args.smoke else 1024)
    args.repeats = args.repeats or (1 if args.smoke else 3)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    bench_inputs(parser, args)

    from sweeps.train.models import load_classifier, load_tokenizer, resolve_model

    source = resolve_model(args.model)
    tokenizer = load_tokenizer(source)
    torch.manual_seed(0)
    model = load_classifier(source, ["negative", "positive"]).eval()
    model.set_attn_implementation(args.attention)
    texts, labels = read_tsv(args.data / "train.tsv", args.rows)
    dev_texts, dev_labels = read_tsv(args.data / "dev.tsv", max(32, args.rows // 4))
    lrs = [float(x) for x in torch.logspace(-5, -3.5, args.k)]
    results: dict[str, Any] = {"model": args.model, "rows": len(texts), "threads": args.threads, "lrs": lrs,
                               "attention": args.attention, "depths": []}
    for depth in (int(d) for d in args.depths.split(",")):
        train = prefix_batches(model, tokenizer, texts, labels, depth, 32)
        dev = prefix_batches(model, tokenizer, dev_texts, dev_labels, depth, 64)
        row = measure_depth(model, depth, lrs, train, dev, args.repeats)
        results["depths"].append(row)
        print(f"prefix depth {depth} ({row['trainable_blocks']} trainable blocks + pooler + classifier, "
              f"{row['trainable_params']:,} params), K={row['k']}: one-by-one / side-by-side wall time = "
              f"{row['ratio_median']:.2f}x (min {row['ratio_min']:.2f}, max {row['ratio_max']:.2f}, "
              f"{len(row['repeats'])} repeats); exact: max |logit diff| {row['max_logit_diff']:.2e}, "
              f"same accuracy {row['same_accuracy']}", flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
