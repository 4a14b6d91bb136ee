"""TensorRT build command, backend and ORT io-binding: everything that runs without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from trt_fixtures import open_tiny

from sdrt.errors import BackendError, ConfigError, ProviderMismatchError, ShapeError
from sdrt.export import trt_build as tb
from sdrt.runtime.backends import BACKEND_NAMES, create_backend
from sdrt.runtime.backends.onnxruntime import OrtBackend, run_with_iobinding
from sdrt.runtime.specs import resolve_dims

try:
    tb.probe_environment()
    HAVE_GPU = True
except BackendError:
    HAVE_GPU = False
no_gpu_only = pytest.mark.skipif(HAVE_GPU, reason="checks the error raised where TensorRT/GPU is missing")


@pytest.fixture(scope="module")
def artifact(tiny_artifacts):
    return open_tiny(tiny_artifacts, "sd1")


# -- config mapping ------------------------------------------------------------------


def test_cli_options_map_to_build_config(artifact, tmp_path):
    from sdrt.cli_build import config_from_options

    c = config_from_options(artifact, static="32x16", batch=2, buckets=["16x16-32x32-64x64@1-2-4"],
                            vae_fp32=True, opt_level=4, refit=True, timing_cache=False,
                            engine_dir=tmp_path, components=["unet"], force=True)
    assert c.buckets == (tb.ShapeBucket.static(batch=2, height=16, width=32), tb.parse_bucket("16x16-32x32-64x64@1-2-4"))
    assert (c.vae_fp32, c.optimization_level, c.refit, c.timing_cache, c.force) == (True, 4, True, False, True)
    assert c.engine_dir == tmp_path and c.components == ("unet",)
    assert c.precision("vae_decoder") == "fp32"


def test_dynamic_defaults_come_from_the_artifact(artifact):
    from sdrt.cli_build import config_from_options

    m = artifact.manifest
    (b,) = config_from_options(artifact).buckets
    assert b == tb.default_dynamic_bucket(m.limits, m.default_size)
    (b,) = config_from_options(artifact, dynamic=True, max_size="48x32", max_batch=2).buckets
    assert b.width[2] == 48 and b.height[2] == 32 and b.batch == (1, 1, 2)
    assert b.width[1] == m.default_size


def test_conflicting_options_are_config_errors(artifact):
    from sdrt.cli_build import config_from_options

    with pytest.raises(ConfigError, match="exclude each other"):
        config_from_options(artifact, static="32x32", dynamic=True)
    with pytest.raises(ConfigError, match="need --dynamic"):
        config_from_options(artifact, max_size="64x64")


def test_invalid_bucket_fails_before_tensorrt_is_needed(artifact):
    with pytest.raises(ShapeError, match="multiple of 4"):
        tb.build_engines(artifact, tb.BuildConfig(buckets=(tb.parse_bucket("30x32@1"),)))
    with pytest.raises(ConfigError, match="unknown components"):
        tb.build_engines(artifact, tb.BuildConfig(components=("refiner",)))


@no_gpu_only
def test_build_without_tensorrt_is_one_line_error(artifact):
    from sdrt.cli_build import build_cmd

    with pytest.raises(BackendError, match=r"^TensorRT is not installed: pip install 'sdrt\[tensorrt\]'"):
        tb.build_engines(artifact)
    result = CliRunner().invoke(build_cmd, [str(artifact.path), "--static", "32x32"])
    assert isinstance(result.exception, BackendError)
    assert not (artifact.path / "trt").exists()


# -- backend registry and load ---------------------------------------------------------


def test_trt_backend_is_registered(artifact):
    assert "trt" in BACKEND_NAMES
    backend = create_backend("trt", artifact, cuda_graphs=False)
    assert backend.describe()["cuda_graphs"] is False
    assert backend.engine_dir == artifact.path / "trt"


def test_trt_backend_rejects_cpu_thread_option(artifact):
    with pytest.raises(ConfigError, match="drop --threads"):
        create_backend("trt", artifact, threads=4)


@no_gpu_only
def test_trt_backend_load_without_tensorrt(artifact):
    backend = create_backend("trt", artifact)
    with pytest.raises(BackendError, match="TensorRT is not installed"):
        backend.load()
    with pytest.raises(BackendError, match="call load"):
        backend.run("unet", {})


# -- ONNX Runtime io-binding -------------------------------------------------------------


def _feeds(spec, dims, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for t in spec.inputs:
        shape = t.resolve(dims)
        if t.np_dtype.kind == "i":
            out[t.name] = rng.integers(0, 1000, size=shape).astype(t.np_dtype)
        else:
            out[t.name] = rng.standard_normal(shape).astype(t.np_dtype)
    return out


def test_iobinding_matches_session_run(artifact):
    dims = resolve_dims(batch=1, height=16, width=24, cfg=True, vae_scale_factor=artifact.manifest.vae_scale_factor)
    with OrtBackend(artifact, device="cpu") as ort_backend:
        for name, spec in artifact.manifest.components.items():
            feeds = _feeds(spec, dims)
            plain = ort_backend.run(name, feeds)
            bound = run_with_iobinding(ort_backend._sessions[name], spec, feeds, "cpu")
            for out_name, arr in zip(spec.output_names, bound):
                np.testing.assert_array_equal(arr, plain[out_name])
                assert arr.shape == spec.outputs[0].resolve(dims)


def test_ort_gpu_devices_still_refuse_cpu_fallback(artifact):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(ProviderMismatchError, match="CUDAExecutionProvider is not available"):
        OrtBackend(artifact, device="cuda").load()
