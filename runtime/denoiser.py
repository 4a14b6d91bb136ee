"""Wrap a diffusion UNet (eps- or v-prediction) as a k-diffusion denoiser D(x; sigma).

Karras et al. 2022 ("Elucidating the Design Space ...", eq. 7 and Table 1) write the denoiser
of a VP-trained network F as

    D(x; sigma) = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x; t(sigma))

with x in VE space (x = x_0 + sigma * eps) and c_in = 1 / sqrt(sigma^2 + 1), which turns x back
into the VP latents the network was trained on. Per prediction type:

* epsilon (Ho et al. 2020):        c_skip = 1,                 c_out = -sigma
* v_prediction (Salimans & Ho 2022, v = alpha eps - sigma_vp x_0):
                                   c_skip = 1 / (sigma^2 + 1),  c_out = -sigma / sqrt(sigma^2 + 1)
* sample (the network predicts x_0): c_skip = 0,               c_out = 1

Classifier-free guidance belongs to ``model_fn`` (the pipeline), not here.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import numpy as np

from sdrt.errors import ConfigError

from .samplers import Denoise

if TYPE_CHECKING:  # pragma: no cover
    from .schedules import Schedule

__all__ = ["PREDICTION_TYPES", "ModelFn", "make_denoiser"]

#: model_fn(x_in, timestep) -> network output (eps, v or x_0), same shape as x_in
ModelFn = Callable[[np.ndarray, float], np.ndarray]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def make_denoiser(model_fn: ModelFn, schedule: "Schedule", prediction_type: str) -> Denoise:
    """D(x, sigma) for a network trained with ``prediction_type`` (scheduler config's key).

    ``model_fn`` gets ``x * c_in`` and ``schedule.timestep_for(sigma)``; its output is cast to
    ``x``'s dtype, so a float16 engine output does not change the sampler's float32 arithmetic.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ConfigError(
            f"unknown prediction_type {prediction_type!r}; choose one of: "
            f"{', '.join(PREDICTION_TYPES)} (it is the 'prediction_type' key of the model's "
            "scheduler_config.json)"
        )

    def denoise(x: np.ndarray, sigma: float) -> np.ndarray:
        sigma = float(sigma)
        c_in = 1.0 / math.sqrt(sigma * sigma + 1.0)
        out = np.asarray(model_fn(x * c_in, schedule.timestep_for(sigma)), dtype=x.dtype)
        if prediction_type == "epsilon":
            return x - out * sigma
        if prediction_type == "v_prediction":
            c_skip = 1.0 / (sigma * sigma + 1.0)
            return x * c_skip - out * (sigma * c_in)
        return out  # "sample"

    return denoise
