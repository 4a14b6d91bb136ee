"""Noise schedules in k-diffusion (VE) form, reproducing diffusers' schedulers exactly.

Everything here is plain numpy; no torch import.

Conventions
-----------
The UNet is trained in variance-preserving (VP) form: ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``.
The samplers work in the variance-exploding (VE / k-diffusion) form of the same process,
Karras et al. 2022 ("Elucidating the Design Space ...", EDM), Sec. 2 and Appendix C.1:

    x_ve  = x_vp / sqrt(abar)          sigma = sqrt((1 - abar) / abar)
    x_ve  = x_0 + sigma * eps          (so abar = 1 / (1 + sigma^2))

A :class:`Schedule` is the list of noise levels ``sigmas`` a sampler walks through, the model
timestep to feed the UNet at each of them, and the factor that turns unit Gaussian noise into
the starting ``x``. :func:`make_schedule` builds it from a diffusers ``scheduler_config.json``
dict, following the timestep rules of the diffusers scheduler class that the sampler mirrors:

==================  ==================================  ===============================
sampler             diffusers class                     default ``timestep_spacing``
==================  ==================================  ===============================
euler               EulerDiscreteScheduler              linspace
euler_a             EulerAncestralDiscreteScheduler     linspace
ddim                DDIMScheduler                       leading
dpmpp_2m(_karras)   DPMSolverMultistepScheduler         linspace
lcm                 LCMScheduler                        (its own rule, below)
==================  ==================================  ===============================

(the defaults matter: SD1.5's config has no ``timestep_spacing`` key, so diffusers' Euler on
SD1.5 uses "linspace" while its DDIM uses "leading".)

Config keys that choose the *algorithm* in diffusers (``use_karras_sigmas``, ``algorithm_type``,
``solver_order``, ``final_sigmas_type``, ...) are ignored: the sampler name decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any, Mapping

import numpy as np

from sdrt.errors import ConfigError

__all__ = [
    "Schedule",
    "SPACINGS",
    "train_alphas_cumprod",
    "train_sigmas",
    "karras_sigmas",
    "lcm_timesteps",
    "lcm_boundary_scalings",
    "make_schedule",
]

#: timestep spacings of Lin et al. 2023 ("Common Diffusion Noise Schedules and Sample Steps are
#: Flawed", Table 2), as diffusers names them
SPACINGS = ("leading", "trailing", "linspace")

# diffusers' __init__ defaults shared by all four scheduler classes
_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "steps_offset": 0,
}


def _f64(values: Any) -> np.ndarray:
    """Read-only float64 copy (a frozen Schedule should not be mutable through its arrays)."""
    out = np.array(values, dtype=np.float64)
    out.setflags(write=False)
    return out


def _as_f32(values: np.ndarray) -> np.ndarray:
    """Round to float32 precision but keep float64 dtype (diffusers stores schedules as float32)."""
    return np.asarray(values, dtype=np.float64).astype(np.float32).astype(np.float64)


@dataclass(frozen=True, eq=False)
class Schedule:
    """The noise levels a sampler walks through, in VE (k-diffusion) space.

    ``sigmas``: (n+1,) descending; ``sigmas[-1]`` is 0, except for DDIM where it is the sigma of
    ``final_alpha_cumprod`` (0 with ``set_alpha_to_one``, else the sigma of training step 0).
    ``timesteps``: (n,) the UNet timestep that goes with ``sigmas[i]``.
    ``init_noise_sigma``: starting ``x = unit_noise * init_noise_sigma`` (VE space), which is what
    diffusers' ``latents = randn * scheduler.init_noise_sigma`` becomes in VE space:

    * Euler / Euler-a: diffusers' own value, quirk included: ``sigma_max`` for "linspace" and
      "trailing" spacing but ``sqrt(sigma_max^2 + 1)`` for "leading";
    * DDIM / DPM-Solver++: diffusers' VP value is 1.0, i.e. ``x_vp = noise``, which is
      ``x_ve = noise * sqrt(1 + sigmas[0]^2)``.

    ``train_sigmas``: (num_train_timesteps,) sigma of every training timestep (ascending in t),
    for :meth:`timestep_for` on sigmas that are not in the schedule.
    ``ddim_prev_sigmas``: DDIM only, and only where diffusers' DDIM does not land on the next
    schedule sigma (see :func:`make_schedule`); ``None`` otherwise.
    ``c_skip``, ``c_out``: LCM only, (n,) boundary-condition scalings of each step's timestep
    (:func:`lcm_boundary_scalings`); ``None`` otherwise.
    ``clip_denoised``: ``r`` when the scheduler clamps its x_0 prediction to [-r, r]
    (``clip_sample`` / ``clip_sample_range`` of diffusers' DDIM and LCM, applied by those
    samplers); ``None`` otherwise.
    """

    sigmas: np.ndarray
    timesteps: np.ndarray
    init_noise_sigma: float
    train_sigmas: np.ndarray | None = None
    ddim_prev_sigmas: np.ndarray | None = None
    c_skip: np.ndarray | None = None
    c_out: np.ndarray | None = None
    clip_denoised: float | None = None
    sampler: str = ""
    _lookup: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigmas", _f64(self.sigmas))
        object.__setattr__(self, "timesteps", _f64(self.timesteps))
        object.__setattr__(self, "init_noise_sigma", float(self.init_noise_sigma))
        if self.train_sigmas is not None:
            object.__setattr__(self, "train_sigmas", _f64(self.train_sigmas))
        if self.ddim_prev_sigmas is not None:
            object.__setattr__(self, "ddim_prev_sigmas", _f64(self.ddim_prev_sigmas))
        for name in ("c_skip", "c_out"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _f64(getattr(self, name)))
        if self.sigmas.ndim != 1 or self.timesteps.shape != (self.sigmas.shape[0] - 1,):
            raise ConfigError(
                f"Schedule needs sigmas of shape (n+1,) and timesteps of shape (n,); got "
                f"{self.sigmas.shape} and {self.timesteps.shape}"
            )
        # exact lookup table sigma -> timestep; first occurrence wins (only DDIM with
        # set_alpha_to_one=False can repeat a sigma, and then only as the final one)
        lookup: dict[float, float] = {}
        for s, t in zip(self.sigmas[:-1].tolist(), self.timesteps.tolist()):
            lookup.setdefault(s, t)
        self._lookup.update(lookup)

    @property
    def steps(self) -> int:
        return int(self.timesteps.shape[0])

    def timestep_for(self, sigma: float) -> float:
        """Model timestep for noise level ``sigma``.

        Exact for the schedule's own sigmas (the timestep diffusers feeds at that step, which for
        Karras sigmas is the rounded one); otherwise piecewise-linear interpolation in log-sigma
        over the training sigmas, i.e. diffusers' ``_sigma_to_t`` (clamped to [0, T-1]).
        """
        sigma = float(sigma)
        hit = self._lookup.get(sigma)
        if hit is not None:
            return hit
        if self.train_sigmas is not None:
            return float(_log_sigma_to_t(sigma, self.train_sigmas))
        # no training table: interpolate between the schedule's own (sigma, timestep) pairs
        own = np.log(np.maximum(self.sigmas[:-1], 1e-10))[::-1]
        return float(np.interp(math.log(max(sigma, 1e-10)), own, self.timesteps[::-1]))


# ----------------------------------------------------------------------------------------------
# training noise schedule
# ----------------------------------------------------------------------------------------------
def _cosine_alpha_bar(t: float) -> float:
    """Nichol & Dhariwal 2021, eq. 17 (s = 0.008): abar(t) = cos^2((t + s) / (1 + s) * pi / 2)."""
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def _config_value(config: Mapping[str, Any], key: str) -> Any:
    """``config[key]``, or diffusers' default when the key is missing or null."""
    value = config.get(key)
    return _DEFAULTS[key] if value is None else value


def train_alphas_cumprod(config: Mapping[str, Any]) -> np.ndarray:
    """``abar_t = prod_{s<=t} (1 - beta_s)`` for t = 0..T-1, as float64.

    The values reproduce diffusers' float32 ones (to ~1e-7 relative): betas are rounded to
    float32 and ``1 - beta`` is taken in float32, as diffusers does, then the product is
    accumulated in float64 (as torch's CPU cumprod does for float32) and rounded to float32.
    Skipping the float32 rounding would move the small sigmas near t=0 by ~1e-5 relative.
    """
    num_train = _config_value(config, "num_train_timesteps")
    if isinstance(num_train, bool) or not isinstance(num_train, Integral) or num_train < 2:
        raise ConfigError(f"num_train_timesteps must be an integer >= 2, got {num_train!r}")
    num_train = int(num_train)
    if config.get("rescale_betas_zero_snr"):
        raise ConfigError(
            "rescale_betas_zero_snr=True (zero terminal SNR) is not supported: its final sigma is "
            "infinite in VE space. Use a scheduler config without it."
        )
    trained = config.get("trained_betas")
    schedule = _config_value(config, "beta_schedule")
    if trained is not None:
        betas = np.asarray(trained, dtype=np.float64)
        if betas.shape != (num_train,):
            raise ConfigError(
                f"trained_betas has {betas.size} values but num_train_timesteps is {num_train}"
            )
    elif schedule == "linear":
        b0 = float(_config_value(config, "beta_start"))
        b1 = float(_config_value(config, "beta_end"))
        betas = np.linspace(b0, b1, num_train)
    elif schedule == "scaled_linear":
        # latent-diffusion schedule: linear in sqrt(beta)
        b0 = float(_config_value(config, "beta_start")) ** 0.5
        b1 = float(_config_value(config, "beta_end")) ** 0.5
        betas = np.linspace(b0, b1, num_train).astype(np.float32).astype(np.float64) ** 2
    elif schedule == "squaredcos_cap_v2":
        # beta_t = 1 - abar((t+1)/T) / abar(t/T), capped at 0.999 (Nichol & Dhariwal 2021, eq. 17)
        betas = np.array(
            [
                min(1.0 - _cosine_alpha_bar((i + 1) / num_train) / _cosine_alpha_bar(i / num_train), 0.999)
                for i in range(num_train)
            ]
        )
    else:
        raise ConfigError(
            f"unknown beta_schedule {schedule!r}; choose one of: linear, scaled_linear, "
            "squaredcos_cap_v2 (or give trained_betas)"
        )
    betas32 = betas.astype(np.float32)
    alphas32 = np.float32(1.0) - betas32
    return np.cumprod(alphas32.astype(np.float64)).astype(np.float32).astype(np.float64)


def train_sigmas(config: Mapping[str, Any]) -> np.ndarray:
    """VE sigma of every training timestep, ``sqrt((1 - abar) / abar)``, ascending in t."""
    abar = train_alphas_cumprod(config)
    return _as_f32(np.sqrt((1.0 - abar) / abar))


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, eq. 5: n sigmas from sigma_max down to sigma_min, uniform in sigma^(1/rho).

    Returns (n,) float64 without a trailing 0 (diffusers' ``_convert_to_karras``; append the final
    sigma yourself, as :func:`make_schedule` does).
    """
    ramp = np.linspace(0.0, 1.0, n)
    max_inv_rho = float(sigma_max) ** (1.0 / rho)
    min_inv_rho = float(sigma_min) ** (1.0 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def _interp_sigmas(timesteps: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Sigma at (possibly fractional) timesteps: linear interpolation in t, like diffusers."""
    return np.interp(timesteps, np.arange(table.shape[0], dtype=np.float64), table)


def _log_sigma_to_t(sigmas: Any, table: np.ndarray) -> np.ndarray:
    """diffusers' ``_sigma_to_t``: invert sigma(t) by linear interpolation in log sigma, clamped
    to [0, T-1]. The log table is taken in float32 like diffusers' (``np.log`` of its float32
    sigmas): that decides e.g. whether the top Karras sigma of the cosine schedule maps to
    t = 999 or to 998.99999 (then truncated to 998)."""
    log_table = np.log(table.astype(np.float32)).astype(np.float64)
    log_sigma = np.log(np.maximum(np.asarray(sigmas, dtype=np.float64), 1e-10))
    return np.interp(log_sigma, log_table, np.arange(table.shape[0], dtype=np.float64))


# ----------------------------------------------------------------------------------------------
# timestep rules, one per diffusers class
# ----------------------------------------------------------------------------------------------
def _spacing_error(spacing: Any) -> ConfigError:
    return ConfigError(
        f"unknown timestep_spacing {spacing!r}; choose one of: {', '.join(SPACINGS)} "
        "(set it in the scheduler config)"
    )


def _euler_timesteps(spacing: str, steps: int, num_train: int, offset: int) -> np.ndarray:
    """EulerDiscrete / EulerAncestralDiscrete ``set_timesteps`` (float timesteps)."""
    if spacing == "linspace":
        t = np.linspace(0, num_train - 1, steps)[::-1]
    elif spacing == "leading":
        ratio = num_train // steps
        t = (np.arange(steps) * ratio).round()[::-1] + offset
    elif spacing == "trailing":
        t = np.arange(num_train, 0, -num_train / steps).round() - 1
    else:
        raise _spacing_error(spacing)
    return t.astype(np.float32).astype(np.float64)


def _ddim_timesteps(spacing: str, steps: int, num_train: int, offset: int) -> np.ndarray:
    """DDIMScheduler ``set_timesteps`` (integer timesteps)."""
    if spacing == "linspace":
        t = np.linspace(0, num_train - 1, steps).round()[::-1]
    elif spacing == "leading":
        ratio = num_train // steps
        t = (np.arange(steps) * ratio).round()[::-1] + offset
    elif spacing == "trailing":
        t = np.round(np.arange(num_train, 0, -num_train / steps)) - 1
    else:
        raise _spacing_error(spacing)
    return t.astype(np.int64).astype(np.float64)


def _dpm_timesteps(spacing: str, steps: int, num_train: int, offset: int, last: int) -> np.ndarray:
    """DPMSolverMultistep ``set_timesteps``: n+1 points, the final one dropped (integers).

    ``last`` is ``num_train`` minus the steps cut off by ``lambda_min_clipped``.
    """
    if spacing == "linspace":
        t = np.linspace(0, last - 1, steps + 1).round()[::-1][:-1]
    elif spacing == "leading":
        ratio = last // (steps + 1)
        t = (np.arange(steps + 1) * ratio).round()[::-1][:-1] + offset
    elif spacing == "trailing":
        t = np.arange(last, 0, -num_train / steps).round() - 1
    else:
        raise _spacing_error(spacing)
    return t.astype(np.int64).astype(np.float64)


def lcm_timesteps(steps: int, num_train: int, original_steps: int) -> np.ndarray:
    """LCMScheduler ``set_timesteps``: the distillation schedule ``k*i - 1`` (i = 1..N, with
    k = T // N and N = ``original_inference_steps``; Luo et al. 2023, "Latent Consistency
    Models", Sec. 4.3 skipping-step), then ``steps`` of its indices evenly spaced from the top."""
    if isinstance(original_steps, bool) or not isinstance(original_steps, Integral) or not 1 <= original_steps <= num_train:
        raise ConfigError(
            f"original_inference_steps must be an integer in 1..{num_train}, got {original_steps!r} "
            "(the 'original_inference_steps' key of the LCM scheduler config)"
        )
    if steps > original_steps:
        raise ConfigError(
            f"steps={steps} is more than the LCM schedule's original_inference_steps={original_steps}; "
            f"pass steps between 1 and {original_steps} (LCM models are made for 1-8)"
        )
    k = num_train // int(original_steps)
    origin = (np.arange(1, int(original_steps) + 1) * k - 1)[::-1]
    indices = np.floor(np.linspace(0, len(origin), num=steps, endpoint=False)).astype(np.int64)
    return origin[indices].astype(np.float64)


def lcm_boundary_scalings(timesteps: np.ndarray, timestep_scaling: float) -> tuple[np.ndarray, np.ndarray]:
    """Consistency-model boundary condition (Song et al. 2023, "Consistency Models", eq. 7;
    LCM's discrete form with sigma_data = 0.5 and s = ``timestep_scaling`` * t):

        c_skip = sigma_data^2 / (s^2 + sigma_data^2),   c_out = s / sqrt(s^2 + sigma_data^2)
    """
    sigma_data = 0.5
    s = np.asarray(timesteps, dtype=np.float64) * float(timestep_scaling)
    c_skip = sigma_data**2 / (s**2 + sigma_data**2)
    c_out = s / np.sqrt(s**2 + sigma_data**2)
    return c_skip, c_out


def _check_steps(steps: Any, num_train: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, Integral):
        raise ConfigError(f"steps must be a whole number of sampling steps (e.g. 25), got {steps!r}")
    steps = int(steps)
    if steps <= 0:
        raise ConfigError(f"steps must be at least 1 (e.g. pass steps=25), got {steps}")
    if steps > num_train:
        raise ConfigError(
            f"steps={steps} is more than the model's num_train_timesteps={num_train}; "
            f"pass steps between 1 and {num_train}"
        )
    return steps


#: diffusers' default of ``clip_sample`` for the scheduler classes that have the key.
_CLIP_SAMPLE_DEFAULT = {"ddim": True, "lcm": False}


def _clip_range(config: Mapping[str, Any], rules: str) -> float | None:
    """The x_0 clamp range diffusers applies for these rules and config, or None.

    DDIMScheduler defaults ``clip_sample`` to True: a config without the key (e.g. SD 1.5's
    PNDM config, swapped for DDIM with ``from_config``) clamps x_0 to [-1, 1] there.
    """
    if rules not in _CLIP_SAMPLE_DEFAULT:
        return None
    if config.get("thresholding"):
        raise ConfigError(
            "scheduler config sets thresholding=True (dynamic thresholding), which sdrt does not "
            "implement; set it to false in scheduler_config.json"
        )
    clip = config.get("clip_sample")
    if not (_CLIP_SAMPLE_DEFAULT[rules] if clip is None else bool(clip)):
        return None
    r = config.get("clip_sample_range")
    return 1.0 if r is None else float(r)


def make_schedule(config: Mapping[str, Any], sampler: str, steps: int) -> Schedule:
    """Build the schedule diffusers would use for ``sampler`` with this scheduler config.

    ``config`` is a diffusers ``scheduler_config.json`` dict of any scheduler class; missing keys
    take the defaults of the diffusers class the sampler mirrors (module docstring).

    DDIM quirk: diffusers' DDIM steps from timestep t to ``t - T // steps`` (its
    ``prev_timestep``), which is the next timestep of the schedule only when the spacing is
    uniform with that stride ("leading" always; "trailing" when T % steps == 0; "linspace"
    practically never). Otherwise the step lands on another noise level, and the next step
    re-reads the same VP latents at the next timestep. Those landing sigmas go in
    ``Schedule.ddim_prev_sigmas`` and :func:`~sdrt.runtime.samplers.sample_ddim` reproduces it.
    """
    from .samplers import get_sampler  # local: samplers.py does not import this module

    sdef = get_sampler(sampler)
    abar = train_alphas_cumprod(config)  # validates the beta keys and num_train_timesteps
    num_train = int(abar.shape[0])
    steps = _check_steps(steps, num_train)
    spacing = config.get("timestep_spacing") or sdef.default_spacing
    if spacing not in SPACINGS:
        raise _spacing_error(spacing)
    offset = int(config.get("steps_offset") or 0)
    table = _as_f32(np.sqrt((1.0 - abar) / abar))  # sigma(t), t = 0..T-1

    prev_sigmas = None
    c_skip = c_out = None
    if sdef.rules == "lcm":
        original = config.get("original_inference_steps")
        timesteps = lcm_timesteps(steps, num_train, 50 if original is None else original)
        scaling = config.get("timestep_scaling")
        c_skip, c_out = lcm_boundary_scalings(timesteps, 10.0 if scaling is None else float(scaling))
        # the LCM step ends at the denoised estimate: final sigma 0 (set_alpha_to_one does not
        # matter, diffusers' last LCM step returns `denoised` without re-noising)
        sigmas = np.append(table[timesteps.astype(np.int64)], 0.0)
        # VP init noise sigma 1.0  <=>  x_ve = noise * sqrt(1 + sigma_0^2)
        init = math.sqrt(1.0 + float(sigmas[0]) ** 2)
    elif sdef.rules == "euler":
        timesteps = _euler_timesteps(spacing, steps, num_train, offset)
        sigmas = _interp_sigmas(timesteps, table)
        sigmas = np.append(sigmas, 0.0)
        sigma_max = float(_as_f32(sigmas.max()))
        # diffusers' EulerDiscrete/EulerAncestral init_noise_sigma, quirk and all
        init = sigma_max if spacing in ("linspace", "trailing") else math.sqrt(sigma_max**2 + 1.0)
    elif sdef.rules == "ddim":
        timesteps = _ddim_timesteps(spacing, steps, num_train, offset)
        set_alpha_to_one = config.get("set_alpha_to_one")
        set_alpha_to_one = True if set_alpha_to_one is None else bool(set_alpha_to_one)
        # final_alpha_cumprod: 1 (sigma 0) or abar of training step 0
        sigma_final = 0.0 if set_alpha_to_one else float(table[0])
        sigmas = np.append(_interp_sigmas(timesteps, table), sigma_final)
        prev_t = timesteps - (num_train // steps)
        landing = np.where(prev_t >= 0, _interp_sigmas(np.maximum(prev_t, 0), table), sigma_final)
        if not np.array_equal(landing, sigmas[1:]):
            prev_sigmas = landing
        # VP init noise sigma 1.0  <=>  x_ve = noise * sqrt(1 + sigma_0^2)
        init = math.sqrt(1.0 + float(sigmas[0]) ** 2)
    elif sdef.rules == "dpm":
        lambda_min = config.get("lambda_min_clipped")
        lambda_min = -math.inf if lambda_min is None else float(lambda_min)
        # lambda(t) = log(alpha_t / sigma_t) = -log(sigma_ve); diffusers drops the tail with
        # lambda < lambda_min_clipped (searchsorted on the flipped, increasing lambdas)
        clipped = int(np.searchsorted(-np.log(table)[::-1], lambda_min))
        last = num_train - clipped
        if sdef.karras:
            # Karras sigmas span the whole training range; the UNet gets the nearest
            # timestep by log-sigma interpolation, rounded (truncated for the cosine schedule,
            # where diffusers skips the round and then casts to int64)
            sigmas = karras_sigmas(float(table[0]), float(table[-1]), steps)
            t = _log_sigma_to_t(sigmas, table)
            if _config_value(config, "beta_schedule") == "squaredcos_cap_v2":
                timesteps = np.trunc(t)
            else:
                timesteps = np.round(t)
        else:
            timesteps = _dpm_timesteps(spacing, steps, num_train, offset, last)
            sigmas = _interp_sigmas(timesteps, table)
        sigmas = np.append(sigmas, 0.0)  # final_sigmas_type="zero"
        init = math.sqrt(1.0 + float(_as_f32(sigmas[0])) ** 2)
    else:  # pragma: no cover - registry and rules are defined together
        raise ConfigError(f"sampler {sdef.name!r} has unknown schedule rules {sdef.rules!r}")

    return Schedule(
        clip_denoised=_clip_range(config, sdef.rules),
        sigmas=_as_f32(sigmas),
        timesteps=timesteps,
        init_noise_sigma=init,
        train_sigmas=table,
        ddim_prev_sigmas=None if prev_sigmas is None else _as_f32(prev_sigmas),
        c_skip=c_skip,
        c_out=c_out,
        sampler=sdef.name,
    )
