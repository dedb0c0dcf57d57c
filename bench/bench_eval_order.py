"""Evaluation batched longest first against split order: the same predictions for less padding?

Every epoch of every trial evaluates the validation split. Batches padded to their own longest row waste the padding
of the short rows they hold; sorted by length, each batch pads to lengths close to its own. This script evaluates one
model on the same tokenised split both ways (the project's collator and the same batch size), interleaved and
repeated in one process, and prints the wall-time ratio, the padded tokens computed, and the largest difference of
the predicted probabilities once both are in split order.

    python bench/bench_eval_order.py --data ../shared/data/sst2
    python bench/bench_eval_order.py --data ../shared/data/ag_news --file test.tsv --text-column text \
        --rows 2000 --max-length 128
    python bench/bench_eval_order.py --smoke --model ../inputs/model --data ../inputs/data --out eval-out
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_trainer import MODEL, bench_inputs, cli_model, cli_path  # noqa: E402


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader: DataLoader) -> tuple[np.ndarray, float, int]:
    """Probabilities in the loader's order, seconds, padded tokens computed."""
    start, tokens, probs = time.perf_counter(), 0, []
    for batch in loader:
        tokens += batch["input_ids"].numel()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        probs.append(torch.softmax(logits.float(), -1))
    return torch.cat(probs).numpy(), time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=cli_path, help="a folder with the split to evaluate")
    parser.add_argument("--file", default="dev.tsv", help="the split's file in --data (.tsv or .csv)")
    parser.add_argument("--text-column", default="sentence")
    parser.add_argument("--rows", type=int, help="rows of the split (default all; 32 with --smoke)")
    parser.add_argument("--model", type=cli_model, default=MODEL)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64, help="training.eval_batch_size's default")
    parser.add_argument("--repeats", type=int, help="interleaved repeats (default 5; 1 with --smoke)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=cli_path, default=cli_path("bench-out/eval-order"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: runs every step, measures nothing")
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.smoke else 5)
    args.rows = args.rows or (32 if args.smoke else None)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    bench_inputs(parser, args)

    from datasets import Dataset

    from sweeps.data import make_collator
    from sweeps.train.models import load_classifier, load_tokenizer, resolve_model
    from sweeps.train.trial import eval_order

    path = args.data / args.file
    frame = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", quoting=3 if path.suffix == ".tsv" else 0)
    texts = frame[args.text_column].astype(str).tolist()[: args.rows]
    source = resolve_model(args.model)
    tokenizer = load_tokenizer(source)
    model = load_classifier(source, ["a", "b"]).eval()
    encoded = tokenizer(texts, truncation=True, max_length=args.max_length)
    ds = Dataset.from_dict({**encoded, "length": [len(x) for x in encoded["input_ids"]]})
    order = eval_order(ds)
    rows = ds.select_columns([c for c in ds.column_names if c != "length"])
    collate = make_collator(tokenizer)
    loaders = {"split_order": DataLoader(rows, batch_size=args.batch_size, collate_fn=collate),
               "longest_first": DataLoader(rows, batch_size=args.batch_size, collate_fn=collate,
                                           sampler=order.tolist())}
    times: dict[str, list[float]] = {name: [] for name in loaders}
    results: dict[str, Any] = {}
    for r in range(args.repeats):
        for name in loaders if r % 2 == 0 else list(loaders)[::-1]:  # alternate which runs first
            probs, seconds, tokens = evaluate(model, loaders[name])
            times[name].append(seconds)
            results[name] = {"probs": probs, "tokens": tokens}
    back = np.empty_like(results["longest_first"]["probs"])
    back[order] = results["longest_first"]["probs"]
    ratios = [a / b for a, b in zip(times["split_order"], times["longest_first"], strict=True)]
    summary = {
        "file": str(path), "rows": len(texts), "batch_size": args.batch_size, "max_length": args.max_length,
        "seconds": times, "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "padded_tokens": {k: v["tokens"] for k, v in results.items()},
        "max_prob_diff": float(np.abs(back - results["split_order"]["probs"]).max()),
        "same_predictions": bool((back.argmax(1) == results["split_order"]["probs"].argmax(1)).all()),
    }
    tokens = summary["padded_tokens"]
    print(f"{path.name}, {len(texts)} rows, batch {args.batch_size}: split order / longest first wall time = "
          f"{summary['ratio_median']:.2f}x (min {summary['ratio_min']:.2f}, max {summary['ratio_max']:.2f}, "
          f"{args.repeats} repeats); padded tokens {tokens['split_order']:,} vs {tokens['longest_first']:,}; "
          f"max |prob diff| {summary['max_prob_diff']:.1e}, same predictions {summary['same_predictions']}")
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
