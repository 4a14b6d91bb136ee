"""The PyTorch reference backend: the source diffusers modules, run on the artifact's feeds.

It runs the very wrappers that were traced to ONNX (``sdrt.export.wrappers``), in fp32 eager
mode, so comparing it with another backend isolates what export and the engine changed. It
needs torch, diffusers and transformers (``pip install 'sdrt[export]'``) and the source model
directory, whose fingerprint must match the artifact's.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from sdrt.errors import ArtifactError, BackendError

from ..manifest import Artifact
from ..specs import ComponentSpec
from .base import Backend


class TorchBackend(Backend):
    name = "torch"

    def __init__(
        self, artifact: Artifact, *, model_dir: str | Path | None = None, threads: int | None = None
    ):
        super().__init__(artifact)
        self.model_dir = Path(model_dir or artifact.manifest.source)
        self.threads = threads
        self._modules: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _load_impl(self) -> None:
        try:
            import torch

            from sdrt.export.source import load_source, open_source
            from sdrt.export.wrappers import component_modules
        except ImportError as e:
            raise BackendError(
                f"the torch backend needs torch, diffusers and transformers ({e}); "
                f"`pip install 'sdrt[export]'`"
            ) from e
        if self.threads:
            torch.set_num_threads(self.threads)
        source = open_source(self.model_dir, allow_pickle=True)
        if source.fingerprint() != self.artifact.manifest.fingerprint:
            raise ArtifactError(
                f"{self.model_dir} is not the model this artifact was exported from (fingerprints "
                f"differ); pass the original --model directory or re-export"
            )
        self._modules = component_modules(load_source(source))
        self._torch = torch

    def _run_impl(self, spec: ComponentSpec, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in spec.input_names]
        # Eager torch modules are not documented as thread-safe for concurrent forward calls
        # that share state (attention processors, caches): serialise them.
        with self._lock, torch.inference_mode():
            out = self._modules[spec.name](*args)
        # Multi-output components (SDXL's text_encoder_2: hidden states, text_embeds) return tuples.
        outs = out if isinstance(out, tuple) else (out,)
        return {name: o.float().numpy().copy() for name, o in zip(spec.output_names, outs)}

    def _close_impl(self) -> None:
        self._modules.clear()
