"""Samplers as pure numpy functions over a denoiser, k-diffusion style.

Every sampler has the signature ``fn(denoise, x, sigmas, *, rng=None, callback=None) -> x`` where

* ``denoise(x, sigma) -> D(x; sigma)`` is the denoised estimate of x_0 (Karras et al. 2022,
  "Elucidating the Design Space of Diffusion-Based Generative Models", eq. 1-2 and Table 1);
  :func:`sdrt.runtime.denoiser.make_denoiser` builds it from a UNet;
* ``x`` is the VE-space sample at ``sigmas[0]`` (``x = x_0 + sigma * eps``);
* ``sigmas`` is the (n+1,) descending schedule of :func:`sdrt.runtime.schedules.make_schedule`.

They reproduce the diffusers schedulers step for step (see ``tests/test_samplers.py``). Arrays
stay in the dtype of ``x`` (float32); the per-step scalar coefficients are computed in float64
and applied as Python floats, which numpy does not let upcast a float32 array.

Multistep history (DPM-Solver++'s previous denoised estimate) is a loop variable: a sampler
call holds all of its state, so one function object serves any number of concurrent runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Protocol

import numpy as np

from sdrt.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .schedules import Schedule

__all__ = [
    "Denoise",
    "Callback",
    "NormalRNG",
    "SamplerDef",
    "SAMPLERS",
    "DISTILLED_SAMPLERS",
    "get_sampler",
    "to_d",
    "ancestral_step",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_ddim",
    "sample_dpmpp_2m",
    "sample_lcm",
    "final_latents",
]

#: D(x, sigma) -> denoised estimate of x_0, same shape and dtype as x
Denoise = Callable[[np.ndarray, float], np.ndarray]
#: called once per step with dict(i=step index, x=x before the step, sigma=sigmas[i], denoised=D)
Callback = Callable[[Mapping[str, Any]], None]


class NormalRNG(Protocol):
    """What the ancestral sampler needs from ``rng``: ``numpy.random.Generator`` fits."""

    def standard_normal(self, size: Any) -> np.ndarray: ...


# ----------------------------------------------------------------------------------------------
# the math
# ----------------------------------------------------------------------------------------------
def to_d(x: np.ndarray, sigma: float, denoised: np.ndarray) -> np.ndarray:
    """ODE derivative dx/dsigma = (x - D(x; sigma)) / sigma (Karras et al. 2022, eq. 4 with
    sigma(t) = t, s(t) = 1; Algorithm 1 line 4)."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Split the step sigma_from -> sigma_to into a deterministic move down to ``sigma_down`` and
    fresh noise of std ``sigma_up``, with sigma_down^2 + sigma_up^2 = sigma_to^2 (k-diffusion's
    ``get_ancestral_step``; eta=1 is the DDPM posterior's variance in VE form)."""
    if not eta or sigma_to == 0.0:
        return sigma_to, 0.0
    sigma_up = min(
        sigma_to,
        eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2),
    )
    sigma_down = math.sqrt(sigma_to**2 - sigma_up**2)
    return sigma_down, sigma_up


def _sigma_list(sigmas: Any) -> list[float]:
    s = np.asarray(sigmas, dtype=np.float64)
    if s.ndim != 1 or s.shape[0] < 2:
        raise ConfigError(f"sigmas must be a 1-D array of n+1 >= 2 noise levels, got shape {s.shape}")
    return [float(v) for v in s]


def _report(callback: Optional[Callback], i: int, x: np.ndarray, sigma: float, denoised: np.ndarray) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "denoised": denoised})


# ----------------------------------------------------------------------------------------------
# samplers
# ----------------------------------------------------------------------------------------------
def sample_euler(
    denoise: Denoise,
    x: np.ndarray,
    sigmas: Any,
    *,
    rng: Optional[NormalRNG] = None,
    callback: Optional[Callback] = None,
) -> np.ndarray:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 1 without the
    Heun correction, S_churn = 0). == diffusers EulerDiscreteScheduler."""
    del rng  # deterministic
    s = _sigma_list(sigmas)
    for i in range(len(s) - 1):
        denoised = denoise(x, s[i])
        _report(callback, i, x, s[i], denoised)
        # x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * d_i
        x = x + to_d(x, s[i], denoised) * (s[i + 1] - s[i])
    return x


def sample_euler_ancestral(
    denoise: Denoise,
    x: np.ndarray,
    sigmas: Any,
    *,
    rng: Optional[NormalRNG] = None,
    callback: Optional[Callback] = None,
    eta: float = 1.0,
) -> np.ndarray:
    """Ancestral sampling with Euler steps (k-diffusion ``sample_euler_ancestral``): an Euler
    step down to sigma_down, then fresh noise * sigma_up. == diffusers
    EulerAncestralDiscreteScheduler (eta=1).

    Noise for step i is ``rng.standard_normal(x.shape).astype(x.dtype)``, drawn for every step
    with sigma_up > 0, i.e. all but the last one, which ends at sigma 0 (diffusers also draws
    for that last step but multiplies it by sigma_up = 0, so the results agree).
    """
    if rng is None:
        raise ConfigError(
            "euler_a is a stochastic sampler: pass rng=np.random.default_rng(seed) "
            "(anything with standard_normal(shape))"
        )
    s = _sigma_list(sigmas)
    for i in range(len(s) - 1):
        denoised = denoise(x, s[i])
        _report(callback, i, x, s[i], denoised)
        sigma_down, sigma_up = ancestral_step(s[i], s[i + 1], eta)
        x = x + to_d(x, s[i], denoised) * (sigma_down - s[i])
        if s[i + 1] > 0.0 and sigma_up > 0.0:
            noise = np.asarray(rng.standard_normal(x.shape)).astype(x.dtype, copy=False)
            x = x + noise * sigma_up
    return x


def sample_ddim(
    denoise: Denoise,
    x: np.ndarray,
    sigmas: Any,
    *,
    rng: Optional[NormalRNG] = None,
    callback: Optional[Callback] = None,
    prev_sigmas: Any = None,
    clip_denoised: Optional[float] = None,
) -> np.ndarray:
    """Deterministic DDIM (eta = 0; Song et al. 2021, eq. 12).

    In VE space eq. 12 reads ``x_prev = x0 + sigma_prev * eps``, with ``eps = (x - x0) / sigma``:
    exactly an Euler step from sigma to sigma_prev (Karras et al. 2022, Sec. 3 / Table 1 "DDIM").
    So with ``prev_sigmas=None`` this is :func:`sample_euler`. == diffusers DDIMScheduler(eta=0).

    ``prev_sigmas`` ((n,), from ``Schedule.ddim_prev_sigmas``) reproduces diffusers' DDIM where
    its step from timestep t lands on ``t - T // steps`` rather than on the next schedule
    timestep: step i goes to ``prev_sigmas[i]``, and the VP latents ``x / sqrt(1 + sigma^2)``
    found there are then read as the latents at ``sigmas[i+1]``, as diffusers does.

    ``clip_denoised`` (diffusers' ``clip_sample``) clamps x_0 to [-r, r] but, as diffusers does
    by default (``use_clipped_model_output=False``), keeps eps from the unclamped x_0:
    ``x_prev = clamp(x0) + sigma_prev * (x - x0) / sigma``.
    """
    del rng  # eta = 0: deterministic
    s = _sigma_list(sigmas)
    if prev_sigmas is None:
        landing = s[1:]
    else:
        landing = [float(v) for v in np.asarray(prev_sigmas, dtype=np.float64)]
        if len(landing) != len(s) - 1:
            raise ConfigError(f"prev_sigmas needs {len(s) - 1} values (one per step), got {len(landing)}")
    for i in range(len(s) - 1):
        denoised = denoise(x, s[i])
        _report(callback, i, x, s[i], denoised)
        if clip_denoised is None:
            x = x + to_d(x, s[i], denoised) * (landing[i] - s[i])
        else:
            r = clip_denoised
            x = np.clip(denoised, -r, r) + to_d(x, s[i], denoised) * landing[i]
        if landing[i] != s[i + 1]:
            # keep x_vp = x_ve * sqrt(abar) fixed while relabelling its noise level
            x = x * math.sqrt((1.0 + s[i + 1] ** 2) / (1.0 + landing[i] ** 2))
    return x


def sample_dpmpp_2m(
    denoise: Denoise,
    x: np.ndarray,
    sigmas: Any,
    *,
    rng: Optional[NormalRNG] = None,
    callback: Optional[Callback] = None,
) -> np.ndarray:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), data-prediction form.

    With lambda = log(alpha / sigma_vp) = -log(sigma) in VE space and h = lambda_{i+1} - lambda_i,
    the update (their eq. 9 / Alg. 2 line 6) becomes
        x_{i+1} = (sigma_{i+1} / sigma_i) x_i - (e^{-h} - 1) D_i',  e^{-h} = sigma_{i+1} / sigma_i,
    with D_i' = D_i for the first-order steps and, for the others,
        D_i' = (1 + 1 / (2 r)) D_i - 1 / (2 r) D_{i-1},   r = h_{i-1} / h_i.
    First-order steps: the first (no history) and the last (sigma_{i+1} = 0, where lambda is
    infinite; diffusers' final_sigmas_type="zero" forces it, and lower_order_final would for
    fewer than 15 steps anyway). == diffusers DPMSolverMultistepScheduler(algorithm_type=
    "dpmsolver++", solver_order=2, solver_type="midpoint").
    """
    del rng  # deterministic
    s = _sigma_list(sigmas)
    old_denoised: Optional[np.ndarray] = None
    h_last: Optional[float] = None
    for i in range(len(s) - 1):
        denoised = denoise(x, s[i])
        _report(callback, i, x, s[i], denoised)
        ratio = s[i + 1] / s[i]  # = e^{-h}
        if old_denoised is None or s[i + 1] == 0.0:
            # first order (== DDIM): x = ratio * x + (1 - ratio) * D
            x = x * ratio - denoised * (ratio - 1.0)
        else:
            h = math.log(s[i] / s[i + 1])
            r = h_last / h
            c = 1.0 / (2.0 * r)
            denoised_d = denoised * (1.0 + c) - old_denoised * c
            x = x * ratio - denoised_d * (ratio - 1.0)
        if s[i + 1] > 0.0:
            h_last = math.log(s[i] / s[i + 1])
        old_denoised = denoised
    return x


def sample_lcm(
    denoise: Denoise,
    x: np.ndarray,
    sigmas: Any,
    *,
    rng: Optional[NormalRNG] = None,
    callback: Optional[Callback] = None,
    c_skip: Any = None,
    c_out: Any = None,
    clip_denoised: Optional[float] = None,
) -> np.ndarray:
    """Multistep latent-consistency sampling (Luo et al. 2023, "Latent Consistency Models",
    Algorithm 3; Song et al. 2023, "Consistency Models", Algorithm 1). == diffusers LCMScheduler.

    Step i evaluates the consistency function with its boundary-condition scalings
    (``c_skip``/``c_out`` from :func:`~sdrt.runtime.schedules.lcm_boundary_scalings`),

        f(x_i) = c_out[i] * D(x_i; sigma_i) + c_skip[i] * x_i^vp,   x_i^vp = x_i / sqrt(1 + sigma_i^2),

    then re-noises it to the next level, ``x_{i+1} = f(x_i) + sigma_{i+1} * z`` with fresh
    z ~ N(0, I) (in VP form diffusers' ``sqrt(abar) f + sqrt(1 - abar) z``). The last step
    returns f itself (sigma 0), so a 1-step run draws no noise. ``clip_denoised`` (diffusers'
    ``clip_sample``) clamps D to [-r, r] before the boundary condition.
    """
    s = _sigma_list(sigmas)
    n = len(s) - 1
    if c_skip is None or c_out is None:
        raise ConfigError("lcm needs the schedule's c_skip and c_out: run it through SamplerDef.run")
    skip = [float(v) for v in np.asarray(c_skip, dtype=np.float64)]
    out = [float(v) for v in np.asarray(c_out, dtype=np.float64)]
    if len(skip) != n or len(out) != n:
        raise ConfigError(f"c_skip and c_out need {n} values (one per step), got {len(skip)} and {len(out)}")
    if rng is None and n > 1:
        raise ConfigError(
            "lcm re-noises between steps: pass rng=np.random.default_rng(seed) "
            "(anything with standard_normal(shape))"
        )
    for i in range(n):
        denoised = denoise(x, s[i])
        if clip_denoised is not None:
            denoised = np.clip(denoised, -clip_denoised, clip_denoised)
        _report(callback, i, x, s[i], denoised)
        x = denoised * out[i] + x * (skip[i] / math.sqrt(1.0 + s[i] ** 2))
        if s[i + 1] > 0.0:
            noise = np.asarray(rng.standard_normal(x.shape)).astype(x.dtype, copy=False)
            x = x + noise * s[i + 1]
    return x


def final_latents(x: np.ndarray, schedule: "Schedule") -> np.ndarray:
    """VE x at ``sigmas[-1]`` back to the VP latents the VAE decodes: ``x / sqrt(1 + sigma^2)``.

    Identity for a final sigma of 0; for DDIM without set_alpha_to_one it applies
    sqrt(final_alpha_cumprod), as diffusers' last DDIM step does.
    """
    sigma_last = float(schedule.sigmas[-1])
    if sigma_last == 0.0:
        return x
    return x * (1.0 / math.sqrt(1.0 + sigma_last**2))


# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplerDef:
    """A sampler and what :func:`~sdrt.runtime.schedules.make_schedule` needs to know about it.

    ``rules``: whose ``set_timesteps`` to follow ("euler", "ddim", "dpm" or "lcm");
    ``default_spacing``: that diffusers class's default ``timestep_spacing``;
    ``karras``: Karras et al. 2022 eq. 5 sigmas instead of the spaced timesteps;
    ``stochastic``: needs ``rng``; ``diffusers_class``: the scheduler it reproduces.
    """

    name: str
    fn: Callable[..., np.ndarray]
    rules: str
    default_spacing: str
    diffusers_class: str
    karras: bool = False
    stochastic: bool = False
    description: str = ""

    def run(
        self,
        denoise: Denoise,
        x: np.ndarray,
        schedule: "Schedule",
        *,
        rng: Optional[NormalRNG] = None,
        callback: Optional[Callback] = None,
    ) -> np.ndarray:
        """``fn(denoise, x, schedule.sigmas, ...)`` plus whatever else the schedule carries for
        this sampler (DDIM's ``prev_sigmas``, LCM's ``c_skip``/``c_out``, the x_0 clamp). Prefer this over
        calling ``fn`` directly."""
        extra: dict[str, Any] = {}
        if schedule.ddim_prev_sigmas is not None:
            extra["prev_sigmas"] = schedule.ddim_prev_sigmas
        if schedule.c_skip is not None:
            extra["c_skip"], extra["c_out"] = schedule.c_skip, schedule.c_out
        if schedule.clip_denoised is not None:
            extra["clip_denoised"] = schedule.clip_denoised
        return self.fn(denoise, x, schedule.sigmas, rng=rng, callback=callback, **extra)


SAMPLERS: dict[str, SamplerDef] = {
    d.name: d
    for d in (
        SamplerDef(
            "euler", sample_euler, "euler", "linspace", "EulerDiscreteScheduler",
            description="Euler ODE solver (deterministic)",
        ),
        SamplerDef(
            "euler_a", sample_euler_ancestral, "euler", "linspace", "EulerAncestralDiscreteScheduler",
            stochastic=True, description="Euler ancestral (stochastic, needs a seed)",
        ),
        SamplerDef(
            "ddim", sample_ddim, "ddim", "leading", "DDIMScheduler",
            description="DDIM, eta=0 (deterministic)",
        ),
        SamplerDef(
            "dpmpp_2m", sample_dpmpp_2m, "dpm", "linspace", "DPMSolverMultistepScheduler",
            description="DPM-Solver++(2M) (deterministic)",
        ),
        SamplerDef(
            "dpmpp_2m_karras", sample_dpmpp_2m, "dpm", "linspace", "DPMSolverMultistepScheduler",
            karras=True, description="DPM-Solver++(2M) on Karras sigmas (deterministic)",
        ),

    )
}


#: Samplers that only make sense for models distilled for them (their own timestep rule and
#: boundary condition), kept apart from the general-purpose ones above, which run any model.
DISTILLED_SAMPLERS: dict[str, SamplerDef] = {
    d.name: d
    for d in (
        SamplerDef(
            "lcm", sample_lcm, "lcm", "leading", "LCMScheduler",
            stochastic=True, description="Latent consistency (LCM models, 1-8 steps; needs a seed)",
        ),
    )
}


def get_sampler(name: str) -> SamplerDef:
    """The registered sampler ``name``; unknown names raise ConfigError listing the choices."""
    try:
        return SAMPLERS[name] if name in SAMPLERS else DISTILLED_SAMPLERS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown sampler {name!r}; choose one of: {', '.join([*SAMPLERS, *DISTILLED_SAMPLERS])}"
        ) from None
