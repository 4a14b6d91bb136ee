"""The CLI through click's test runner: happy paths and every bad input, each a one-line
typed error with a non-zero exit (never a traceback)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from sdrt.cli import cli


def run(*args: str):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
    # A typed error exits via SystemExit; any other exception is a bug in sdrt.
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def assert_one_line_error(result, code: int, *needles: str) -> None:
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture()
def artifact_copy(tiny_artifacts, tmp_path) -> Path:
    dst = tmp_path / "art"
    shutil.copytree(tiny_artifacts["sd1"], dst)
    return dst


def test_generate_writes_png_and_prints_path(tiny_artifacts, tmp_path):
    out = tmp_path / "img.png"
    r = run("generate", "a red circle", "--artifact", tiny_artifacts["sd1"], "--steps", "4",
            "--seed", "5", "--output", out, "--negative", "blue", "--sampler", "euler")
    assert r.exit_code == 0, r.output
    assert str(out) in r.output
    img = Image.open(out)
    assert "Steps: 4, Sampler: euler" in img.text["parameters"]


def test_generate_num_images_and_init_latents(tiny_artifacts, tmp_path):
    noise = np.random.default_rng(0).standard_normal((2, 4, 16, 16)).astype(np.float32)
    np.save(tmp_path / "noise.npy", noise)
    out = tmp_path / "many.png"
    r = run("generate", "a cat", "--artifact", tiny_artifacts["sd2"], "--steps", "3", "--num-images", "2",
            "--init-latents", tmp_path / "noise.npy", "--output", out)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "many-0.png").is_file() and (tmp_path / "many-1.png").is_file()


def test_export_is_skipped_when_fingerprint_matches(tiny_model_dirs, tiny_artifacts):
    r = run("export", tiny_model_dirs["sd1"], "--out", tiny_artifacts["sd1"])
    assert r.exit_code == 0, r.output
    assert "export skipped" in r.output
    r = run("export", tiny_model_dirs["sd1"], "--out", tiny_artifacts["sd1"], "--quiet")
    assert "skipped" not in r.output and str(tiny_artifacts["sd1"]) in r.output


def test_info_and_verify(tiny_artifacts, tiny_model_dirs):
    r = run("info", tiny_artifacts["sd2"])
    assert r.exit_code == 0 and "v_prediction" in r.output and "unet.onnx" in r.output
    from sdrt.runtime.info import available_backends

    backends = available_backends()
    assert "ort-cpu" in backends
    try:  # tensorrt-stubs (installed for the API-surface test) must not count as TensorRT
        import tensorrt

        real_trt = hasattr(tensorrt, "Builder")
    except ImportError:
        real_trt = False
    assert ("trt" in backends) == real_trt
    r = run("verify", "--artifact", tiny_artifacts["sd2"], "--model", tiny_model_dirs["sd2"], "--json",
            "--steps", "4")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["passed"] is True and report["pipeline_psnr_db"] >= 40
    assert {c["component"] for c in report["components"]} == {"text_encoder", "unet", "vae_decoder"}


def test_verify_fails_with_exit_3_when_tolerance_exceeded(tiny_artifacts, tiny_model_dirs):
    r = run("verify", "--artifact", tiny_artifacts["sd1"], "--model", tiny_model_dirs["sd1"],
            "--steps", "2", "--atol", "0")
    assert_one_line_error(r, 3, "verification failed")


GEN = ("generate", "a red circle", "--steps", "2")


@pytest.mark.parametrize(
    "extra,code,needles",
    [
        (["--width", "30"], 2, ["width 30 is not a positive multiple of 4"]),
        (["--height", "33"], 2, ["height 33", "multiple of 4"]),
        (["--width", "256"], 2, ["outside this artifact's range 4..64", "--max-size"]),
        (["--steps", "0"], 2, ["steps must be a positive integer"]),
        (["--steps", "-1"], 2, ["steps must be a positive integer"]),
        (["--sampler", "plms"], 2, ["unknown sampler", "euler"]),
        (["--num-images", "0"], 2, ["num_images must be a positive integer"]),
        (["--backend", "tpu"], 1, ["unknown backend 'tpu'"]),
        (["--backend", "trt", "--threads", "2"], 2, ["--threads 2 sets ONNX Runtime CPU threads"]),
        (["--output", "/nonexistent-dir/x.png"], 1, ["does not exist"]),
        (["--output", "x.jpg"], 1, ["must end in .png"]),
    ],
)
def test_generate_bad_input(tiny_artifacts, extra, code, needles):
    r = run(*GEN, "--artifact", tiny_artifacts["sd1"], *extra)
    assert_one_line_error(r, code, *needles)


def test_generate_unwritable_output(tiny_artifacts, tmp_path):
    """Refused before any model runs: a read-only directory (as root too: sysfs/procfs)."""
    if os.geteuid() == 0:
        target = Path("/proc/sdrt-test.png")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "x.png"
    r = run(*GEN, "--artifact", tiny_artifacts["sd1"], "--output", target)
    assert_one_line_error(r, 1, "not writable", "choose another --output")


def test_long_prompt_warns_how_many_tokens_were_dropped(tiny_artifacts, tmp_path):
    prompt = " ".join(["red"] * 80)  # 80 tokens + BOS/EOS > 77
    r = run("generate", prompt, "--steps", "1", "--artifact", tiny_artifacts["sd1"], "--output", tmp_path / "l.png")
    assert r.exit_code == 0, r.output
    warning = [ln for ln in r.output.splitlines() if ln.startswith("warning:")]
    assert len(warning) == 1 and "5 tokens dropped" in warning[0], r.output


def test_trt_only_options_need_the_trt_backend(tiny_artifacts):
    r = run(*GEN, "--artifact", tiny_artifacts["sd1"], "--no-cuda-graphs")
    assert r.exit_code == 2 and "apply to --backend trt only" in r.output


def test_generate_output_is_a_directory(tiny_artifacts, tmp_path):
    (tmp_path / "d.png").mkdir()
    r = run(*GEN, "--artifact", tiny_artifacts["sd1"], "--output", tmp_path / "d.png")
    assert_one_line_error(r, 1, "is a directory")


def test_missing_artifact_dir(tmp_path):
    assert_one_line_error(run(*GEN, "--artifact", tmp_path / "nope"), 1, "does not exist", "sdrt export")


def test_dir_without_manifest(tmp_path):
    assert_one_line_error(run(*GEN, "--artifact", tmp_path), 1, "no manifest.json")


def test_missing_component_file(artifact_copy):
    (artifact_copy / "unet.onnx").unlink()
    assert_one_line_error(run(*GEN, "--artifact", artifact_copy), 1, "unet.onnx is missing", "re-export")


def test_corrupt_component_file(artifact_copy):
    (artifact_copy / "vae_decoder.onnx").write_bytes(b"not an onnx file at all")
    assert_one_line_error(run(*GEN, "--artifact", artifact_copy), 1, "vae_decoder.onnx", "corrupt")


def test_corrupt_manifest(artifact_copy):
    (artifact_copy / "manifest.json").write_text("{ nope")
    assert_one_line_error(run(*GEN, "--artifact", artifact_copy), 1, "not valid JSON")


def test_manifest_missing_field(artifact_copy):
    m = json.loads((artifact_copy / "manifest.json").read_text())
    del m["components"]
    (artifact_copy / "manifest.json").write_text(json.dumps(m))
    assert_one_line_error(run(*GEN, "--artifact", artifact_copy), 1, "malformed field")


def test_unknown_manifest_version(artifact_copy):
    m = json.loads((artifact_copy / "manifest.json").read_text())
    m["format_version"] = 99
    (artifact_copy / "manifest.json").write_text(json.dumps(m))
    assert_one_line_error(run(*GEN, "--artifact", artifact_copy), 1, "format version 99 is not supported")


def test_missing_tokenizer(artifact_copy):
    shutil.rmtree(artifact_copy / "tokenizer")
    assert_one_line_error(run(*GEN, "--artifact", artifact_copy), 1, "tokenizer", "re-export")


def test_bad_init_latents_file(tiny_artifacts, tmp_path):
    (tmp_path / "bad.npy").write_text("junk")
    r = run(*GEN, "--artifact", tiny_artifacts["sd1"], "--init-latents", tmp_path / "bad.npy")
    assert_one_line_error(r, 2, "not a readable .npy")
    r = run(*GEN, "--artifact", tiny_artifacts["sd1"], "--init-latents", tmp_path / "none.npy")
    assert_one_line_error(r, 2, "does not exist")


def test_export_not_a_pipeline(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    assert_one_line_error(run("export", tmp_path, "--out", tmp_path / "a"), 1, "StableDiffusionXLPipeline")
    assert_one_line_error(run("export", tmp_path / "nothing", "--quiet"), 1, "does not exist")
    (tmp_path / "model_index.json").unlink()
    assert_one_line_error(run("export", tmp_path), 1, "no model_index.json")


def test_export_refuses_pickle_without_flag(tiny_model_dirs, tmp_path):
    src = tmp_path / "pickled"
    shutil.copytree(tiny_model_dirs["sd1"], src)
    for st in (src / "unet").glob("*.safetensors"):
        st.unlink()
    (src / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    r = run("export", src, "--out", tmp_path / "a")
    assert_one_line_error(r, 1, "pickle", "--allow-pickle")
    assert not (tmp_path / "a").exists()


def test_export_into_a_non_artifact_directory(tiny_model_dirs, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "precious.txt").write_text("x")
    r = run("export", tiny_model_dirs["sd1"], "--out", tmp_path / "taken")
    assert_one_line_error(r, 1, "is not an sdrt artifact")
    assert (tmp_path / "taken" / "precious.txt").read_text() == "x"


def test_generate_sdxl_micro_conditioning_options(tiny_xl_artifacts, tmp_path):
    art = tiny_xl_artifacts["sdxl"]
    base = ("generate", "a cat", "--artifact", art, "--steps", "2", "--seed", "3", "--sampler", "euler")
    r1 = run(*base, "--output", tmp_path / "a.png")
    r2 = run(*base, "--output", tmp_path / "b.png", "--original-size", "64x48", "--crop-top-left", "4,8")
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    a = np.asarray(Image.open(tmp_path / "a.png"), dtype=int)
    b = np.asarray(Image.open(tmp_path / "b.png"), dtype=int)
    assert np.abs(a - b).max() > 0  # the conditioning reached the UNet
    bad = run(*base, "--output", tmp_path / "c.png", "--original-size", "64")
    assert bad.exit_code == 2 and "expected WIDTHxHEIGHT" in bad.output


def test_micro_conditioning_is_refused_for_sd1(tiny_artifacts, tmp_path):
    r = run(*GEN, "--artifact", tiny_artifacts["sd1"], "--crop-top-left", "4,8", "--output", tmp_path / "x.png")
    assert_one_line_error(r, 2, "micro-conditioning")


def test_torch_backend_runs_sdxl(tiny_xl_artifacts, tiny_xl_model_dirs, tmp_path):
    """The PyTorch reference returns both outputs of SDXL's text_encoder_2."""
    r = run("generate", "a cat", "--artifact", tiny_xl_artifacts["sdxl"], "--steps", "2", "--backend", "torch",
            "--output", tmp_path / "t.png")
    assert r.exit_code == 0, r.output
