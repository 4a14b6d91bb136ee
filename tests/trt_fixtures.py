"""Shared helpers for the TensorRT tests.

The tiny exported artifacts come from the session fixture ``tiny_artifacts`` in
``tests/conftest.py`` (exported once per test session, shared with the other test modules).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from sdrt.runtime.manifest import Artifact


def open_tiny(tiny_artifacts: Mapping[str, Path], family: str = "sd1") -> Artifact:
    return Artifact.open(tiny_artifacts[family])


def gpu_skip_reason() -> str | None:
    """Why the GPU tests cannot run here, or None when TensorRT, cuda-python and a GPU are present."""
    from sdrt.errors import BackendError
    from sdrt.export.trt_build import probe_environment

    try:
        probe_environment()
    except BackendError as e:
        return f"needs an NVIDIA GPU with TensorRT >= 10.1 and cuda-python: {e}"
    return None
