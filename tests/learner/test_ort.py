"""ONNX Runtime's import: the installed CPU wheel works; the two broken installs say how to fix."""

from __future__ import annotations

import sys

import pytest

from learner import ort


def test_the_installed_cpu_runtime_imports_with_its_provider() -> None:
    module = ort.import_onnxruntime()
    assert "CPUExecutionProvider" in module.get_available_providers()
    assert ort._installed("onnxruntime") and not ort._installed("onnxruntime-gpu")


def test_both_wheels_installed_is_refused_with_the_repair(monkeypatch) -> None:
    monkeypatch.setattr(ort, "_installed", lambda dist: True)  # as if both were installed
    with pytest.raises(RuntimeError, match=r"hides the CUDA provider: `pip uninstall"):
        ort.import_onnxruntime()


def test_a_missing_runtime_names_the_extras(monkeypatch) -> None:
    monkeypatch.setattr(ort, "_installed", lambda dist: False)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    with pytest.raises(RuntimeError, match=r"janus-serve\[cpu\].*janus-serve\[gpu\]"):
        ort.import_onnxruntime()
