"""Shared helpers for the TensorRT tests: tiny exported artifacts, made once per test process.

A tiny artifact takes ~10 s to export, so every test module that needs one asks
:func:`tiny_artifact` and gets the same directory back.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest

from sdrt.runtime.manifest import Artifact


@lru_cache(maxsize=None)
def _root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="sdrt-trt-tests-"))
    atexit.register(shutil.rmtree, root, True)
    return root


@lru_cache(maxsize=None)
def tiny_artifact(family: str = "sd1") -> Artifact:
    """A tiny random-weight pipeline of ``family`` exported to an artifact (cached per process)."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from sdrt.export.artifact import export_artifact
    from sdrt.export.tiny import make_tiny_pipeline

    model = make_tiny_pipeline(_root() / f"model-{family}", family)
    return export_artifact(model, _root() / f"artifact-{family}").artifact


def gpu_skip_reason() -> str | None:
    """Why the GPU tests cannot run here, or None when TensorRT, cuda-python and a GPU are present."""
    from sdrt.errors import BackendError
    from sdrt.export.trt_build import probe_environment

    try:
        probe_environment()
    except BackendError as e:
        return f"needs an NVIDIA GPU with TensorRT >= 10.1 and cuda-python: {e}"
    return None
