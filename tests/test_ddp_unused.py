"""Parameters that never receive a gradient are never a reason for DDP to fail or hang (issue 12).

Two real ranks (``torch.distributed``, gloo on loopback, one CPU process each) train the tiny BERT with a mean-pooling
``task.head`` — its ``bert.pooler`` is never used — wrapped in ``DistributedDataParallel(find_unused_parameters=False)``
(DDP's fast default, which assumes every parameter that requires grad gets a gradient):

* with the unused parameters excluded first — by :func:`strategies.exclude_unused_parameters` (a user's own loop) or by
  ``FreezeController(exclude=...)`` (what a study trial does) — three optimizer steps complete on both ranks and leave
  the two ranks' parameters bit-identical, the pooler untouched;
* without the exclusion (the control) DDP fails with its "Expected to have finished reduction in the prior iteration"
  error: the failure the exclusion prevents is real, not assumed.

Every wait is bounded (process-group timeout, join timeout); children still alive at the end are killed.
"""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from tiny_models import VOCAB, bare_bert
from torch import nn

WORLD = 2
STEPS = 3
COLLECTIVE_TIMEOUT_S = 30  # a collective that waits longer fails instead of hanging
PROCESS_TIMEOUT_S = 120  # spawn + imports + training, on a shared 2-core machine
POOLER = ["bert.pooler.dense.bias", "bert.pooler.dense.weight"]
REDUCTION_ERROR = "Expected to have finished reduction in the prior iteration"


def _model() -> nn.Module:
    """The tiny BERT under a mean-pooling head: the same weights on every rank (``bare_bert`` seeds torch)."""
    from sweeps.train.custom_models import PooledClassifier

    return PooledClassifier(bare_bert(), 3, {"pooling": "mean", "hidden": [8], "activation": "tanh", "dropout": 0.0})


def _batch(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (4, 8), generator=gen)
    mask = torch.ones_like(ids)
    mask[:, 6:] = 0  # some padding: mean pooling must honour the mask
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (4,), generator=gen)}


def _loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return nn.functional.cross_entropy(logits, batch["labels"])


def _prepare(model: nn.Module, how: str) -> tuple[list[str], Any]:
    """Exclude the unused parameters the way ``how`` names; returns (excluded names, optimizer factory)."""
    from strategies import (
        FreezeController,
        build_strategy,
        discover_layers,
        exclude_unused_parameters,
        find_unused_parameters,
        make_optimizer_factory,
    )

    probe = _batch(seed=0)  # the same probe batch on every rank: every rank excludes the same names
    if how == "exclude_unused_parameters":
        names = exclude_unused_parameters(model, lambda m: _loss(m, probe))
        return sorted(names), lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    if how == "freeze_controller":
        layer_map = discover_layers(model)
        names = find_unused_parameters(model, lambda m: _loss(m, probe))
        ctl = FreezeController(model, layer_map, make_optimizer_factory("adamw"), base_lr=1e-2, weight_decay=0.1,
                               exclude=names)
        ctl.apply(build_strategy("none", {}).plan(layer_map, 0, 0))
        return sorted(ctl.excluded), lambda params: ctl.optimizer
    assert how == "nothing"
    return [], lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)


def _train(rank: int, how: str) -> dict[str, Any]:
    """One DDP run on this rank: ``STEPS`` optimizer steps on this rank's own batches."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model = _model()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    excluded, make_optimizer = _prepare(model, how)
    ddp = DistributedDataParallel(model, find_unused_parameters=False)
    optimizer = make_optimizer([p for p in ddp.parameters() if p.requires_grad])
    result: dict[str, Any] = {"excluded": excluded, "steps": 0}
    try:
        for step in range(STEPS):
            optimizer.zero_grad(set_to_none=True)
            _loss(ddp, _batch(seed=1000 + 10 * step + rank)).backward()  # different data per rank
            optimizer.step()
            result["steps"] = step + 1
    except RuntimeError as exc:
        result["error"] = str(exc)
        return result
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(WORLD)]
    dist.all_gather(gathered, flat)
    result["ranks_identical"] = all(torch.equal(g, gathered[0]) for g in gathered)
    params = dict(model.named_parameters())
    result["moved"] = sorted(n for n, p in params.items() if not torch.equal(p.detach(), initial[n]))
    result["pooler_untouched"] = all(torch.equal(params[n].detach(), initial[n]) for n in POOLER)
    return result


def _worker(rank: int, port: int, hows: list[str], out: str) -> None:
    """A rank: joins the gloo group on loopback, runs each case in ``hows`` and writes what happened to a file."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    results: dict[str, Any] = {}
    try:
        for how in hows:
            results[how] = _train(rank, how)
    finally:
        Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_ranks(hows: list[str], out: Path) -> list[dict[str, Any]]:
    """Both ranks, each a spawned process; fails (after killing them) when they do not finish in time."""
    ctx = mp.get_context("spawn")
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(rank, port, hows, str(out)), daemon=True) for rank in range(WORLD)]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    try:
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        hung = [rank for rank, proc in enumerate(procs) if proc.is_alive()]
        assert not hung, f"DDP ranks {hung} still running after {PROCESS_TIMEOUT_S}s ({hows})"
        assert [proc.exitcode for proc in procs] == [0] * WORLD, [proc.exitcode for proc in procs]
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(WORLD)]


@pytest.mark.slow
def test_ddp_trains_when_the_unused_pooler_is_excluded_and_fails_when_it_is_not(tmp_path: Path) -> None:
    ok_cases = ["exclude_unused_parameters", "freeze_controller"]
    ranks = _run_ranks([*ok_cases, "nothing"], tmp_path)
    for rank, results in enumerate(ranks):
        for how in ok_cases:
            r = results[how]
            assert "error" not in r, (rank, how, r.get("error"))
            assert r["excluded"] == POOLER and r["steps"] == STEPS, (rank, how, r)
            assert r["ranks_identical"], (rank, how)  # the gradients were averaged over both ranks, every step
            assert r["pooler_untouched"] and "bert.encoder.layer.0.output.dense.weight" in r["moved"], (rank, how)
            assert "head.1.weight" in r["moved"] and not set(POOLER) & set(r["moved"])
        # the control: the same model and loop without the exclusion is DDP's classic failure, on the second step
        control = results["nothing"]
        assert control["excluded"] == [] and control["steps"] == 1, (rank, control)
        assert REDUCTION_ERROR in control["error"], control["error"]
