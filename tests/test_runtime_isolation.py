"""The runtime runs an artifact with torch, diffusers and transformers impossible to import."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from sdrt.errors import BackendError, ProviderMismatchError
from sdrt.runtime.backends import create_backend
from sdrt.runtime.manifest import Artifact

BLOCKER = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "diffusers", "transformers", "onnx", "onnxscript"}:
            raise ImportError(f"blocked in this test: {name}")
        return None
sys.meta_path.insert(0, _Block())
"""


def test_generate_without_torch_diffusers_transformers(tiny_artifacts, tmp_path):
    code = BLOCKER + textwrap.dedent(f"""
        from sdrt.runtime import GenerationRequest, Pipeline
        from sdrt.runtime.generate import GenerateConfig, generate_to_files
        cfg = GenerateConfig(
            request=GenerationRequest("a red circle", steps=3, seed=1),
            artifact={str(tiny_artifacts["sd2"])!r}, output={str(tmp_path / "x.png")!r})
        result, paths = generate_to_files(cfg)
        bad = [m for m in sys.modules if m.split(".")[0] in {{"torch", "diffusers", "transformers"}}]
        assert not bad, bad
        print("OK", paths[0])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout and (tmp_path / "x.png").is_file()


def test_cli_generate_without_torch(tiny_artifacts, tmp_path):
    code = BLOCKER + textwrap.dedent(f"""
        from sdrt.cli import cli
        cli(["generate", "a cat", "--artifact", {str(tiny_artifacts["sd1"])!r}, "--steps", "2",
             "--output", {str(tmp_path / "y.png")!r}], standalone_mode=True)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "y.png").is_file()


def test_torch_backend_without_torch_is_a_clear_error(tiny_artifacts):
    code = BLOCKER + textwrap.dedent(f"""
        from sdrt.errors import BackendError
        from sdrt.runtime.backends import create_backend
        from sdrt.runtime.manifest import Artifact
        try:
            create_backend("torch", Artifact.open({str(tiny_artifacts["sd1"])!r})).load()
        except BackendError as e:
            print("ERR", e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "ERR the torch backend needs torch" in out.stdout, out.stdout + out.stderr


def test_asking_for_cuda_and_getting_cpu_is_an_error(tiny_artifacts, monkeypatch):
    """onnxruntime-gpu lists CUDA as available even when its libraries are missing and then
    silently runs on CPU; the backend compares what the session got with what was asked."""
    import onnxruntime

    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    backend = create_backend("ort-cuda", Artifact.open(tiny_artifacts["sd1"]))
    with pytest.raises(ProviderMismatchError, match="asked ONNX Runtime for CUDAExecutionProvider but the session got"):
        backend.load()


def test_unavailable_provider_is_an_error(tiny_artifacts):
    import onnxruntime

    if "TensorrtExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build lists TensorRT")
    with pytest.raises(ProviderMismatchError, match="not available in this onnxruntime build"):
        create_backend("ort-trt", Artifact.open(tiny_artifacts["sd1"])).load()


def test_run_before_load_and_bad_feeds(tiny_artifacts):
    import numpy as np

    backend = create_backend("ort-cpu", Artifact.open(tiny_artifacts["sd1"]))
    with pytest.raises(BackendError, match="call load"):
        backend.run("unet", {})
    with backend:
        with pytest.raises(BackendError, match="unknown component 'decoder'"):
            backend.run("decoder", {})
        ids = np.zeros((2, 77), np.int64)
        with pytest.raises(BackendError, match="dtype int64, expected int32"):
            backend.run("text_encoder", {"input_ids": ids})
        with pytest.raises(BackendError, match="axis 1 is 76, expected 77"):
            backend.run("text_encoder", {"input_ids": np.zeros((2, 76), np.int32)})
        feeds = {
            "sample": np.zeros((2, 4, 8, 8), np.float32),
            "timestep": np.zeros((3,), np.float32),
            "encoder_hidden_states": np.zeros((2, 77, 32), np.float32),
        }
        with pytest.raises(BackendError, match=r"timestep: axis 0 \(cfg_batch\) is 3"):
            backend.run("unet", feeds)


def test_session_config_entries_reach_onnxruntime(tiny_artifacts):
    import numpy as np

    art = Artifact.open(tiny_artifacts["sd1"])
    feeds = {"input_ids": np.zeros((2, 77), np.int32)}
    with create_backend("ort-cpu", art) as plain, create_backend(
        "ort-cpu", art, session_config={"session.intra_op.allow_spinning": "0"}
    ) as no_spin:
        sess = no_spin._sessions["text_encoder"]
        assert sess.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
        np.testing.assert_array_equal(
            plain.run("text_encoder", feeds)["last_hidden_state"],
            no_spin.run("text_encoder", feeds)["last_hidden_state"],
        )
