"""TensorRT on a real GPU: build tiny engines, parity with ONNX Runtime CPU, CUDA-graph replay,
cache-key validation against a real engine. Skipped (with the reason) without CUDA + TensorRT."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from trt_fixtures import gpu_skip_reason, open_tiny

from sdrt.errors import BackendError, EngineCacheError
from sdrt.export import trt_build as tb
from sdrt.runtime.backends.onnxruntime import OrtBackend
from sdrt.runtime.backends.tensorrt import TrtBackend
from sdrt.runtime.specs import resolve_dims

_REASON = gpu_skip_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

#: fp16 engines vs fp32 ONNX Runtime: max |diff| relative to the output's scale
FP16_TOL = 2e-2
FP32_TOL = 5e-3  # fp32 engine (Polygraphy's CreateConfig leaves TF32 off unless tf32=True)


@pytest.fixture(scope="module")
def artifact(tiny_artifacts):
    return open_tiny(tiny_artifacts, "sd1")


@pytest.fixture(scope="module")
def engines(artifact, tmp_path_factory):
    """fp16 engines (VAE in fp32) with a static 32x32 bucket and a dynamic one."""
    config = tb.BuildConfig(
        buckets=(tb.parse_bucket("32x32@1"), tb.parse_bucket("16x16-32x32-64x64@1-1-2")),
        vae_fp32=True,
        engine_dir=tmp_path_factory.mktemp("engines"),
    )
    result = tb.build_engines(artifact, config)
    return config, result


def _feeds(artifact, component, *, batch=1, size=32, cfg=True, seed=0):
    spec = artifact.manifest.components[component]
    dims = resolve_dims(batch=batch, height=size, width=size, cfg=cfg, vae_scale_factor=artifact.manifest.vae_scale_factor)
    rng = np.random.default_rng(seed)
    feeds = {}
    for t in spec.inputs:
        shape = t.resolve(dims)
        if t.np_dtype.kind == "i":
            feeds[t.name] = rng.integers(0, 49408, size=shape).astype(t.np_dtype)
        elif t.name == "timestep":
            feeds[t.name] = rng.uniform(0, 999, size=shape).astype(t.np_dtype)
        else:
            feeds[t.name] = rng.standard_normal(shape).astype(t.np_dtype)
    return feeds


def _rel_err(got, ref):
    return float(np.abs(got - ref).max() / max(1.0, float(np.abs(ref).max())))


def test_build_writes_engines_keys_and_timing_cache(artifact, engines):
    config, result = engines
    env = tb.probe_environment()
    assert {e.component for e in result.engines} == set(artifact.manifest.components)
    for e in result.engines:
        assert e.path.is_file() and not e.skipped
        key = json.loads(tb.key_path(result.engine_dir, e.component).read_text())
        assert key["tensorrt_version"] == env["tensorrt_version"]
        assert key["compute_capability"] == env["compute_capability"]
        assert key["precision"] == ("fp32" if e.component == "vae_decoder" else "fp16")
        assert len(key["profiles"]) == 2
    assert (result.engine_dir / tb.TIMING_CACHE).is_file()
    leftovers = [p.name for p in result.engine_dir.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers


def test_unchanged_build_is_skipped(artifact, engines):
    config, _ = engines
    again = tb.build_engines(artifact, config)
    assert all(e.skipped for e in again.engines)


@pytest.mark.parametrize("component", ["text_encoder", "unet", "vae_decoder"])
def test_parity_with_onnxruntime_cpu(artifact, engines, component):
    config, _ = engines
    feeds = _feeds(artifact, component)
    with OrtBackend(artifact, device="cpu") as ort_backend, TrtBackend(
        artifact, engine_dir=config.engine_dir, cuda_graphs=False
    ) as trt_backend:
        ref = ort_backend.run(component, feeds)
        got = trt_backend.run(component, feeds)
    tol = FP32_TOL if config.precision(component) == "fp32" else FP16_TOL
    for name, arr in ref.items():
        assert got[name].shape == arr.shape and got[name].dtype == arr.dtype
        assert _rel_err(got[name], arr) < tol, (component, name, _rel_err(got[name], arr))


def test_cuda_graph_replay_matches_plain_execution(artifact, engines):
    config, _ = engines
    a, b = _feeds(artifact, "unet", seed=1), _feeds(artifact, "unet", seed=2)
    big = _feeds(artifact, "unet", size=48, batch=2, seed=3)  # second shape key, dynamic profile
    with TrtBackend(artifact, engine_dir=config.engine_dir, cuda_graphs=False) as plain:
        want = [plain.run("unet", f)["out_sample"] for f in (a, b, big, a)]
    with TrtBackend(artifact, engine_dir=config.engine_dir, cuda_graphs=True) as graphs:
        got = [graphs.run("unet", f)["out_sample"] for f in (a, a, b, big, big, a)]
        assert graphs.describe()["shape_keys"]["unet"] == 2
    # capture run, replay with the same and with new inputs, a second key, then the first again
    for g, w in zip(got, [want[0], want[0], want[1], want[2], want[2], want[3]]):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got[0], got[2])  # the replay really read the new inputs


def test_outputs_are_fresh_arrays(artifact, engines):
    config, _ = engines
    with TrtBackend(artifact, engine_dir=config.engine_dir) as backend:
        first = backend.run("unet", _feeds(artifact, "unet", seed=1))["out_sample"]
        kept = first.copy()
        backend.run("unet", _feeds(artifact, "unet", seed=2))
    np.testing.assert_array_equal(first, kept)


def test_shared_activation_memory_is_sized_to_the_largest_engine(artifact, engines):
    config, _ = engines
    with TrtBackend(artifact, engine_dir=config.engine_dir) as backend:
        sizes = [e.engine.device_memory_size_v2 for e in backend._engines.values()]
        assert backend.describe()["activation_bytes"] == max(max(sizes), 1)


def test_shape_outside_every_profile_is_an_error(artifact, engines):
    config, _ = engines
    with TrtBackend(artifact, engine_dir=config.engine_dir) as backend:
        with pytest.raises(BackendError, match="outside every optimization profile"):
            backend.run("unet", _feeds(artifact, "unet", batch=3))  # cfg_batch 6 > 2 * 2


@pytest.mark.parametrize("field, value", [("tensorrt_version", "9.9.9"), ("compute_capability", "1.0"),
                                          ("onnx_sha256", "sha256:0")])
def test_real_engine_with_foreign_key_is_rejected(artifact, engines, tmp_path, field, value):
    config, _ = engines
    copy = tmp_path / "engines"
    shutil.copytree(config.engine_dir, copy)
    kpath = tb.key_path(copy, "unet")
    key = json.loads(kpath.read_text())
    key[field] = value
    kpath.write_text(json.dumps(key))
    with pytest.raises(EngineCacheError, match=f"unet: engine .* was built with {field}={value}.*rebuild it with"):
        TrtBackend(artifact, engine_dir=copy).load()


def test_missing_key_is_rejected(artifact, engines, tmp_path):
    config, _ = engines
    copy = tmp_path / "engines"
    shutil.copytree(config.engine_dir, copy)
    tb.key_path(copy, "vae_decoder").unlink()
    with pytest.raises(EngineCacheError, match="vae_decoder: engine cache key .* is missing"):
        TrtBackend(artifact, engine_dir=copy).load()


def test_precision_request_is_checked(artifact, engines):
    config, _ = engines
    with pytest.raises(EngineCacheError, match="precision=fp32"):
        TrtBackend(artifact, engine_dir=config.engine_dir, precision="fp16").load()  # the VAE is fp32


def test_pipeline_on_trt_matches_onnxruntime(artifact, engines):
    from sdrt.runtime import GenerationRequest, Pipeline

    config, _ = engines
    request = GenerationRequest("a red circle", steps=4, seed=7, sampler="ddim", width=32, height=32)
    with Pipeline.load(artifact.path, backend="ort-cpu") as pipe:
        ref = pipe(request).images.astype(np.float64)
    with Pipeline.load(artifact.path, backend="trt", engine_dir=config.engine_dir) as pipe:
        got = pipe(request).images.astype(np.float64)
    mse = float(np.mean((got - ref) ** 2))
    psnr = 10 * np.log10(255.0**2 / max(mse, 1e-12))
    assert psnr > 30.0, psnr
