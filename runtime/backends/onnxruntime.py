"""ONNX Runtime backend: one InferenceSession per component.

Asking for CUDA or TensorRT and silently getting CPU is an error here, never a warning:
after creating each session we compare ``session.get_providers()`` with what was asked.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping

import numpy as np

from sdrt.errors import ArtifactError, BackendError, ProviderMismatchError

from ..manifest import Artifact
from ..specs import ComponentSpec
from .base import Backend

#: device name -> ONNX Runtime execution providers, preferred first
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
#: device name -> where io-binding puts outputs (ORT's OrtDevice type names). The TensorRT EP
#: runs on CUDA memory, so both GPU devices bind outputs on "cuda".
IO_BINDING_DEVICE = {"cuda": "cuda", "tensorrt": "cuda"}


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - onnxruntime is a hard dependency
        raise BackendError(
            "onnxruntime is not installed; `pip install onnxruntime` (CPU) or "
            "`pip install onnxruntime-gpu` (CUDA / TensorRT providers)"
        ) from e
    return onnxruntime


class OrtBackend(Backend):
    """ONNX Runtime sessions on ``device`` in {"cpu", "cuda", "tensorrt"}."""

    def __init__(
        self,
        artifact: Artifact,
        *,
        device: str = "cpu",
        threads: int | None = None,
        provider_options: Mapping[str, Mapping[str, Any]] | None = None,
        session_config: Mapping[str, str] | None = None,
    ):
        super().__init__(artifact)
        if device not in PROVIDERS:
            raise BackendError(f"unknown ONNX Runtime device {device!r}; choose one of {list(PROVIDERS)}")
        self.device = device
        self.name = f"ort-{device}"
        self.threads = threads
        self.provider_options = dict(provider_options or {})
        # SessionOptions.add_session_config_entry pairs, e.g. {"session.intra_op.allow_spinning":
        # "0"}, which made small models ~3x faster on busy shared cores (docs/benchmarks.md).
        self.session_config = dict(session_config or {})
        self._sessions: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _session_options(self, ort: Any) -> Any:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            so.intra_op_num_threads = self.threads
        so.log_severity_level = 3  # errors only; provider fallback is checked explicitly below
        for key, value in self.session_config.items():
            so.add_session_config_entry(key, str(value))
        return so

    def _load_impl(self) -> None:
        ort = _import_ort()
        wanted = PROVIDERS[self.device]
        available = ort.get_available_providers()
        if wanted[0] not in available:
            raise ProviderMismatchError(
                f"ONNX Runtime provider {wanted[0]} is not available in this onnxruntime build "
                f"(available: {available}); install `onnxruntime-gpu` with a matching CUDA, or use "
                f"--backend ort-cpu"
            )
        providers = [(p, dict(self.provider_options.get(p, {}))) for p in wanted]
        for name, spec in self.specs.items():
            path = self.artifact.component_path(name)
            try:
                sess = ort.InferenceSession(
                    str(path), sess_options=self._session_options(ort), providers=providers
                )
            except Exception as e:  # onnxruntime raises its own pybind exception types
                raise ArtifactError(
                    f"ONNX Runtime could not load {path} ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:300]}); the file may be corrupt: re-export the artifact"
                ) from e
            got = sess.get_providers()
            if not got or got[0] != wanted[0]:
                raise ProviderMismatchError(
                    f"{name}: asked ONNX Runtime for {wanted[0]} but the session got {got} "
                    f"(CUDA/cuDNN/TensorRT libraries missing or mismatched?); fix the GPU "
                    f"install or use --backend ort-cpu"
                )
            self._check_io(spec, sess)
            self._sessions[name] = sess

    @staticmethod
    def _check_io(spec: ComponentSpec, sess: Any) -> None:
        ins = [i.name for i in sess.get_inputs()]
        outs = [o.name for o in sess.get_outputs()]
        if ins != spec.input_names or outs[: len(spec.outputs)] != spec.output_names:
            raise ArtifactError(
                f"{spec.file} has inputs {ins} / outputs {outs}, but the manifest declares "
                f"{spec.input_names} / {spec.output_names}; the artifact is inconsistent, re-export it"
            )

    def _run_impl(
        self, spec: ComponentSpec, feeds: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        sess = self._sessions[spec.name]
        try:
            if self.device in IO_BINDING_DEVICE:
                outs = run_with_iobinding(sess, spec, feeds, IO_BINDING_DEVICE[self.device])
            else:
                # InferenceSession.run is thread-safe; outputs are fresh arrays owned by the caller.
                outs = sess.run(spec.output_names, dict(feeds))
        except Exception as e:
            raise BackendError(
                f"{self.name}: {spec.name} failed ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:300]})"
            ) from e
        return dict(zip(spec.output_names, outs))

    def _close_impl(self) -> None:
        with self._lock:
            self._sessions.clear()

    def describe(self) -> dict[str, object]:
        return {
            "backend": self.name,
            "providers": {n: s.get_providers() for n, s in self._sessions.items()},
            "threads": self.threads,
        }


def run_with_iobinding(
    sess: Any, spec: ComponentSpec, feeds: Mapping[str, np.ndarray], device_type: str, device_id: int = 0
) -> list[np.ndarray]:
    """Run ``sess`` through an io-binding: host inputs, outputs allocated by ORT on ``device_type``.

    Outputs stay on the device until the run ends and are copied out once at the boundary
    (ONNX Runtime Python API docs, "Data on device": ``io_binding``, ``bind_cpu_input``,
    ``bind_output``, ``run_with_iobinding``, ``copy_outputs_to_cpu``). A binding per call keeps
    concurrent ``run`` calls independent.
    """
    binding = sess.io_binding()
    for name in spec.input_names:
        binding.bind_cpu_input(name, np.ascontiguousarray(feeds[name]))
    for name in spec.output_names:
        binding.bind_output(name, device_type, device_id)
    sess.run_with_iobinding(binding)
    return list(binding.copy_outputs_to_cpu())
