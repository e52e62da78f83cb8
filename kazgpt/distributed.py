"""The processes of a training run: one, or the ranks of a torchrun DDP job (torchrun sets RANK,
LOCAL_RANK and WORLD_SIZE), and the signals that ask them to stop together."""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import torch
from torch import distributed as dist

from kazgpt.cli import UserError, print0


@dataclass
class Processes:
    """This process's place in the run: one process, or one rank of a torchrun DDP job."""
    ddp: bool
    rank: int
    local_rank: int
    world_size: int
    device: str

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup_processes(device: str, backend: str) -> Processes:
    """Join the DDP job if torchrun started this process; each rank takes its own GPU."""
    if "RANK" not in os.environ:
        return Processes(False, 0, 0, 1, device)
    rank, local_rank, world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    elif backend == "nccl":  # NCCL needs GPUs
        print0(f"DDP on {device}: using the gloo backend instead of nccl")
        backend = "gloo"
    try:
        dist.init_process_group(backend=backend)
    except (ValueError, RuntimeError) as e:  # the master cannot be reached
        raise UserError(f"could not join the DDP job ({str(e).strip().splitlines()[0][:200]}): check torchrun's "
                        "--master_addr and --master_port, and that every node can reach the first") from None
    return Processes(True, rank, local_rank, world_size, device)


class StopSignal:
    """SIGTERM/SIGINT ask the run to stop after the current step, with a checkpoint; a second one
    exits at once. The handlers are put back by restore()."""

    def __init__(self, eval_only: bool):
        self.signum = 0
        self.plan = ("finishing the evaluation, then exiting (eval_only saves nothing)" if eval_only
                     else "finishing this step, then saving a checkpoint and exiting")
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def handle(self, signum, frame):
        # os.write, not print: a handler that prints while the program is printing can crash it
        name = signal.Signals(signum).name
        if self.signum:
            os.write(2, f"\nsecond {name}: exiting now without a checkpoint\n".encode())
            os._exit(128 + signum)
        self.signum = signum
        if os.environ.get("RANK", "0") == "0":
            os.write(2, f"\n{name} received: {self.plan} (send it again to exit at once)\n".encode())

    def agreed(self, procs: Processes) -> int:
        """The signal every process stops for (the largest any of them received), so that all stop
        together: a collective under DDP, so every rank must call it at the same step."""
        if not procs.ddp:
            return self.signum
        flag = torch.tensor(self.signum, device=procs.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
