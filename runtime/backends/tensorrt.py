"""TensorRT backend: runs the engines that ``sdrt build`` wrote, through the TensorRT 10 API.

Per component, one deserialized ``ICudaEngine``. Per *shape key* (the tuple of input shapes a
request brings), one :class:`_ShapeState`, created on first use and kept until ``close()``:

* its own ``IExecutionContext``, on the optimization profile whose [min, max] holds the shapes,
  with input shapes and every I/O tensor address set once (``set_input_shape``,
  ``set_tensor_address``);
* device buffers for every input and output, allocated once;
* with CUDA graphs on, one graph captured from ``execute_async_v3`` on that context and replayed
  on later calls. A captured graph bakes in shapes, tensor addresses and context state, so it is
  only valid for the shape key it was captured with; giving each key its own context means no
  later ``set_input_shape`` can invalidate an earlier key's graph.

Activation memory: contexts are created with ``ExecutionContextAllocationStrategy.USER_MANAGED``
and all share ONE device allocation sized to the largest ``ICudaEngine.device_memory_size_v2``.
That is safe because the pipeline runs its stages one after another and ``run`` holds a lock
(calls are serialized) and synchronizes the stream before returning.

Every ``run`` copies feeds host -> device, executes, copies outputs device -> host into fresh
numpy arrays and synchronizes: results never alias device or internal buffers.

CUDA calls go through cuda-python (``cuda.bindings.runtime``); torch is never imported.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from sdrt.errors import ArtifactError, BackendError, ConfigError, EngineCacheError

from ..manifest import Artifact
from ..specs import ComponentSpec
from .base import Backend


def _build_module() -> Any:
    # The cache key logic lives with the builder (sdrt.export.trt_build); it imports no torch.
    from sdrt.export import trt_build

    return trt_build


def _handle(obj: Any) -> int:
    """The raw handle of a cuda-python object (stream, graph exec) as TensorRT wants it: an int."""
    return int(obj)


class _DeviceBuffer:
    """One ``cudaMalloc`` allocation (256-byte aligned, as ``set_device_memory`` requires)."""

    def __init__(self, cudart: Any, nbytes: int):
        trt_build = _build_module()
        self.cudart = cudart
        self.nbytes = max(int(nbytes), 1)
        self.ptr = trt_build.cuda_check(cudart.cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes})")

    def free(self) -> None:
        if self.ptr:
            self.cudart.cudaFree(self.ptr)
            self.ptr = 0


@dataclass
class _ShapeState:
    """Everything bound to one shape key of one engine."""

    context: Any
    profile: int
    buffers: dict[str, _DeviceBuffer]
    output_shapes: dict[str, tuple[int, ...]]
    output_dtypes: dict[str, np.dtype]
    graph: Any = None
    graph_exec: Any = None


@dataclass
class _Engine:
    spec: ComponentSpec
    path: Path
    engine: Any
    profiles: list[dict[str, tuple[tuple[int, ...], ...]]]
    states: dict[tuple[tuple[int, ...], ...], _ShapeState] = field(default_factory=dict)


class TrtBackend(Backend):
    """TensorRT engines from ``engine_dir`` (default ``<artifact>/trt``), CUDA graphs on by default.

    ``precision`` ("fp16"/"fp32"), when given, is also checked against the engines' cache keys.
    """

    name = "trt"

    def __init__(
        self,
        artifact: Artifact,
        *,
        engine_dir: str | Path | None = None,
        cuda_graphs: bool = True,
        precision: str | None = None,
        threads: int | None = None,
    ):
        super().__init__(artifact)
        if threads:
            raise ConfigError(
                f"--threads {threads} sets ONNX Runtime CPU threads; the trt backend runs on the GPU, drop --threads"
            )
        if precision not in (None, "fp16", "fp32"):
            raise ConfigError(f"precision {precision!r} is not one of 'fp16', 'fp32' (or None: whatever was built)")
        trt_build = _build_module()
        self.engine_dir = trt_build.engine_dir(artifact, engine_dir)
        self.cuda_graphs = cuda_graphs
        self.precision = precision
        self._engines: dict[str, _Engine] = {}
        self._activation: _DeviceBuffer | None = None
        self._stream: Any = None
        self._env: dict[str, str] = {}
        self._lock = threading.Lock()
        self._trt: Any = None
        self._cudart: Any = None
        self._runtime: Any = None
        self._logger: Any = None

    # -- load ----------------------------------------------------------------
    def _load_impl(self) -> None:
        trt_build = _build_module()
        trt = self._trt = trt_build.import_tensorrt()
        cudart = self._cudart = trt_build.import_cudart()
        self._env = trt_build.probe_environment()
        self._logger = trt.Logger(trt.Logger.WARNING)  # kept: the runtime must not outlive its logger
        self._runtime = trt.Runtime(self._logger)
        rebuild = trt_build.rebuild_command(self.artifact.path, self.engine_dir)
        current = {f: self._env[f] for f in trt_build.ENVIRONMENT_FIELDS}
        if self.precision is not None:
            current["precision"] = self.precision
        try:
            for name, spec in self.specs.items():
                self._engines[name] = self._load_engine(trt, spec, current, rebuild)
            size = max(e.engine.device_memory_size_v2 for e in self._engines.values())
            self._activation = _DeviceBuffer(cudart, size)
            self._stream = trt_build.cuda_check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        except BaseException:
            self._close_impl()
            raise

    def _load_engine(self, trt: Any, spec: ComponentSpec, current: dict[str, Any], rebuild: str) -> _Engine:
        trt_build = _build_module()
        plan = trt_build.engine_path(self.engine_dir, spec.name)
        if not plan.is_file():
            raise EngineCacheError(f"{spec.name}: no TensorRT engine at {plan}; build engines with `{rebuild}`")
        stored = trt_build.read_key(trt_build.key_path(self.engine_dir, spec.name), component=spec.name)
        expected = {**current, "onnx_sha256": trt_build.onnx_sha256(trt_build.onnx_files(self.artifact, spec.name))}
        # Checked *before* deserializing: TensorRT may crash or misbehave on a foreign engine.
        trt_build.check_engine_key(stored, expected, component=spec.name, engine=plan, rebuild=rebuild)
        engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            raise EngineCacheError(f"{spec.name}: TensorRT could not deserialize {plan}; rebuild with `{rebuild}`")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if inputs != spec.input_names or outputs[: len(spec.outputs)] != spec.output_names:
            raise ArtifactError(
                f"{plan} has inputs {inputs} / outputs {outputs}, but the manifest declares "
                f"{spec.input_names} / {spec.output_names}; rebuild with `{rebuild}`"
            )
        for t in (*spec.inputs, *spec.outputs):
            got = np.dtype(trt.nptype(engine.get_tensor_dtype(t.name)))
            if got != t.np_dtype:
                raise ArtifactError(
                    f"{plan}: tensor {t.name} is {got} in the engine but {t.dtype} in the manifest; "
                    f"rebuild with `{rebuild}`"
                )
        profiles = [
            {n: tuple(tuple(d) for d in engine.get_tensor_profile_shape(n, p)) for n in spec.input_names}
            for p in range(engine.num_optimization_profiles)
        ]
        return _Engine(spec=spec, path=plan, engine=engine, profiles=profiles)

    # -- per shape key state ---------------------------------------------------
    def _state(self, eng: _Engine, feeds: Mapping[str, np.ndarray]) -> _ShapeState:
        key = tuple(tuple(feeds[n].shape) for n in eng.spec.input_names)
        state = eng.states.get(key)
        if state is not None:
            return state
        trt, trt_build = self._trt, _build_module()
        shapes = dict(zip(eng.spec.input_names, key))
        profile = trt_build.select_profile(eng.profiles, shapes)
        if profile < 0:
            ranges = "; ".join(
                ", ".join(f"{n} {lo}..{hi}" for n, (lo, _opt, hi) in p.items()) for p in eng.profiles
            )
            raise BackendError(
                f"{self.name}: {eng.spec.name} input shapes {shapes} are outside every optimization "
                f"profile of {eng.path} ({ranges}); rebuild with a bucket that covers them "
                f"(`sdrt build {self.artifact.path} --bucket WxH@B`)"
            )
        context = eng.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:
            raise BackendError(f"{self.name}: could not create an execution context for {eng.path}")
        assert self._activation is not None
        context.set_device_memory(self._activation.ptr, self._activation.nbytes)
        buffers: dict[str, _DeviceBuffer] = {}
        state = _ShapeState(context, profile, buffers, {}, {})
        where = f"{self.name}: {eng.spec.name}"
        try:
            if not context.set_optimization_profile_async(profile, _handle(self._stream)):
                raise BackendError(f"{where}: TensorRT could not switch to optimization profile {profile}")
            for name, shape in shapes.items():
                if not context.set_input_shape(name, shape):
                    raise BackendError(f"{where}: TensorRT rejected shape {shape} for {name}")
                buffers[name] = _DeviceBuffer(self._cudart, int(np.prod(shape)) * feeds[name].itemsize)
            for name in eng.spec.output_names:
                shape = tuple(context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise BackendError(
                        f"{where}: output {name} has data-dependent shape {shape}, which this backend "
                        f"does not support; use --backend ort-cuda"
                    )
                dtype = np.dtype(trt.nptype(eng.engine.get_tensor_dtype(name)))
                state.output_shapes[name], state.output_dtypes[name] = shape, dtype
                buffers[name] = _DeviceBuffer(self._cudart, int(np.prod(shape)) * dtype.itemsize)
            for name, buf in buffers.items():
                if not context.set_tensor_address(name, buf.ptr):
                    raise BackendError(f"{where}: TensorRT rejected the device address of {name}")
        except BaseException:
            self._free_state(state)
            raise
        eng.states[key] = state
        return state

    def _execute(self, eng: _Engine, state: _ShapeState) -> None:
        trt_build, cudart = _build_module(), self._cudart
        stream = _handle(self._stream)
        if not self.cuda_graphs:
            if not state.context.execute_async_v3(stream):
                raise BackendError(f"{self.name}: {eng.spec.name}: execute_async_v3 failed")
            return
        if state.graph_exec is None:
            # Run once outside capture so TensorRT does its shape-dependent setup, then capture the
            # same enqueue on this stream (TensorRT developer guide, "CUDA Graphs"; NVIDIA's
            # demo/Diffusion Engine.infer does the same).
            if not state.context.execute_async_v3(stream):
                raise BackendError(f"{self.name}: {eng.spec.name}: execute_async_v3 failed")
            off = "run with CUDA graphs off (TrtBackend(cuda_graphs=False))"
            trt_build.cuda_check(
                cudart.cudaStreamBeginCapture(self._stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal),
                "cudaStreamBeginCapture",
            )
            try:
                ok = state.context.execute_async_v3(stream)
            finally:
                # End the capture whatever happened, or the stream stays unusable.
                err, graph = cudart.cudaStreamEndCapture(self._stream)
            if not ok or err != cudart.cudaError_t.cudaSuccess or graph is None:
                if graph is not None:
                    cudart.cudaGraphDestroy(graph)
                raise BackendError(
                    f"{self.name}: {eng.spec.name}: TensorRT's enqueue could not be captured into a CUDA "
                    f"graph ({err}); {off}"
                )
            state.graph = graph
            state.graph_exec = trt_build.cuda_check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
            return  # the un-captured run above already produced this call's outputs
        trt_build.cuda_check(cudart.cudaGraphLaunch(state.graph_exec, self._stream), "cudaGraphLaunch")

    # -- run -------------------------------------------------------------------
    def _run_impl(self, spec: ComponentSpec, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        trt_build, cudart = _build_module(), self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with self._lock:
            eng = self._engines[spec.name]
            state = self._state(eng, feeds)
            host_inputs = {n: np.ascontiguousarray(feeds[n]) for n in spec.input_names}
            for name, arr in host_inputs.items():
                trt_build.cuda_check(
                    cudart.cudaMemcpyAsync(state.buffers[name].ptr, arr.ctypes.data, arr.nbytes, h2d, self._stream),
                    "cudaMemcpyAsync(host->device)",
                )
            self._execute(eng, state)
            outputs = {n: np.empty(state.output_shapes[n], state.output_dtypes[n]) for n in spec.output_names}
            for name, arr in outputs.items():
                trt_build.cuda_check(
                    cudart.cudaMemcpyAsync(arr.ctypes.data, state.buffers[name].ptr, arr.nbytes, d2h, self._stream),
                    "cudaMemcpyAsync(device->host)",
                )
            trt_build.cuda_check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
            del host_inputs  # kept alive until the stream finished reading them
        return outputs

    # -- close -----------------------------------------------------------------
    def _free_state(self, state: _ShapeState) -> None:
        cudart = self._cudart
        if state.graph_exec is not None:
            cudart.cudaGraphExecDestroy(state.graph_exec)
        if state.graph is not None:
            cudart.cudaGraphDestroy(state.graph)
        state.graph = state.graph_exec = None
        state.context = None  # contexts go before the memory they use
        for buf in state.buffers.values():
            buf.free()
        state.buffers.clear()

    def _close_impl(self) -> None:
        with self._lock:
            if self._stream is not None:
                self._cudart.cudaStreamSynchronize(self._stream)
            for eng in self._engines.values():
                for state in eng.states.values():
                    self._free_state(state)
                eng.states.clear()
            self._engines.clear()
            if self._activation is not None:
                self._activation.free()
                self._activation = None
            if self._stream is not None:
                self._cudart.cudaStreamDestroy(self._stream)
                self._stream = None
            self._runtime = None
            self._logger = None

    def describe(self) -> dict[str, object]:
        return {
            "backend": self.name,
            "engine_dir": str(self.engine_dir),
            "cuda_graphs": self.cuda_graphs,
            "activation_bytes": self._activation.nbytes if self._activation is not None else 0,
            **self._env,
            "shape_keys": {n: len(e.states) for n, e in self._engines.items()},
        }
