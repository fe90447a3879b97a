"""Where the learner computes: `auto`, `cpu` or `cuda[:N]` (`--device`, `JANUS_DEVICE`).

The learner's state is device-independent: every tensor of `LearnerState` lives on the CPU, so a
version trained on a GPU loads on a CPU-only service and the reverse; `learn_task` moves the model
to the device for the task and brings what it keeps back. Importing this module loads no torch.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"
Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16")


class DeviceError(ValueError):
    """A device that this machine does not have; the message is one line that says what to do."""


def resolve_device(spec: str = "auto") -> torch.device:
    """`auto` (the first CUDA device if there is one, else the CPU), `cpu`, `cuda` or `cuda:N`.

    Raises:
        DeviceError: the spelling is unknown, or CUDA (device N) is not there.
    """
    import torch  # here, so that settings can import DEVICE_PATTERN without torch

    if not re.fullmatch(DEVICE_PATTERN, spec):
        raise DeviceError(f"device {spec!r} is not one of auto, cpu, cuda, cuda:N")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device {spec!r}: torch {torch.__version__} sees no CUDA device on this machine; "
            "use --device cpu (or auto), or install a CUDA build of torch on a GPU host"
        )
    index = int(spec.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise DeviceError(
            f"device {spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
            f"numbered from 0; use cuda:0 … cuda:{torch.cuda.device_count() - 1}"
        )
    return torch.device("cuda", index)


def autocast(device: torch.device, precision: Precision) -> AbstractContextManager[object]:
    """The frozen forward's precision: `bf16` runs convolutions and matrix products in bfloat16
    (torch autocast, on the CPU too); the factors, their updates and every statistic stay in
    float32 or float64. `fp32` changes nothing."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
