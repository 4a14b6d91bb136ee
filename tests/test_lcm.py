"""The LCM sampler and schedule against diffusers' LCMScheduler with the same noise, and the
guidance-scale embedding against diffusers' ``get_guidance_scale_embedding``."""

from __future__ import annotations

import numpy as np
import pytest

from sdrt.errors import ConfigError
from sdrt.runtime.conditioning import guidance_scale_embedding
from sdrt.runtime.denoiser import make_denoiser
from sdrt.runtime.samplers import final_latents, get_sampler, sample_lcm
from sdrt.runtime.schedules import make_schedule

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusers import LCMScheduler  # noqa: E402
from diffusers.schedulers import scheduling_lcm  # noqa: E402

# SimianLuo/LCM_Dreamshaper_v7 scheduler_config.json
LCM_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "original_inference_steps": 50,
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_scaling": 10.0,
}
SHAPE = (2, 4, 8, 8)


def model_np(x: np.ndarray, t: float) -> np.ndarray:
    t = np.float32(t)
    return (np.tanh(x * np.float32(0.7) + t * np.float32(0.001)) * np.float32(0.9)).astype(np.float32)


def model_torch(x, t):
    return torch.tanh(x * 0.7 + float(t) * 0.001) * 0.9


class ListRNG:
    def __init__(self, arrays):
        self.arrays = list(arrays)
        self.calls = 0

    def standard_normal(self, size):
        arr = self.arrays[self.calls]
        assert arr.shape == tuple(size)
        self.calls += 1
        return arr


def rel_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(np.max(np.abs(b)), 1e-12))


@pytest.mark.parametrize("original", [50, 20])
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 6, 8])
def test_lcm_schedule_matches_diffusers(steps, original):
    cfg = dict(LCM_CONFIG, original_inference_steps=original)
    ref = LCMScheduler.from_config(cfg)
    ref.set_timesteps(steps)
    sch = make_schedule(cfg, "lcm", steps)
    assert np.array_equal(sch.timesteps, ref.timesteps.numpy().astype(np.float64))
    abar = ref.alphas_cumprod.numpy().astype(np.float64)[ref.timesteps.numpy()]
    assert rel_diff(sch.sigmas[:-1], np.sqrt((1 - abar) / abar)) < 1e-6
    assert sch.sigmas[-1] == 0.0
    for i, t in enumerate(ref.timesteps.tolist()):
        c_skip, c_out = ref.get_scalings_for_boundary_condition_discrete(torch.tensor(t))
        assert sch.c_skip[i] == pytest.approx(float(c_skip), rel=1e-5)
        assert sch.c_out[i] == pytest.approx(float(c_out), rel=1e-6)
        assert sch.timestep_for(float(sch.sigmas[i])) == t


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_lcm_loop_matches_diffusers_with_the_same_noise(steps, prediction_type, monkeypatch):
    cfg = dict(LCM_CONFIG, prediction_type=prediction_type)
    rng = np.random.default_rng(99)
    noise = rng.standard_normal(SHAPE).astype(np.float32)
    step_noise = [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(steps)]

    ref = LCMScheduler.from_config(cfg)
    ref.set_timesteps(steps)
    drawn = iter(step_noise)
    monkeypatch.setattr(scheduling_lcm, "randn_tensor", lambda shape, **kw: torch.from_numpy(next(drawn)))
    latents = torch.from_numpy(noise) * ref.init_noise_sigma
    for t in ref.timesteps:
        latents, denoised = ref.step(model_torch(ref.scale_model_input(latents, t), t), t, latents, return_dict=False)
    want = denoised.numpy()

    sch = make_schedule(cfg, "lcm", steps)
    denoise = make_denoiser(model_np, sch, prediction_type)
    rng_ours = ListRNG(step_noise)
    x = get_sampler("lcm").run(denoise, noise * np.float32(sch.init_noise_sigma), sch, rng=rng_ours)
    got = final_latents(x, sch)
    assert got.dtype == np.float32
    assert rng_ours.calls == steps - 1  # no noise after the last step (none at all for 1 step)
    assert rel_diff(got, want) < 1e-5, f"max diff {np.max(np.abs(got - want)):.3g}"


def test_lcm_errors():
    sch = make_schedule(LCM_CONFIG, "lcm", 4)
    denoise = make_denoiser(model_np, sch, "epsilon")
    x = np.zeros(SHAPE, np.float32)
    with pytest.raises(ConfigError, match="rng"):
        get_sampler("lcm").run(denoise, x, sch)
    with pytest.raises(ConfigError, match="c_skip and c_out"):
        sample_lcm(denoise, x, sch.sigmas, rng=np.random.default_rng(0))
    with pytest.raises(ConfigError, match="original_inference_steps=50"):
        make_schedule(LCM_CONFIG, "lcm", 51)
    # one step is deterministic: no rng needed
    one = make_schedule(LCM_CONFIG, "lcm", 1)
    assert one.timesteps.tolist() == [999.0]
    get_sampler("lcm").run(make_denoiser(model_np, one, "epsilon"), x, one)


@pytest.mark.parametrize("dim", [256, 32, 33])
@pytest.mark.parametrize("guidance", [1.0, 1.5, 8.5])
def test_guidance_scale_embedding_matches_diffusers(guidance, dim):
    from diffusers import LatentConsistencyModelPipeline

    w = torch.tensor(guidance - 1).repeat(3)
    want = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim).numpy()
    got = guidance_scale_embedding(np.full((3,), guidance - 1.0), dim)
    assert got.dtype == np.float32 and got.shape == want.shape == (3, dim)
    # sin/cos of arguments up to 7500 in float32: the two libraries' exp/sin differ by an ulp
    assert np.abs(got - want).max() < 2e-3
