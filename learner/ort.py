"""ONNX Runtime, imported with errors that say which extra installs it.

ONNX Runtime comes from one of two extras that exclude each other: `cpu` (`onnxruntime`) or `gpu`
(`onnxruntime-gpu`, with the CUDA execution provider). Both wheels install the same `onnxruntime`
module, so with both installed whichever was installed last wins and the CUDA provider may
silently go missing: `import_onnxruntime` refuses that state with the command that repairs it.
Loads no torch (the serving path imports it).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from types import ModuleType


def _installed(dist: str) -> bool:
    try:
        version(dist)
    except PackageNotFoundError:
        return False
    return True


def import_onnxruntime() -> ModuleType:
    """The `onnxruntime` module.

    Raises:
        RuntimeError: it is not installed, or both the CPU and the GPU wheels are.
    """
    if _installed("onnxruntime") and _installed("onnxruntime-gpu"):
        raise RuntimeError(
            "both onnxruntime and onnxruntime-gpu are installed, which hides the CUDA provider: "
            "`pip uninstall -y onnxruntime onnxruntime-gpu`, then `pip install 'janus-serve[gpu]'`"
            " on a CUDA host or `pip install 'janus-serve[cpu]'` elsewhere"
        )
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeError(
            "ONNX Runtime is not installed: `pip install 'janus-serve[cpu]'`, or "
            "`pip install 'janus-serve[gpu]'` on a CUDA host (one of the two, not both)"
        ) from None
    return onnxruntime
