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

from .backends import create_backend
from .backends.base import Backend
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
        self.tokenizer = ClipTokenizer.from_dir(artifact.tokenizer_dir)

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
        prompts = [req.negative_prompt] * b + [req.prompt] * b if req.cfg else [req.prompt] * b
        t = clock()
        ids = self.tokenizer(prompts).astype(np.int32)
        timings["tokenize"] = clock() - t
        t = clock()
        embeddings = self.backend.run("text_encoder", {"input_ids": ids})["last_hidden_state"]
        timings["text_encoder"] = clock() - t

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
        run = self.backend.run

        def model_fn(x_in: np.ndarray, timestep: float) -> np.ndarray:
            # Classifier-free guidance (Ho & Salimans 2022): uncond + g * (cond - uncond),
            # with the unconditional half first, as diffusers orders its batch.
            sample = np.concatenate([x_in, x_in]) if req.cfg else x_in
            t0 = clock()
            out = run(
                "unet",
                {
                    "sample": np.ascontiguousarray(sample, dtype=np.float32),
                    "timestep": np.full((sample.shape[0],), timestep, dtype=np.float32),
                    "encoder_hidden_states": embeddings,
                },
            )["out_sample"]
            timings["unet"] += clock() - t0
            if not req.cfg:
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
