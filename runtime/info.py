"""What an artifact holds and which backends this machine can run it on."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from .manifest import Artifact


def available_backends() -> list[str]:
    """Backends whose packages and devices are present (provider lists are not trusted blindly:
    the ORT backends still verify the provider a session actually got)."""
    names = []
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
        names.append("ort-cpu")
        if "CUDAExecutionProvider" in providers:
            names.append("ort-cuda")
        if "TensorrtExecutionProvider" in providers:
            names.append("ort-trt")
    except ImportError:
        pass
    try:  # tensorrt-stubs alone installs an importable, empty `tensorrt` namespace
        import tensorrt

        if hasattr(tensorrt, "Builder"):
            names.append("trt")
    except ImportError:
        pass
    if all(importlib.util.find_spec(m) is not None for m in ("torch", "diffusers", "transformers")):
        names.append("torch")
    return names


def describe(path: str | Path) -> dict[str, Any]:
    artifact = Artifact.open(path)
    return {"manifest": artifact.manifest.to_json(), "backends_available": available_backends()}
