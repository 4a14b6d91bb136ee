"""The diffusers pipeline as the end-to-end reference, configured to sdrt's sampler math."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sdrt.errors import ConfigError
from sdrt.runtime.request import GenerationRequest

# sdrt sampler name -> (diffusers scheduler class name, extra config)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": False}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
}
#: Samplers whose output depends only on the initial latents (no per-step noise).
DETERMINISTIC = ("euler", "ddim", "dpmpp_2m", "dpmpp_2m_karras")


def diffusers_pipeline(model_dir: str | Path, sampler: str, *, allow_pickle: bool = False) -> Any:
    """``StableDiffusionPipeline`` from ``model_dir`` with the scheduler matching ``sampler``."""
    import diffusers
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    cls_name, extra = SCHEDULERS[sampler]
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        str(model_dir), safety_checker=None, requires_safety_checker=False, use_safetensors=not allow_pickle
    )
    pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_generate(pipe: Any, req: GenerationRequest, init_latents: np.ndarray) -> np.ndarray:
    """Float images (B, H, W, 3) in [0, 1] from the diffusers pipeline on ``init_latents``.

    ``req`` must be resolved (size filled in). diffusers multiplies ``latents=`` by
    ``scheduler.init_noise_sigma``, exactly as sdrt treats ``init_latents``.
    """
    import torch

    if req.sampler not in DETERMINISTIC:
        raise ConfigError(
            f"sampler {req.sampler!r} draws noise every step, so its images cannot be compared "
            f"across implementations; use one of {DETERMINISTIC}"
        )
    with torch.inference_mode():
        out = pipe(
            prompt=req.prompt,
            negative_prompt=req.negative_prompt if req.cfg else None,
            num_images_per_prompt=req.num_images,
            num_inference_steps=req.steps,
            guidance_scale=req.guidance,
            height=req.height,
            width=req.width,
            latents=torch.from_numpy(np.asarray(init_latents, dtype=np.float32)),
            output_type="np",
        )
    return np.asarray(out.images, dtype=np.float32)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1]: 10 log10(1 / MSE)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse))
