"""TrtBackend's and build_engines' bookkeeping, run against recording stand-ins for
``tensorrt``, ``cudart`` and Polygraphy's ``engine_bytes_from_network``.

These stand-ins are NOT TensorRT: their "engines" compute a trivial function in numpy over a
dict that plays device memory. They check what the backend does with the APIs (key check
before deserialization, one context + buffers per shape key, one shared activation allocation,
capture once then replay, host<->device copy directions, everything freed on close; the build
hands the right profiles / precision / options to real Polygraphy loader objects and skips
unchanged engines), not numerics or real TensorRT behaviour: that is ``test_trt_gpu.py``'s job,
on a GPU.
"""

from __future__ import annotations

import ctypes
import json
import types
from enum import Enum

import numpy as np
import pytest
from trt_fixtures import open_tiny

from sdrt.errors import BackendError, EngineCacheError
from sdrt.export import trt_build as tb
from sdrt.runtime.backends.tensorrt import TrtBackend
from sdrt.runtime.specs import resolve_dims

ENV = {"tensorrt_version": "10.8.0", "compute_capability": "8.9", "cuda_version": "12.8",
       "gpu_name": "stand-in", "cuda_driver": "12.8"}


class FakeCudart:
    """Device memory is a dict of bytearrays; graphs are lists of recorded kernels."""

    class cudaError_t(Enum):
        cudaSuccess = 0
        cudaErrorInvalidValue = 1

    class cudaMemcpyKind(Enum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStreamCaptureMode(Enum):
        cudaStreamCaptureModeGlobal = 0

    def __init__(self) -> None:
        self.mem: dict[int, bytearray] = {}
        self.next_ptr = 1 << 40
        self.capturing: list | None = None
        self.graphs: dict[int, list] = {}
        self.launches = 0
        self.streams: set[int] = set()

    ok = cudaError_t.cudaSuccess

    def cudaGetErrorName(self, err):
        return self.ok, err.name.encode()

    def cudaMalloc(self, n):
        ptr, self.next_ptr = self.next_ptr, self.next_ptr + n + 256
        self.mem[ptr] = bytearray(n)
        return self.ok, ptr

    def cudaFree(self, ptr):
        del self.mem[ptr]
        return (self.ok,)

    def cudaStreamCreate(self):
        self.streams.add(7)
        return self.ok, 7

    def cudaStreamDestroy(self, s):
        self.streams.discard(int(s))
        return (self.ok,)

    def cudaStreamSynchronize(self, s):
        return (self.ok,)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        assert self.capturing is None, "copies must stay outside the captured graph"
        if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice:
            ctypes.memmove((ctypes.c_char * n).from_buffer(self.mem[dst]), src, n)
        else:
            ctypes.memmove(dst, bytes(self.mem[src][:n]), n)
        return (self.ok,)

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing = []
        return (self.ok,)

    def cudaStreamEndCapture(self, stream):
        graph, self.capturing = self.capturing, None
        gid = 1000 + len(self.graphs)
        self.graphs[gid] = graph
        return self.ok, gid

    def cudaGraphInstantiate(self, graph, flags):
        return self.ok, -graph

    def cudaGraphLaunch(self, exec_, stream):
        self.launches += 1
        for kernel in self.graphs[-exec_]:
            kernel()
        return (self.ok,)

    def cudaGraphExecDestroy(self, exec_):
        return (self.ok,)

    def cudaGraphDestroy(self, graph):
        del self.graphs[graph]
        return (self.ok,)


class FakeContext:
    def __init__(self, engine):
        self.engine, self.shapes, self.addr, self.memory, self.profile = engine, {}, {}, None, None
        self.executions = 0

    def set_device_memory(self, ptr, size):
        assert size >= self.engine.device_memory_size_v2
        self.memory = ptr

    def set_optimization_profile_async(self, index, stream):
        self.profile = index
        return True

    def set_input_shape(self, name, shape):
        lo, _opt, hi = self.engine.get_tensor_profile_shape(name, self.profile)
        self.shapes[name] = tuple(shape)
        return all(a <= s <= b for a, s, b in zip(lo, shape, hi))

    def get_tensor_shape(self, name):
        return self.engine.out_shape(self.shapes)

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr
        return True

    def execute_async_v3(self, stream):
        cudart = self.engine.cudart
        assert self.memory is not None
        addr, shapes = dict(self.addr), dict(self.shapes)

        def kernel():
            # output[...] = sum of every input's mean (reads the *current* input buffers)
            total = 0.0
            for name, shape in shapes.items():
                n = int(np.prod(shape))
                dtype = self.engine.dtypes[name]
                total += float(np.frombuffer(cudart.mem[addr[name]], dtype, count=n).mean())
            out = self.engine.spec.output_names[0]
            n = int(np.prod(self.engine.out_shape(shapes)))
            np.frombuffer(cudart.mem[addr[out]], np.float32, count=n)[:] = total

        self.executions += 1
        if cudart.capturing is not None:
            cudart.capturing.append(kernel)
        else:
            kernel()
        return True


class FakeEngine:
    def __init__(self, spec, profiles, cudart, memory_size):
        self.spec, self.profiles, self.cudart = spec, profiles, cudart
        self.names = spec.input_names + spec.output_names
        self.dtypes = {t.name: t.np_dtype for t in (*spec.inputs, *spec.outputs)}
        self.num_io_tensors = len(self.names)
        self.num_optimization_profiles = len(profiles)
        self.device_memory_size_v2 = memory_size
        self.contexts = []

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "INPUT" if name in self.spec.input_names else "OUTPUT"

    def get_tensor_dtype(self, name):
        return self.dtypes[name]

    def get_tensor_profile_shape(self, name, index):
        return [list(s) for s in self.profiles[index][name]]

    def out_shape(self, shapes):
        first = self.spec.inputs[0]
        dims = dict(zip(first.shape, shapes[first.name]))
        return (dims[first.shape[0]], 7)

    def create_execution_context(self, strategy):
        assert strategy == "USER_MANAGED"
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


@pytest.fixture
def fake(monkeypatch, tiny_artifacts, tmp_path):
    """A TrtBackend wired to the stand-ins, with engine + key files for every component."""
    artifact = open_tiny(tiny_artifacts, "sd1")
    cudart = FakeCudart()
    buckets = [tb.parse_bucket("16x16@1"), tb.parse_bucket("8x8-16x16-32x32@1-1-2")]
    engines, deserialized = {}, []
    for i, (name, spec) in enumerate(artifact.manifest.components.items()):
        profiles = tb.component_profiles(spec, buckets, vae_scale_factor=artifact.manifest.vae_scale_factor)
        engines[name] = FakeEngine(spec, profiles, cudart, memory_size=1000 * (i + 1))
        plan = tb.engine_path(tmp_path, name)
        plan.write_bytes(name.encode())
        key = tb.EngineKey(
            onnx_sha256=tb.onnx_sha256(tb.onnx_files(artifact, name)), precision="fp16",
            profiles=tb.profiles_to_json(profiles), tensorrt_version=ENV["tensorrt_version"],
            compute_capability=ENV["compute_capability"], cuda_version=ENV["cuda_version"],
        )
        tb.key_path(tmp_path, name).write_text(json.dumps(key.to_json()))

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            deserialized.append(data.decode())
            return engines[data.decode()]

    def logger(severity):
        return object()

    logger.WARNING = 2
    trt = types.SimpleNamespace(
        Logger=logger,
        Runtime=Runtime,
        TensorIOMode=types.SimpleNamespace(INPUT="INPUT"),
        ExecutionContextAllocationStrategy=types.SimpleNamespace(USER_MANAGED="USER_MANAGED"),
        nptype=lambda dtype: dtype,
    )
    monkeypatch.setattr(tb, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(tb, "import_cudart", lambda: cudart)
    monkeypatch.setattr(tb, "probe_environment", lambda: dict(ENV))
    return types.SimpleNamespace(artifact=artifact, cudart=cudart, engines=engines, dir=tmp_path,
                                 deserialized=deserialized)


def _unet_feeds(artifact, *, size=16, batch=1, value=1.0):
    dims = resolve_dims(batch=batch, height=size, width=size, cfg=True, vae_scale_factor=artifact.manifest.vae_scale_factor)
    spec = artifact.manifest.components["unet"]
    return {t.name: np.full(t.resolve(dims), value, t.np_dtype) for t in spec.inputs}


def test_capture_once_per_shape_key_then_replay(fake):
    backend = TrtBackend(fake.artifact, engine_dir=fake.dir, cuda_graphs=True).load()
    out1 = backend.run("unet", _unet_feeds(fake.artifact, value=1.0))["out_sample"]
    out2 = backend.run("unet", _unet_feeds(fake.artifact, value=2.0))["out_sample"]
    out3 = backend.run("unet", _unet_feeds(fake.artifact, size=24, batch=2, value=3.0))["out_sample"]
    out4 = backend.run("unet", _unet_feeds(fake.artifact, value=4.0))["out_sample"]
    # 3 inputs with mean v each -> every output element is 3 * v; replays read the new inputs
    assert [float(o.flat[0]) for o in (out1, out2, out3, out4)] == [3.0, 6.0, 9.0, 12.0]
    assert out1.shape == (2, 7) and out3.shape == (4, 7)
    unet = fake.engines["unet"]
    assert len(unet.contexts) == 2  # one per shape key
    assert [c.profile for c in unet.contexts] == [0, 1]  # 16x16 is in the static bucket, 24x24 is not
    assert [c.executions for c in unet.contexts] == [2, 2]  # warm-up + capture, each key once
    assert fake.cudart.launches == 2  # out2 and out4 were graph replays
    backend.close()


def test_without_graphs_every_call_executes(fake):
    with TrtBackend(fake.artifact, engine_dir=fake.dir, cuda_graphs=False) as backend:
        for v in (1.0, 2.0, 3.0):
            assert float(backend.run("unet", _unet_feeds(fake.artifact, value=v))["out_sample"].flat[0]) == 3 * v
    assert fake.engines["unet"].contexts[0].executions == 3 and fake.cudart.launches == 0


def test_one_shared_activation_allocation_and_everything_freed(fake):
    backend = TrtBackend(fake.artifact, engine_dir=fake.dir).load()
    activation = backend._activation
    assert activation.nbytes == max(e.device_memory_size_v2 for e in fake.engines.values())
    for name, spec in fake.artifact.manifest.components.items():
        dims = resolve_dims(batch=1, height=16, width=16, cfg=True, vae_scale_factor=fake.artifact.manifest.vae_scale_factor)
        backend.run(name, {t.name: np.zeros(t.resolve(dims), t.np_dtype) for t in spec.inputs})
    memories = {c.memory for e in fake.engines.values() for c in e.contexts}
    assert memories == {activation.ptr}
    backend.close()
    assert fake.cudart.mem == {} and fake.cudart.graphs == {} and fake.cudart.streams == set()


def test_outputs_do_not_alias_device_or_previous_results(fake):
    with TrtBackend(fake.artifact, engine_dir=fake.dir) as backend:
        first = backend.run("unet", _unet_feeds(fake.artifact, value=1.0))["out_sample"]
        backend.run("unet", _unet_feeds(fake.artifact, value=5.0))
    assert float(first.flat[0]) == 3.0


def test_key_is_checked_before_the_engine_is_deserialized(fake):
    kpath = tb.key_path(fake.dir, "unet")
    key = json.loads(kpath.read_text())
    key["compute_capability"] = "7.5"
    kpath.write_text(json.dumps(key))
    with pytest.raises(EngineCacheError, match="unet: .*compute_capability=7.5 .* compute_capability=8.9"):
        TrtBackend(fake.artifact, engine_dir=fake.dir).load()
    assert "unet" not in fake.deserialized
    assert fake.cudart.mem == {}  # nothing leaked by the failed load


def test_changed_onnx_file_is_detected(fake):
    kpath = tb.key_path(fake.dir, "vae_decoder")
    key = json.loads(kpath.read_text())
    key["onnx_sha256"] = "sha256:" + "0" * 64
    kpath.write_text(json.dumps(key))
    with pytest.raises(EngineCacheError, match="vae_decoder: .*onnx_sha256=sha256:0000"):
        TrtBackend(fake.artifact, engine_dir=fake.dir).load()


def test_missing_engine_says_how_to_build(fake):
    tb.engine_path(fake.dir, "text_encoder").unlink()
    with pytest.raises(EngineCacheError, match=r"text_encoder: no TensorRT engine at .*; build engines with `sdrt build "):
        TrtBackend(fake.artifact, engine_dir=fake.dir).load()


def test_shapes_outside_every_profile(fake):
    with TrtBackend(fake.artifact, engine_dir=fake.dir) as backend:
        with pytest.raises(BackendError, match="outside every optimization profile"):
            backend.run("unet", _unet_feeds(fake.artifact, size=40))


# -- build orchestration (Polygraphy's engine_bytes_from_network replaced by a recorder) ------


@pytest.fixture
def recorded_builds(monkeypatch, tiny_artifacts):
    import polygraphy.backend.trt as ptrt

    calls = []

    def engine_bytes_from_network(network, config=None, save_timing_cache=None):
        calls.append({"network": network, "config": config, "timing_cache": save_timing_cache})
        return b"serialized:" + network.path.encode()

    monkeypatch.setattr(ptrt, "engine_bytes_from_network", engine_bytes_from_network)
    monkeypatch.setattr(tb, "probe_environment", lambda: dict(ENV))
    return open_tiny(tiny_artifacts, "sd1"), calls


def test_build_passes_profiles_precision_and_options_to_polygraphy(recorded_builds, tmp_path):
    artifact, calls = recorded_builds
    config = tb.BuildConfig(
        buckets=(tb.parse_bucket("16x16@1"), tb.parse_bucket("8x8-16x16-32x32@1-1-2")),
        vae_fp32=True, optimization_level=4, refit=True, engine_dir=tmp_path,
    )
    result = tb.build_engines(artifact, config)
    assert [c["network"].path for c in calls] == [str(artifact.component_path(n)) for n in artifact.manifest.components]
    by_file = {c["network"].path.rsplit("/", 1)[-1]: c for c in calls}
    unet_config = by_file["unet.onnx"]["config"]
    assert unet_config.fp16 is True and by_file["vae_decoder.onnx"]["config"].fp16 is False
    assert unet_config.builder_optimization_level == 4 and unet_config.refittable is True
    assert len(unet_config.profiles) == 2
    expected = tb.component_profiles(artifact.manifest.components["unet"], config.buckets,
                                     vae_scale_factor=artifact.manifest.vae_scale_factor)
    for profile, want in zip(unet_config.profiles, expected):
        for name, (lo, opt, hi) in want.items():
            assert (tuple(profile[name].min), tuple(profile[name].opt), tuple(profile[name].max)) == (lo, opt, hi)
    assert all(c["timing_cache"] == str(tmp_path / tb.TIMING_CACHE) for c in calls)
    for e in result.engines:
        assert e.path.read_bytes() == b"serialized:" + str(artifact.component_path(e.component)).encode()
        key = json.loads(tb.key_path(tmp_path, e.component).read_text())
        assert key["precision"] == ("fp32" if e.component == "vae_decoder" else "fp16")
        assert key["build_options"] == {"optimization_level": 4, "refit": True}
        assert key["tensorrt_version"] == ENV["tensorrt_version"]


def test_unchanged_build_is_skipped_and_changes_rebuild(recorded_builds, tmp_path):
    artifact, calls = recorded_builds
    config = tb.BuildConfig(buckets=(tb.parse_bucket("16x16@1"),), engine_dir=tmp_path)
    tb.build_engines(artifact, config)
    assert len(calls) == 3
    again = tb.build_engines(artifact, config)
    assert all(e.skipped for e in again.engines) and len(calls) == 3
    tb.build_engines(artifact, tb.BuildConfig(buckets=config.buckets, engine_dir=tmp_path, vae_fp32=True))
    assert len(calls) == 4  # only the VAE's key changed (precision)
    tb.build_engines(artifact, tb.BuildConfig(buckets=(tb.parse_bucket("32x32@1"),), engine_dir=tmp_path,
                                              vae_fp32=True, components=("unet",)))
    assert len(calls) == 5  # new profile, unet only
    tb.build_engines(artifact, tb.BuildConfig(buckets=(tb.parse_bucket("32x32@1"),), engine_dir=tmp_path,
                                              vae_fp32=True, components=("unet",), force=True))
    assert len(calls) == 6


def test_no_timing_cache_option(recorded_builds, tmp_path):
    artifact, calls = recorded_builds
    tb.build_engines(artifact, tb.BuildConfig(buckets=(tb.parse_bucket("16x16@1"),), engine_dir=tmp_path,
                                              timing_cache=False, components=("vae_decoder",)))
    assert calls[0]["timing_cache"] is None and calls[0]["config"].timing_cache_path is None
