"""Launched by tests/test_process_exit.py with `accelerate launch --multi_gpu --num_processes 2`: gathers objects
across the two processes, then exits, as an evaluation under `accelerate launch` does.

Usage: gather_two_process.py
"""

import torch.distributed as dist
from accelerate import PartialState

from hf_unlearn.eval.distributed import destroy_process_group_at_exit


if __name__ == "__main__":
    state = PartialState(cpu=True)
    destroy_process_group_at_exit()
    gathered = [None] * state.num_processes
    for _ in range(20):
        dist.all_gather_object(gathered, {"rank": state.process_index, "values": list(range(1000))})
    assert [part["rank"] for part in gathered] == list(range(state.num_processes))
