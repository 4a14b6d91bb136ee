"""Parity of the numpy schedules/samplers with diffusers' schedulers, plus error handling.

diffusers and torch are the reference; the modules under test import neither.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from sdrt.errors import ConfigError
from sdrt.runtime.denoiser import make_denoiser
from sdrt.runtime.samplers import (
    SAMPLERS,
    final_latents,
    get_sampler,
    sample_ddim,
    sample_euler,
    sample_euler_ancestral,
)
from sdrt.runtime.schedules import karras_sigmas, make_schedule, train_alphas_cumprod

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from diffusers import (  # noqa: E402
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)
from diffusers.schedulers import scheduling_euler_ancestral_discrete  # noqa: E402

# SD1.5's scheduler config (as shipped, plus an explicit timestep_spacing)
SD15 = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "set_alpha_to_one": False,
    "clip_sample": False,
}
SPACINGS = ("leading", "trailing", "linspace")
SHAPE = (2, 4, 8, 8)

# our sampler name -> (diffusers class, extra config)
REFERENCE = {
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
}


def config_for(spacing: str, **extra) -> dict:
    cfg = dict(SD15, timestep_spacing=spacing)
    cfg.update(extra)
    return cfg


def reference_scheduler(sampler: str, config: dict, steps: int, **extra):
    cls, kw = REFERENCE[sampler]
    sched = cls.from_config(config, **kw, **extra)
    sched.set_timesteps(steps)
    return sched


def reference_sigmas(sched) -> np.ndarray:
    """diffusers' sigmas; DDIM has none, so derive them from alphas_cumprod at its timesteps."""
    if isinstance(sched, DDIMScheduler):
        abar = sched.alphas_cumprod.numpy().astype(np.float64)[sched.timesteps.numpy()]
        final = float(sched.final_alpha_cumprod)
        abar = np.append(abar, final)
        return np.sqrt((1.0 - abar) / abar)
    return sched.sigmas.numpy().astype(np.float64)


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


# ----------------------------------------------------------------------------------------------
# schedules
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("num_train", [1000, 777])
def test_train_alphas_cumprod_matches_diffusers(beta_schedule, num_train):
    cfg = dict(SD15, beta_schedule=beta_schedule, num_train_timesteps=num_train)
    ref = EulerDiscreteScheduler.from_config(cfg).alphas_cumprod.numpy().astype(np.float64)
    ours = train_alphas_cumprod(cfg)
    assert ours.dtype == np.float64
    assert np.max(np.abs(ours / ref - 1.0)) < 2e-6
    # and the VE sigmas derived from them, including the small ones near t = 0
    s_ref, s_ours = np.sqrt((1 - ref) / ref), np.sqrt((1 - ours) / ours)
    assert np.max(np.abs(s_ours / s_ref - 1.0)) < 2e-6


@pytest.mark.parametrize("steps", [10, 25, 7, 30])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_schedule_matches_diffusers(sampler, spacing, steps):
    cfg = config_for(spacing)
    ref = reference_scheduler(sampler, cfg, steps)
    sch = make_schedule(cfg, sampler, steps)

    ref_t = ref.timesteps.numpy().astype(np.float64)
    assert sch.timesteps.shape == (steps,) and sch.sigmas.shape == (steps + 1,)
    assert np.max(np.abs(sch.timesteps - ref_t)) < 1e-5
    assert rel_diff(sch.sigmas, reference_sigmas(ref)) < 1e-5
    assert np.all(np.diff(sch.sigmas) <= 0)

    # init noise: diffusers' value, moved to VE space for the VP-init schedulers (1.0)
    ref_init = float(ref.init_noise_sigma)
    if sampler in ("ddim", "dpmpp_2m", "dpmpp_2m_karras"):
        assert ref_init == 1.0
        ref_init = float(np.sqrt(1.0 + sch.sigmas[0] ** 2))
    assert abs(sch.init_noise_sigma - ref_init) / ref_init < 1e-5

    # every schedule sigma maps back to the timestep diffusers feeds there
    for sigma, t in zip(sch.sigmas[:-1], ref_t):
        assert sch.timestep_for(float(sigma)) == pytest.approx(t, abs=1e-6)


def test_euler_init_noise_sigma_quirk():
    """diffusers' Euler: sigma_max for linspace/trailing, sqrt(sigma_max^2 + 1) for leading."""
    lead = make_schedule(config_for("leading"), "euler", 25)
    trail = make_schedule(config_for("trailing"), "euler", 25)
    assert lead.init_noise_sigma == pytest.approx(np.sqrt(lead.sigmas[0] ** 2 + 1.0), rel=1e-12)
    assert trail.init_noise_sigma == pytest.approx(trail.sigmas[0], rel=1e-12)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_default_spacing_is_per_diffusers_class(sampler):
    """SD1.5's shipped config has no timestep_spacing: each class falls back to its own default."""
    cfg = {k: v for k, v in SD15.items() if k != "timestep_spacing"}
    ref = reference_scheduler(sampler, cfg, 20)
    sch = make_schedule(cfg, sampler, 20)
    assert np.array_equal(sch.timesteps, ref.timesteps.numpy().astype(np.float64))


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_ddim_final_sigma(set_alpha_to_one):
    cfg = config_for("leading", set_alpha_to_one=set_alpha_to_one)
    sch = make_schedule(cfg, "ddim", 10)
    ref = reference_scheduler("ddim", cfg, 10)
    abar_final = float(ref.final_alpha_cumprod)
    assert sch.sigmas[-1] == pytest.approx(np.sqrt((1 - abar_final) / abar_final), abs=1e-7)
    assert (sch.sigmas[-1] == 0.0) == set_alpha_to_one


def test_dpm_lambda_min_clipped_and_cosine_karras():
    cfg = dict(SD15, beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1, timestep_spacing="linspace")
    for sampler in ("dpmpp_2m", "dpmpp_2m_karras"):
        ref = reference_scheduler(sampler, cfg, 12)
        sch = make_schedule(cfg, sampler, 12)
        assert np.array_equal(sch.timesteps, ref.timesteps.numpy().astype(np.float64)), sampler
        assert rel_diff(sch.sigmas, reference_sigmas(ref)) < 1e-5


def test_timestep_for_interpolates_like_sigma_to_t():
    sch = make_schedule(config_for("leading"), "euler", 10)
    ref = EulerDiscreteScheduler.from_config(SD15)
    log_sigmas = np.log(((1 - ref.alphas_cumprod) / ref.alphas_cumprod).numpy() ** 0.5)
    for sigma in (0.01, 0.05, 0.3, 1.0, 3.7, 14.0, 20.0):
        want = float(ref._sigma_to_t(np.array(sigma), log_sigmas))
        assert sch.timestep_for(sigma) == pytest.approx(want, abs=1e-3)


def test_karras_sigmas():
    s = karras_sigmas(0.03, 14.6, 10)
    assert s.shape == (10,)
    assert s[0] == pytest.approx(14.6) and s[-1] == pytest.approx(0.03)
    # uniform in sigma^(1/rho) (Karras et al. 2022, eq. 5)
    assert np.allclose(np.diff(s ** (1 / 7.0)), (0.03 ** (1 / 7) - 14.6 ** (1 / 7)) / 9)


# ----------------------------------------------------------------------------------------------
# full sampling loops against diffusers
# ----------------------------------------------------------------------------------------------
def model_np(x: np.ndarray, t: float) -> np.ndarray:
    """A deterministic, nonlinear stand-in for the UNet (eps or v output of magnitude ~1)."""
    t = np.float32(t)
    return (
        np.tanh(x * np.float32(0.7) + t * np.float32(0.001)) * np.float32(0.9)
        + np.cos(x * (np.float32(1.0) + t / np.float32(1000.0))) * np.float32(0.05)
    ).astype(np.float32)


def model_torch(x, t):
    t = float(t)
    return torch.tanh(x * 0.7 + t * 0.001) * 0.9 + torch.cos(x * (1.0 + t / 1000.0)) * 0.05


def test_dummy_models_agree():
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32) * 5
    for t in (999.0, 500.5, 1.0):
        assert np.max(np.abs(model_np(x, t) - model_torch(torch.from_numpy(x), t).numpy())) < 1e-6


class ListRNG:
    """Hands out pre-drawn noise arrays in order (the same ones diffusers gets)."""

    def __init__(self, arrays):
        self.arrays = list(arrays)
        self.calls = 0

    def standard_normal(self, size):
        arr = self.arrays[self.calls]
        assert arr.shape == tuple(size)
        self.calls += 1
        return arr


def run_diffusers(sampler, config, steps, prediction_type, noise, step_noise, monkeypatch):
    sched = reference_scheduler(sampler, config, steps, prediction_type=prediction_type)
    if sampler == "euler_a":
        drawn = iter(step_noise)
        monkeypatch.setattr(
            scheduling_euler_ancestral_discrete,
            "randn_tensor",
            lambda shape, **kw: torch.from_numpy(next(drawn)),
        )
    latents = torch.from_numpy(noise) * sched.init_noise_sigma
    for t in sched.timesteps:
        model_in = sched.scale_model_input(latents, t)
        out = model_torch(model_in, t)
        latents = sched.step(out, t, latents).prev_sample
    return latents.numpy()


def run_ours(sampler, config, steps, prediction_type, noise, step_noise, callback=None):
    schedule = make_schedule(config, sampler, steps)
    sdef = get_sampler(sampler)
    denoise = make_denoiser(model_np, schedule, prediction_type)
    x = noise * schedule.init_noise_sigma
    assert x.dtype == np.float32
    rng = ListRNG(step_noise) if sdef.stochastic else None
    x = sdef.run(denoise, x, schedule, rng=rng, callback=callback)
    assert x.dtype == np.float32
    return final_latents(x, schedule)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_sampling_loop_matches_diffusers(sampler, spacing, steps, prediction_type, monkeypatch):
    rng = np.random.default_rng(1234)
    noise = rng.standard_normal(SHAPE).astype(np.float32)
    step_noise = [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(steps)]
    cfg = config_for(spacing)

    want = run_diffusers(sampler, cfg, steps, prediction_type, noise, step_noise, monkeypatch)
    got = run_ours(sampler, cfg, steps, prediction_type, noise, step_noise)
    assert got.dtype == np.float32 and got.shape == SHAPE
    assert rel_diff(got, want) < 1e-5, f"max diff {np.max(np.abs(got - want)):.3g}"


@pytest.mark.parametrize("spacing,steps", [("trailing", 30), ("linspace", 7), ("leading", 30)])
def test_ddim_prev_timestep_quirk(spacing, steps, monkeypatch):
    """diffusers' DDIM steps to t - T//steps, not to the next timestep, for these spacings."""
    noise = np.random.default_rng(5).standard_normal(SHAPE).astype(np.float32)
    cfg = config_for(spacing)
    want = run_diffusers("ddim", cfg, steps, "epsilon", noise, [], monkeypatch)
    got = run_ours("ddim", cfg, steps, "epsilon", noise, [])
    assert rel_diff(got, want) < 1e-5
    sch = make_schedule(cfg, "ddim", steps)
    assert (sch.ddim_prev_sigmas is None) == (spacing == "leading")


def test_ddim_is_euler_on_ddim_sigmas():
    sch = make_schedule(config_for("leading"), "ddim", 10)
    assert sch.ddim_prev_sigmas is None
    denoise = make_denoiser(model_np, sch, "epsilon")
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32) * sch.init_noise_sigma
    assert np.array_equal(sample_ddim(denoise, x, sch.sigmas), sample_euler(denoise, x, sch.sigmas))


def test_callback():
    sch = make_schedule(config_for("trailing"), "euler_a", 10)
    denoise = make_denoiser(model_np, sch, "epsilon")
    rng = np.random.default_rng(3)
    seen = []
    x0 = rng.standard_normal(SHAPE).astype(np.float32) * sch.init_noise_sigma
    out = sample_euler_ancestral(denoise, x0, sch.sigmas, rng=rng, callback=seen.append)
    assert out.dtype == np.float32
    assert [c["i"] for c in seen] == list(range(10))
    assert [c["sigma"] for c in seen] == sch.sigmas[:-1].tolist()
    assert all(c["denoised"].shape == SHAPE for c in seen)
    assert np.array_equal(seen[0]["x"], x0)


def test_euler_a_is_reproducible_per_seed():
    sch = make_schedule(config_for("leading"), "euler_a", 10)
    denoise = make_denoiser(model_np, sch, "v_prediction")
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32) * sch.init_noise_sigma
    a = sample_euler_ancestral(denoise, x, sch.sigmas, rng=np.random.default_rng(7))
    b = sample_euler_ancestral(denoise, x, sch.sigmas, rng=np.random.default_rng(7))
    c = sample_euler_ancestral(denoise, x, sch.sigmas, rng=np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # eta=0 removes the noise: plain Euler
    d = sample_euler_ancestral(denoise, x, sch.sigmas, rng=np.random.default_rng(7), eta=0.0)
    assert np.array_equal(d, sample_euler(denoise, x, sch.sigmas))


def test_sample_prediction_type():
    sch = make_schedule(config_for("leading"), "euler", 10)
    target = np.full(SHAPE, 0.25, dtype=np.float32)
    denoise = make_denoiser(lambda x_in, t: target, sch, "sample")
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32) * sch.init_noise_sigma
    # a model that always predicts x_0 = target lands exactly on it
    assert np.allclose(sample_euler(denoise, x, sch.sigmas), target, atol=1e-6)


def test_modules_do_not_import_torch():
    code = (
        "import sys; import sdrt.runtime.samplers, sdrt.runtime.schedules, sdrt.runtime.denoiser; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ----------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [0, -3])
def test_nonpositive_steps(steps):
    with pytest.raises(ConfigError, match=r"steps must be at least 1 \(e\.g\. pass steps=25\)"):
        make_schedule(SD15, "euler", steps)


@pytest.mark.parametrize("steps", [2.5, "10", True, None])
def test_non_integer_steps(steps):
    with pytest.raises(ConfigError, match="whole number"):
        make_schedule(SD15, "euler", steps)


def test_too_many_steps():
    with pytest.raises(ConfigError, match="num_train_timesteps=1000; pass steps between 1 and 1000"):
        make_schedule(SD15, "ddim", 1001)
    assert make_schedule(SD15, "euler", 1000).steps == 1000


def test_unknown_sampler():
    with pytest.raises(ConfigError, match=r"unknown sampler 'heun'; choose one of: euler, euler_a, ddim, dpmpp_2m, dpmpp_2m_karras"):
        get_sampler("heun")
    with pytest.raises(ConfigError, match="unknown sampler"):
        make_schedule(SD15, "heun", 10)


def test_unknown_spacing():
    with pytest.raises(ConfigError, match="unknown timestep_spacing 'uniform'; choose one of: leading, trailing, linspace"):
        make_schedule(config_for("uniform"), "euler", 10)


def test_unknown_beta_schedule_and_zero_snr():
    with pytest.raises(ConfigError, match="unknown beta_schedule 'sigmoid'"):
        make_schedule(dict(SD15, beta_schedule="sigmoid"), "euler", 10)
    with pytest.raises(ConfigError, match="rescale_betas_zero_snr"):
        make_schedule(dict(SD15, rescale_betas_zero_snr=True), "euler", 10)


def test_unknown_prediction_type():
    sch = make_schedule(SD15, "euler", 10)
    with pytest.raises(ConfigError, match="unknown prediction_type 'flow'; choose one of: epsilon, v_prediction, sample"):
        make_denoiser(model_np, sch, "flow")


def test_euler_a_needs_rng():
    sch = make_schedule(SD15, "euler_a", 10)
    denoise = make_denoiser(model_np, sch, "epsilon")
    x = np.zeros(SHAPE, dtype=np.float32)
    with pytest.raises(ConfigError, match="pass rng=np.random.default_rng"):
        sample_euler_ancestral(denoise, x, sch.sigmas)


@pytest.mark.parametrize("clip_sample", [None, True, False])
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_clip_sample_matches_diffusers(sampler, clip_sample, monkeypatch):
    """DDIMScheduler clamps x_0 to [-1, 1] when the config has no clip_sample key (SD 1.5's
    PNDM config swapped for DDIM); the dummy model's x_0 reaches ~30, so the clamp matters."""
    cfg = {k: v for k, v in config_for("leading").items() if k != "clip_sample"}
    if clip_sample is not None:
        cfg.update(clip_sample=clip_sample, clip_sample_range=1.5)
    rng = np.random.default_rng(9)
    noise = rng.standard_normal(SHAPE).astype(np.float32)
    step_noise = [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(10)]
    want = run_diffusers(sampler, cfg, 10, "epsilon", noise, step_noise, monkeypatch)
    got = run_ours(sampler, cfg, 10, "epsilon", noise, step_noise)
    assert rel_diff(got, want) < 1e-5, f"max diff {np.max(np.abs(got - want)):.3g}"
    clamps = sampler == "ddim" and clip_sample is not False
    assert (make_schedule(cfg, sampler, 10).clip_denoised is not None) == clamps
    if clamps:  # and without the clamp the result would differ: the test can fail
        unclipped = run_ours(sampler, {**cfg, "clip_sample": False}, 10, "epsilon", noise, step_noise)
        assert rel_diff(unclipped, want) > 1e-3


def test_thresholding_is_rejected():
    with pytest.raises(ConfigError, match="thresholding"):
        make_schedule({**config_for("leading"), "thresholding": True}, "ddim", 10)
