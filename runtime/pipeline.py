"""The lean text-to-image loop: tokenize -> encode -> sample -> decode.

Every model call goes through ``backend.run(component, feeds)``: this module never knows
which backend runs. A :class:`Pipeline` holds no per-call state, so one instance (loaded
once) can serve many requests from several threads at once.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from sdrt.errors import NumericsError

from .backends import create_backend
from .backends.base import Backend
from .conditioning import classifier_free_guidance, unet_conditioning
from .denoiser import make_denoiser
from .manifest import Artifact
from .request import GenerationRequest
from .samplers import final_latents, get_sampler
from .schedules import make_schedule
from .tokenizer import ClipTokenizer


@dataclass
class GenerationResult:
    request: GenerationRequest  # resolved: size and seed filled in
    images: np.ndarray  # uint8 (B, H, W, 3)
    images_float: np.ndarray  # float32 (B, H, W, 3) in [0, 1], before quantisation
    latents: np.ndarray  # float32 (B, C, h, w), final latents before VAE scaling
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


class Pipeline:
    """An artifact loaded on a backend. ``with Pipeline.load(dir) as pipe: pipe(request)``."""

    def __init__(self, artifact: Artifact, backend: Backend):
        self.artifact = artifact
        self.manifest = artifact.manifest
        self.backend = backend
        #: text-encoder component -> its tokenizer (SDXL has two)
        self.tokenizers = {name: ClipTokenizer.from_dir(d) for name, d in artifact.tokenizer_dirs().items()}
        self.tokenizer = self.tokenizers["text_encoder"]

    @classmethod
    def load(cls, artifact_dir: str | Path, backend: str = "ort-cpu", **backend_options: Any) -> "Pipeline":
        artifact = Artifact.open(artifact_dir)
        return cls(artifact, create_backend(backend, artifact, **backend_options).load())

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- stages -------------------------------------------------------------
    def decode_latents(self, latents: np.ndarray) -> np.ndarray:
        """Final latents -> float images (B, H, W, 3) in [0, 1]."""
        z = (latents / self.manifest.vae_scaling_factor).astype(np.float32)
        image = self.backend.run("vae_decoder", {"latent": z})["image"]
        check_finite_image(image, latents_finite=bool(np.isfinite(latents).all()))
        image = np.clip(image / 2 + 0.5, 0.0, 1.0)
        return image.transpose(0, 2, 3, 1)

    # -- the loop -----------------------------------------------------------
    def __call__(
        self, request: GenerationRequest, *, callback: Optional[Callable[[dict], None]] = None
    ) -> GenerationResult:
        return self.generate(request, callback=callback)

    def generate(
        self, request: GenerationRequest, *, callback: Optional[Callable[[dict], None]] = None
    ) -> GenerationResult:
        if request.seed is None:
            request = replace(request, seed=secrets.randbits(32))
        req = request.resolved(self.manifest)
        m = self.manifest
        timings: dict[str, float] = {"unet": 0.0}
        clock = time.perf_counter
        t_start = clock()

        b = req.num_images
        cfg = classifier_free_guidance(req, m)
        run = self.backend.run
        conditioning = unet_conditioning(run, self.tokenizers, m, req, cfg, timings)

        sampler = get_sampler(req.sampler)
        schedule = make_schedule(m.scheduler, req.sampler, req.steps)
        rng = np.random.default_rng(req.seed)
        f = m.vae_scale_factor
        shape = (b, m.latent_channels, req.height // f, req.width // f)
        noise = (
            np.asarray(req.init_latents, dtype=np.float32)
            if req.init_latents is not None
            else rng.standard_normal(shape, dtype=np.float32)
        )
        x = noise * np.float32(schedule.init_noise_sigma)

        guidance = np.float32(req.guidance)

        def model_fn(x_in: np.ndarray, timestep: float) -> np.ndarray:
            # Classifier-free guidance (Ho & Salimans 2022): uncond + g * (cond - uncond),
            # with the unconditional half first, as diffusers orders its batch.
            sample = np.concatenate([x_in, x_in]) if cfg else x_in
            t0 = clock()
            out = run(
                "unet",
                {
                    "sample": np.ascontiguousarray(sample, dtype=np.float32),
                    "timestep": np.full((sample.shape[0],), timestep, dtype=np.float32),
                    **conditioning,
                },
            )["out_sample"]
            timings["unet"] += clock() - t0
            if not cfg:
                return out
            uncond, cond = out[:b], out[b:]
            return uncond + guidance * (cond - uncond)

        denoise = make_denoiser(model_fn, schedule, m.prediction_type)
        t = clock()
        x = sampler.run(denoise, x, schedule, rng=rng, callback=callback)
        latents = final_latents(x, schedule).astype(np.float32)
        timings["sampling"] = clock() - t
        timings["sampler_overhead"] = timings["sampling"] - timings["unet"]

        t = clock()
        images_float = self.decode_latents(latents)
        timings["vae_decoder"] = clock() - t
        t = clock()
        # Quantise like diffusers' numpy_to_pil: round(x * 255).
        images = np.round(images_float * 255).astype(np.uint8)
        timings["to_uint8"] = clock() - t
        timings["total"] = clock() - t_start
        return GenerationResult(req, images, images_float.astype(np.float32), latents, timings)


def check_finite_image(image: np.ndarray, *, latents_finite: bool) -> None:
    """Raise :class:`NumericsError` if the decoded image holds NaN or inf: never a black PNG.

    Finite latents that decode to NaN/inf are the known fp16 SDXL VAE overflow: its
    activations exceed float16's range.
    """
    bad = ~np.isfinite(image)
    if not bad.any():
        return
    share = f"{bad.mean():.1%} of the decoded pixel values are NaN/inf"
    if not latents_finite:
        raise NumericsError(
            f"{share}, and the latents were already non-finite before the VAE: the UNet overflowed "
            f"(fp16 engine?). Rebuild the UNet in fp32, or lower --guidance / use another sampler"
        )
    raise NumericsError(
        f"{share}: the VAE decoder overflowed (the known fp16 SDXL VAE problem). Rebuild or run "
        f"the VAE decoder in fp32 (`sdrt build --vae-fp32`, or --backend ort-cpu), or export with "
        f"an fp16-fixed VAE such as madebyollin/sdxl-vae-fp16-fix"
    )
