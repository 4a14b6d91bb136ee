"""Backend registry. Backends are imported lazily, so the runtime needs only the one it uses."""

from __future__ import annotations

import importlib
from typing import Any, Callable

from sdrt.errors import BackendError

from ..manifest import Artifact
from .base import Backend

# name -> (module, class, fixed constructor options)
_REGISTRY: dict[str, tuple[str, str, dict[str, Any]]] = {
    "ort-cpu": ("sdrt.runtime.backends.onnxruntime", "OrtBackend", {"device": "cpu"}),
    "ort-cuda": ("sdrt.runtime.backends.onnxruntime", "OrtBackend", {"device": "cuda"}),
    "ort-trt": ("sdrt.runtime.backends.onnxruntime", "OrtBackend", {"device": "tensorrt"}),
    "torch": ("sdrt.runtime.backends.torch_reference", "TorchBackend", {}),
    "trt": ("sdrt.runtime.backends.tensorrt", "TrtBackend", {}),
}

BACKEND_NAMES = tuple(_REGISTRY)


def create_backend(name: str, artifact: Artifact, **options: Any) -> Backend:
    """A (not yet loaded) backend called ``name`` for ``artifact``."""
    try:
        module_name, cls_name, fixed = _REGISTRY[name]
    except KeyError:
        raise BackendError(f"unknown backend {name!r}; choose one of {list(_REGISTRY)}") from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise BackendError(f"backend {name!r} needs a package that is not installed: {e}") from e
    factory: Callable[..., Backend] = getattr(module, cls_name)
    return factory(artifact, **fixed, **options)


__all__ = ["Backend", "BACKEND_NAMES", "create_backend"]
