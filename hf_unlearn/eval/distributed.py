"""Sharding evaluation work across processes (`accelerate launch`) and gathering the results on every rank.

Batches are formed once, identically on every rank (and identically to a one-process run), then dealt out
round-robin: batch `b` runs on rank `b % world_size`. Every example is therefore computed in exactly the same
padded batch as in a one-process run, so the gathered numbers equal the one-process numbers. Every rank runs the
same number of forward passes (a rank with no batch left repeats one and drops the result), which sharded models
(FSDP, DeepSpeed ZeRO-3) need, since each of their forward passes gathers weights from all ranks.
"""

from __future__ import annotations

import atexit
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch.distributed as dist
from tqdm.auto import tqdm


T = TypeVar("T")


def process_layout(accelerator=None) -> tuple[int, int]:
    """`(process_index, num_processes)` from an `Accelerator`/`PartialState`, else from `torch.distributed`."""
    if accelerator is not None:
        return int(accelerator.process_index), int(accelerator.num_processes)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@functools.cache
def destroy_process_group_at_exit() -> None:
    """Destroy the default process group when Python exits, while the interpreter is still whole (registered once).

    A gloo process that exits with its group alive can abort in interpreter teardown ("terminate called without an
    active exception", SIGABRT) after finishing its work: 7 of 20 two-process launches did on a CPU machine, 0 of 20
    with the group destroyed. Entry points that set up the distributed state call this."""
    atexit.register(_destroy_process_group)


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather_objects(local: list, num_processes: int) -> list:
    """Concatenate every rank's list of picklable objects, in rank order, on every rank."""
    if num_processes == 1:
        return list(local)
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"Evaluation was told to run on {num_processes} processes, but torch.distributed is not initialized. "
            "Start the script with `accelerate launch` and pass its `Accelerator` (or `PartialState`)."
        )
    gathered: list[list | None] = [None] * num_processes
    dist.all_gather_object(gathered, local)
    return [item for part in gathered for item in part]


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so memory errors show up at once)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def run_sharded(
    batches: Sequence[T],
    run_batch: Callable[[T], list[Any]],
    accelerator=None,
    progress: bool = False,
    desc: str = "evaluating",
) -> list[list[Any]]:
    """Run `run_batch` over `batches` split across processes; return every batch's result, in order, on every rank."""
    rank, world = process_layout(accelerator)
    mine = list(range(rank, len(batches), world))
    steps = math.ceil(len(batches) / world) if batches else 0
    local = []
    for step in tqdm(range(steps), desc=desc, disable=not progress or rank != 0, leave=False):
        if step < len(mine):
            local.append((mine[step], run_batch(batches[mine[step]])))
        else:
            run_batch(batches[0])  # keep the ranks in lockstep; the result is dropped
    results = dict(gather_objects(local, world))
    return [results[b] for b in range(len(batches))]


def map_sharded(
    items: Sequence[T],
    lengths: Sequence[int],
    batch_size: int,
    run_batch: Callable[[list[T]], list[Any]],
    accelerator=None,
    progress: bool = False,
    desc: str = "evaluating",
) -> list[Any]:
    """Apply `run_batch` to `items` in length-sorted batches split across processes; one result per item, in the
    order of `items`, on every rank."""
    groups = length_sorted_batches(lengths, batch_size)
    per_batch = run_sharded([[items[i] for i in g] for g in groups], run_batch, accelerator, progress, desc)
    results: list = [None] * len(items)
    for indices, batch_results in zip(groups, per_batch):
        if len(batch_results) != len(indices):
            raise RuntimeError(f"A batch of {len(indices)} items returned {len(batch_results)} results.")
        for index, result in zip(indices, batch_results):
            results[index] = result
    return results
