"""SDXL, Turbo-style and LCM models through the whole path: export, component parity,
end-to-end parity with diffusers, micro-conditioning, guidance handling, the NaN guard."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from sdrt.errors import ConfigError, NumericsError
from sdrt.runtime import GenerationRequest, Pipeline
from sdrt.runtime.backends import create_backend
from sdrt.runtime.conditioning import classifier_free_guidance, sdxl_time_ids
from sdrt.runtime.manifest import Artifact
from sdrt.runtime.schedules import make_schedule
from sdrt.runtime.specs import resolve_dims

from sdrt.export.onnx_export import random_feeds
from sdrt.export.reference import diffusers_generate, diffusers_pipeline, psnr

PROMPT = "a red circle on a blue background"
# (batch, height, width): native, smaller non-square, larger non-square
SHAPES = [(1, 32, 32), (2, 24, 40)]


class RecordingBackend:
    """Wraps a loaded backend: records every call's feeds; can corrupt one component's output."""

    def __init__(self, inner, *, poison: dict | None = None):
        self.inner = inner
        self.calls: list[tuple[str, dict]] = []
        self.poison = poison or {}

    def run(self, component, feeds):
        self.calls.append((component, {k: np.array(v) for k, v in feeds.items()}))
        out = self.inner.run(component, feeds)
        if component in self.poison:
            out = {k: self.poison[component](v) for k, v in out.items()}
        return out

    def close(self):
        self.inner.close()


def recording_pipeline(artifact_dir, **kw) -> tuple[Pipeline, RecordingBackend]:
    artifact = Artifact.open(artifact_dir)
    backend = RecordingBackend(create_backend("ort-cpu", artifact).load(), **kw)
    return Pipeline(artifact, backend), backend


def init_latents(m, batch=2, height=32, width=40, seed=3):
    f = m.vae_scale_factor
    return np.random.default_rng(seed).standard_normal((batch, 4, height // f, width // f), dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# export: manifest and specs
# ----------------------------------------------------------------------------------------------
def test_sdxl_manifest_carries_what_the_runtime_needs(tiny_xl_artifacts, tiny_artifacts):
    m = Artifact.open(tiny_xl_artifacts["sdxl"]).manifest
    assert m.family == "sdxl"
    assert m.conditioning == {"force_zeros_for_empty_prompt": True, "addition_time_embed_dim": 8}
    assert list(m.components) == ["text_encoder", "text_encoder_2", "unet", "vae_decoder"]
    te2 = m.components["text_encoder_2"]
    assert te2.output_names == ["hidden_states", "text_embeds"]
    unet = m.components["unet"]
    assert unet.input_names == ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"]
    shapes = {t.name: t.shape for t in unet.inputs}
    assert shapes["encoder_hidden_states"] == ("cfg_batch", 77, 64)  # 32 + 32, both encoders
    assert shapes["text_embeds"] == ("cfg_batch", 32) and shapes["time_ids"] == ("cfg_batch", 6)
    assert (tiny_xl_artifacts["sdxl"] / "tokenizer_2").is_dir()
    # SD 1.x manifests are unchanged: no conditioning key
    sd1 = json.loads((tiny_artifacts["sd1"] / "manifest.json").read_text())
    assert "conditioning" not in sd1 and sd1["format_version"] == 1

    lcm = Artifact.open(tiny_xl_artifacts["sd1-lcm"]).manifest
    assert lcm.family == "sd1"
    assert lcm.components["unet"].input_names[-1] == "timestep_cond"
    assert lcm.components["unet"].inputs[-1].shape == ("cfg_batch", 32)


def test_trt_profiles_cover_the_added_inputs(tiny_xl_artifacts):
    from sdrt.export.trt_build import component_profiles, default_dynamic_bucket

    m = Artifact.open(tiny_xl_artifacts["sdxl"]).manifest
    bucket = default_dynamic_bucket(m.limits, m.default_size)
    (profile,) = component_profiles(m.components["unet"], [bucket], vae_scale_factor=m.vae_scale_factor)
    assert set(profile) == set(m.components["unet"].input_names)
    lo, opt, hi = profile["time_ids"]
    assert lo[1] == opt[1] == hi[1] == 6 and lo[0] <= opt[0] <= hi[0]
    assert profile["text_embeds"][2] == (hi[0], 32)
    assert profile["sample"][2][0] == hi[0]  # one cfg_batch for every input


# ----------------------------------------------------------------------------------------------
# component parity: ONNX Runtime vs the PyTorch wrappers
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sdxl", "sd1-lcm"])
@pytest.mark.parametrize("batch,height,width", SHAPES)
def test_component_parity_ort_vs_torch(tiny_xl_artifacts, tiny_xl_model_dirs, name, batch, height, width):
    artifact = Artifact.open(tiny_xl_artifacts[name])
    m = artifact.manifest
    dims = resolve_dims(batch=batch, height=height, width=width, cfg=True, vae_scale_factor=m.vae_scale_factor)
    rng = np.random.default_rng(7)
    with create_backend("ort-cpu", artifact) as ort, create_backend(
        "torch", artifact, model_dir=tiny_xl_model_dirs[name]
    ) as ref:
        for comp, spec in m.components.items():
            feeds = random_feeds(spec, dims, rng, int_high=49408)
            a, b = ort.run(comp, feeds), ref.run(comp, feeds)
            for out in spec.output_names:
                assert a[out].shape == tuple(next(t for t in spec.outputs if t.name == out).resolve(dims))
                assert np.abs(a[out] - b[out]).max() <= 1e-4, (comp, out)
                assert np.abs(b[out]).max() > 1e-3, f"{comp}.{out} is ~0: the comparison would prove nothing"


# ----------------------------------------------------------------------------------------------
# end to end against diffusers' StableDiffusionXLPipeline
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sampler,negative,micro",
    [
        ("euler", "", {}),  # empty negative: force_zeros_for_empty_prompt
        ("ddim", "green", {}),
        ("dpmpp_2m", "", {"original_size": (64, 48), "crop_top_left": (4, 8), "target_size": (24, 40)}),
    ],
)
def test_sdxl_end_to_end_psnr_vs_diffusers(tiny_xl_artifacts, tiny_xl_model_dirs, sampler, negative, micro):
    m = Artifact.open(tiny_xl_artifacts["sdxl"]).manifest
    init = init_latents(m)
    req = GenerationRequest(
        prompt=PROMPT, negative_prompt=negative, steps=6, guidance=5.0, sampler=sampler, seed=1,
        width=40, height=32, num_images=2, init_latents=init, **micro,
    ).resolved(m)
    with Pipeline.load(tiny_xl_artifacts["sdxl"]) as pipe:
        ours = pipe(req).images_float
    theirs = diffusers_generate(diffusers_pipeline(tiny_xl_model_dirs["sdxl"], sampler), req, init)
    assert ours.shape == theirs.shape == (2, 32, 40, 3)
    assert psnr(ours, theirs) >= 40.0
    assert ours.std() > 1e-3


def test_sdxl_conditioning_feeds(tiny_xl_artifacts):
    """Zeros for the empty negative prompt (encoders run on the prompt only), time_ids rows."""
    pipe, rec = recording_pipeline(tiny_xl_artifacts["sdxl"])
    req = GenerationRequest(prompt=PROMPT, steps=2, guidance=5.0, sampler="euler", seed=1, num_images=2,
                            original_size=(64, 48), crop_top_left=(4, 8))
    with pipe:
        pipe(req)
    encoders = [(c, f) for c, f in rec.calls if c.startswith("text_encoder")]
    assert [c for c, _ in encoders] == ["text_encoder", "text_encoder_2"]
    assert all(f["input_ids"].shape[0] == 2 for _, f in encoders)  # prompt rows only
    unet = next(f for c, f in rec.calls if c == "unet")
    assert unet["sample"].shape[0] == 4  # CFG: uncond half + cond half
    assert not unet["encoder_hidden_states"][:2].any() and not unet["text_embeds"][:2].any()
    assert unet["encoder_hidden_states"][2:].any()
    np.testing.assert_array_equal(unet["time_ids"], np.tile([64, 48, 4, 8, 32, 32], (4, 1)))

    neg = GenerationRequest(prompt=PROMPT, negative_prompt="blurry", steps=2, guidance=5.0, seed=1)
    assert sdxl_time_ids(neg.resolved(pipe.manifest)).tolist() == [32, 32, 0, 0, 32, 32]


# ----------------------------------------------------------------------------------------------
# Turbo: 1-4 steps, guidance off
# ----------------------------------------------------------------------------------------------
SDXL_TURBO_SCHEDULER = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "steps_offset": 1, "timestep_spacing": "trailing",
}


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
@pytest.mark.parametrize("sampler", ["euler", "euler_a"])
def test_turbo_schedule_matches_diffusers(sampler, steps):
    import diffusers

    cls = {"euler": diffusers.EulerDiscreteScheduler, "euler_a": diffusers.EulerAncestralDiscreteScheduler}[sampler]
    ref = cls.from_config(SDXL_TURBO_SCHEDULER)
    ref.set_timesteps(steps)
    sch = make_schedule(SDXL_TURBO_SCHEDULER, sampler, steps)
    np.testing.assert_array_equal(sch.timesteps, ref.timesteps.numpy().astype(np.float64))
    np.testing.assert_allclose(sch.sigmas, ref.sigmas.numpy().astype(np.float64), rtol=1e-6)
    assert sch.init_noise_sigma == pytest.approx(float(ref.init_noise_sigma), rel=1e-6)
    if steps == 1:
        assert sch.timesteps.tolist() == [999.0]


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_turbo_end_to_end_psnr_and_half_batch(tiny_xl_artifacts, tiny_xl_model_dirs, steps):
    """SDXL-Turbo style: euler_a on trailing timesteps, guidance 0 (no CFG: UNet batch = images);
    diffusers gets sdrt's per-step noise."""
    m = Artifact.open(tiny_xl_artifacts["sdxl-turbo"]).manifest
    init = init_latents(m)
    req = GenerationRequest(prompt=PROMPT, steps=steps, guidance=0.0, sampler="euler_a", seed=5,
                            width=40, height=32, num_images=2, init_latents=init).resolved(m)
    assert not classifier_free_guidance(req, m)
    pipe, rec = recording_pipeline(tiny_xl_artifacts["sdxl-turbo"])
    with pipe:
        ours = pipe(req).images_float
    unet_calls = [f for c, f in rec.calls if c == "unet"]
    assert len(unet_calls) == steps
    assert all(f["sample"].shape[0] == 2 for f in unet_calls)  # no CFG: half the batch
    assert [int(f["timestep"][0]) for f in unet_calls][0] == 999
    theirs = diffusers_generate(diffusers_pipeline(tiny_xl_model_dirs["sdxl-turbo"], "euler_a"), req, init)
    assert psnr(ours, theirs) >= 40.0


# ----------------------------------------------------------------------------------------------
# LCM: its sampler and the guidance embedding, end to end
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 4])
def test_lcm_end_to_end_psnr_vs_diffusers(tiny_xl_artifacts, tiny_xl_model_dirs, steps):
    m = Artifact.open(tiny_xl_artifacts["sd1-lcm"]).manifest
    init = init_latents(m)
    req = GenerationRequest(prompt=PROMPT, steps=steps, guidance=8.5, sampler="lcm", seed=2,
                            width=40, height=32, num_images=2, init_latents=init).resolved(m)
    assert req.cfg and not classifier_free_guidance(req, m)  # guidance goes into the embedding
    pipe, rec = recording_pipeline(tiny_xl_artifacts["sd1-lcm"])
    with pipe:
        ours = pipe(req).images_float
    unet_calls = [f for c, f in rec.calls if c == "unet"]
    assert all(f["sample"].shape[0] == 2 and f["timestep_cond"].shape == (2, 32) for f in unet_calls)
    theirs = diffusers_generate(diffusers_pipeline(tiny_xl_model_dirs["sd1-lcm"], "lcm"), req, init)
    assert psnr(ours, theirs) >= 40.0
    assert ours.std() > 1e-3


def test_guidance_changes_the_lcm_image(tiny_xl_artifacts):
    req = GenerationRequest(prompt=PROMPT, steps=2, guidance=8.5, sampler="lcm", seed=2)
    with Pipeline.load(tiny_xl_artifacts["sd1-lcm"]) as pipe:
        a = pipe(req).images_float
        b = pipe(replace(req, guidance=2.0)).images_float
    assert np.abs(a - b).max() > 1e-4


# ----------------------------------------------------------------------------------------------
# the NaN guard and request validation
# ----------------------------------------------------------------------------------------------
def test_nan_from_the_vae_is_a_typed_error_with_advice(tiny_xl_artifacts):
    pipe, _ = recording_pipeline(tiny_xl_artifacts["sdxl"], poison={"vae_decoder": lambda v: v * np.nan})
    with pipe, pytest.raises(NumericsError, match=r"sdrt build --vae-fp32.*sdxl-vae-fp16-fix"):
        pipe(GenerationRequest(prompt=PROMPT, steps=1, sampler="euler", seed=1))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_inf_from_the_unet_is_reported_as_the_unet(tiny_xl_artifacts):
    pipe, _ = recording_pipeline(tiny_xl_artifacts["sdxl"], poison={"unet": lambda v: v + np.inf})
    with pipe, pytest.raises(NumericsError, match="UNet overflowed"):
        pipe(GenerationRequest(prompt=PROMPT, steps=1, sampler="euler", seed=1))


def test_nan_writes_no_png(tiny_xl_artifacts, tmp_path, monkeypatch):
    from sdrt.runtime import generate as generate_mod

    real_load = Pipeline.load

    def poisoned_load(artifact_dir, backend="ort-cpu", **kw):
        pipe = real_load(artifact_dir, backend=backend, **kw)
        pipe.backend = RecordingBackend(pipe.backend, poison={"vae_decoder": lambda v: v * np.nan})
        return pipe

    monkeypatch.setattr(generate_mod.Pipeline, "load", staticmethod(poisoned_load))
    config = generate_mod.GenerateConfig(
        request=GenerationRequest(prompt=PROMPT, steps=1, sampler="euler", seed=1),
        artifact=tiny_xl_artifacts["sdxl"], output=tmp_path / "out.png",
    )
    with pytest.raises(NumericsError):
        generate_mod.generate_to_files(config)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "change,match",
    [
        ({"original_size": (0, 32)}, "original_size must be two whole numbers"),
        ({"crop_top_left": (1,)}, "crop_top_left must be two whole numbers"),
        ({"target_size": (32.5, 32)}, "target_size must be two whole numbers"),
        ({"crop_top_left": None}, "crop_top_left must be two whole numbers"),
    ],
)
def test_bad_micro_conditioning_is_rejected(tiny_xl_artifacts, change, match):
    m = Artifact.open(tiny_xl_artifacts["sdxl"]).manifest
    with pytest.raises(ConfigError, match=match):
        GenerationRequest(prompt=PROMPT, **change).resolved(m)


def test_micro_conditioning_is_rejected_for_sd1(tiny_artifacts):
    m = Artifact.open(tiny_artifacts["sd1"]).manifest
    with pytest.raises(ConfigError, match="SDXL micro-conditioning; this artifact is sd1"):
        GenerationRequest(prompt=PROMPT, original_size=(32, 32)).resolved(m)


# ----------------------------------------------------------------------------------------------
# sdrt verify
# ----------------------------------------------------------------------------------------------
def test_verify_accepts_sdxl(tiny_xl_artifacts, tiny_xl_model_dirs):
    from sdrt.export.verify import verify_artifact

    report = verify_artifact(tiny_xl_artifacts["sdxl"], tiny_xl_model_dirs["sdxl"], steps=4)
    labels = {c.component for c in report.components}
    assert {"text_encoder_2.hidden_states", "text_encoder_2.text_embeds", "unet"} <= labels
    assert report.passed, report.to_json()
    assert report.pipeline_psnr_db >= 40.0


# ----------------------------------------------------------------------------------------------
# float16 UNet export (what makes the full-size SDXL UNet export fit 24 GiB)
# ----------------------------------------------------------------------------------------------
def test_fp16_unet_export_parity(tiny_xl_model_dirs, tiny_xl_artifacts, tmp_path):
    import onnx

    from sdrt.export.artifact import ExportOptions, export_artifact

    art = export_artifact(tiny_xl_model_dirs["sdxl"], tmp_path / "fp16", options=ExportOptions(fp16=("unet",))).artifact
    m = art.manifest
    assert m.export_info["fp16"] == ["unet"]
    assert m.export_key != Artifact.open(tiny_xl_artifacts["sdxl"]).manifest.export_key
    assert all(t.dtype == "float32" for t in m.components["unet"].inputs)  # I/O stays float32
    weights = onnx.load(str(art.component_path("unet"))).graph.initializer
    nbytes = {dtype: sum(len(w.raw_data) for w in weights if w.data_type == dtype)
              for dtype in (onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT)}
    assert nbytes[onnx.TensorProto.FLOAT16] > 10 * nbytes[onnx.TensorProto.FLOAT]

    dims = resolve_dims(batch=1, height=32, width=32, cfg=True, vae_scale_factor=m.vae_scale_factor)
    feeds = random_feeds(m.components["unet"], dims, np.random.default_rng(0), int_high=1)
    feeds["time_ids"] = np.tile(np.float32([32, 32, 0, 0, 32, 32]), (2, 1))
    with create_backend("ort-cpu", art) as ort, create_backend("torch", art, model_dir=tiny_xl_model_dirs["sdxl"]) as ref:
        a, b = ort.run("unet", feeds)["out_sample"], ref.run("unet", feeds)["out_sample"]  # ref: fp32
    assert np.abs(a - b).max() < 1e-2 * np.abs(b).max()

    init = init_latents(m)
    req = GenerationRequest(prompt=PROMPT, steps=4, guidance=5.0, sampler="euler", seed=1, width=40, height=32,
                            num_images=2, init_latents=init).resolved(m)
    with Pipeline.load(art.path) as half, Pipeline.load(tiny_xl_artifacts["sdxl"]) as full:
        assert psnr(half(req).images_float, full(req).images_float) >= 40.0
