"""The diffusers pipeline as the end-to-end reference, configured to sdrt's sampler math."""

from __future__ import annotations

import contextlib
import importlib
import json
from pathlib import Path
from typing import Any, Iterator, Optional

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
    "lcm": ("LCMScheduler", {}),
}
#: Samplers whose output depends only on the initial latents (no per-step noise).
DETERMINISTIC = ("euler", "ddim", "dpmpp_2m", "dpmpp_2m_karras")
#: Stochastic samplers -> the diffusers scheduler module whose ``randn_tensor`` draws their
#: per-step noise; :func:`diffusers_generate` can feed it sdrt's noise (``step_noise_seed``).
STEP_NOISE_MODULES = {
    "euler_a": "diffusers.schedulers.scheduling_euler_ancestral_discrete",
    "lcm": "diffusers.schedulers.scheduling_lcm",
}


def _pipeline_class(model_dir: str | Path) -> str:
    return json.loads((Path(model_dir) / "model_index.json").read_text(encoding="utf-8"))["_class_name"]


def diffusers_pipeline(model_dir: str | Path, sampler: str, *, allow_pickle: bool = False) -> Any:
    """The model's diffusers pipeline (``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``
    or ``LatentConsistencyModelPipeline``) with the scheduler matching ``sampler``."""
    import diffusers
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    cls_name, extra = SCHEDULERS[sampler]
    pipe_cls = getattr(diffusers, _pipeline_class(model_dir))
    kwargs: dict[str, Any] = {"use_safetensors": not allow_pickle}
    if pipe_cls is not diffusers.StableDiffusionXLPipeline:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    pipe = pipe_cls.from_pretrained(str(model_dir), **kwargs)
    pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def _step_noise_from(sampler: str, seed: Optional[int]) -> Iterator[None]:
    """Make the diffusers scheduler draw its per-step noise as sdrt's sampler does:
    ``np.random.default_rng(seed).standard_normal(shape)`` cast to float32, in step order."""
    if seed is None:
        yield
        return
    import torch

    module = importlib.import_module(STEP_NOISE_MODULES[sampler])
    rng = np.random.default_rng(seed)
    original = module.randn_tensor

    def randn_tensor(shape: Any, **_kw: Any) -> Any:
        return torch.from_numpy(np.asarray(rng.standard_normal(tuple(shape))).astype(np.float32))

    module.randn_tensor = randn_tensor
    try:
        yield
    finally:
        module.randn_tensor = original


def diffusers_generate(pipe: Any, req: GenerationRequest, init_latents: np.ndarray) -> np.ndarray:
    """Float images (B, H, W, 3) in [0, 1] from the diffusers pipeline on ``init_latents``.

    ``req`` must be resolved (size filled in). diffusers multiplies ``latents=`` by
    ``scheduler.init_noise_sigma``, exactly as sdrt treats ``init_latents``. Stochastic samplers
    (euler_a, lcm) are compared with the per-step noise sdrt draws from ``req.seed`` (sdrt
    draws no noise for the initial latents when they are given), and one-step runs draw none.
    """
    import diffusers
    import torch

    stochastic = req.sampler not in DETERMINISTIC
    if stochastic and req.sampler not in STEP_NOISE_MODULES:
        raise ConfigError(
            f"sampler {req.sampler!r} draws noise every step, so its images cannot be compared "
            f"across implementations; use one of {DETERMINISTIC + tuple(STEP_NOISE_MODULES)}"
        )
    kwargs: dict[str, Any] = {}
    if isinstance(pipe, diffusers.StableDiffusionXLPipeline):
        # None (not ""): diffusers then applies force_zeros_for_empty_prompt, as sdrt does
        kwargs["negative_prompt"] = (req.negative_prompt or None) if req.cfg else None
        size = (req.height, req.width)
        kwargs.update(
            original_size=req.original_size or size,
            crops_coords_top_left=tuple(req.crop_top_left),
            target_size=req.target_size or size,
        )
    elif not isinstance(pipe, diffusers.LatentConsistencyModelPipeline):
        kwargs["negative_prompt"] = req.negative_prompt if req.cfg else None
    with torch.inference_mode(), _step_noise_from(req.sampler, req.seed if stochastic else None):
        out = pipe(
            prompt=req.prompt,
            num_images_per_prompt=req.num_images,
            num_inference_steps=req.steps,
            guidance_scale=req.guidance,
            height=req.height,
            width=req.width,
            latents=torch.from_numpy(np.asarray(init_latents, dtype=np.float32)),
            output_type="np",
            **kwargs,
        )
    return np.asarray(out.images, dtype=np.float32)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1]: 10 log10(1 / MSE)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse))
