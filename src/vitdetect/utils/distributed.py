"""One Accelerator for every command, in one process or several started by `torchrun` / `accelerate launch`.

vitdetect never starts processes itself: the launcher sets RANK / WORLD_SIZE / MASTER_ADDR and each
process builds the same Accelerator, which joins the process group (NCCL on GPUs, gloo on CPUs).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from vitdetect.errors import VitdetectError

T = TypeVar("T")


def launched_processes() -> int:
    """How many processes the launcher started (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def has_device_backend() -> bool:
    """Whether a device that Accelerate runs several processes on (CUDA, XPU, NPU...) is present."""
    accelerators = getattr(torch, "accelerator", None)  # torch >= 2.6 knows every device type
    if accelerators is None:
        return torch.cuda.is_available()
    if not accelerators.is_available():
        return False
    return accelerators.current_accelerator().type != "mps"  # MPS has no multi-process backend


def use_threads(threads: int | None) -> None:
    """--threads: PyTorch's intra-op threads; ONNX Runtime sessions made afterwards take torch's count, so one
    setting governs both backends. None leaves PyTorch's default (one per physical core, or OMP_NUM_THREADS)."""
    if threads is not None:
        torch.set_num_threads(threads)


def make_accelerator(cpu: bool = False, mixed_precision: str = "auto", **kwargs: Any):
    """An Accelerator; mixed_precision "auto" is bf16 (or fp16) on a GPU and fp32 on the CPU.

    Under a launcher on a machine without a device backend, Accelerate would give every process a
    separate single-process run; cpu=True makes them join one gloo process group instead.
    """
    from accelerate import Accelerator

    cpu = cpu or (launched_processes() > 1 and not has_device_backend())
    if mixed_precision == "auto":
        mixed_precision = "no"
        if torch.cuda.is_available() and not cpu:
            mixed_precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision, **kwargs)


def is_main_process() -> bool:
    """True in a single-process run and on rank 0 of a launched one: the one process that prints results."""
    return int(os.environ.get("RANK", "0")) == 0


def agreed_signal(signum: int, accelerator) -> int:
    """The largest signal number any process has received, 0 for none.

    Signals reach the processes at slightly different moments. Without this agreement one process
    could stop while another waits in the next batch's collective for it.
    """
    if accelerator.num_processes == 1:
        return signum
    flag = torch.tensor([signum], device=accelerator.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return int(flag.item())


def on_main_process(action: Callable[[], T], accelerator) -> T | None:
    """action() on the main process only (None elsewhere). When it fails, every process raises an error
    with the same message: the others stop with it instead of waiting for the main one forever."""
    if accelerator.num_processes == 1:
        return action()
    from accelerate.utils import broadcast_object_list

    result, failure = None, None
    if accelerator.is_main_process:
        try:
            result = action()
        except Exception as exc:
            failure = exc
    message = broadcast_object_list([failure and (str(failure), getattr(failure, "exit_code", 1))])[0]
    if failure is not None:
        raise failure
    if message is not None:
        raise VitdetectError(*message)
    return result
