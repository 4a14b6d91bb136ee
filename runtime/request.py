"""A generation request: plain data, validated against an artifact before any model runs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Tuple

import numpy as np

from sdrt.errors import ConfigError

from .manifest import Manifest
from .samplers import get_sampler

DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 7.5
DEFAULT_SAMPLER = "dpmpp_2m"
MAX_STEPS = 1000


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str = ""
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    sampler: str = DEFAULT_SAMPLER
    seed: Optional[int] = None  # None: drawn at random, reported in the result
    width: Optional[int] = None  # None: the model's native size
    height: Optional[int] = None
    num_images: int = 1
    # Unit-variance noise (B, C, H/f, W/f), scaled like diffusers scales its `latents=` argument.
    init_latents: Optional[np.ndarray] = None
    # SDXL micro-conditioning, each (height, width) / (top, left) in pixels; None: the image size
    original_size: Optional[Tuple[int, int]] = None
    crop_top_left: Tuple[int, int] = (0, 0)
    target_size: Optional[Tuple[int, int]] = None

    @property
    def cfg(self) -> bool:
        """Classifier-free guidance runs only for guidance > 1 (as in diffusers)."""
        return self.guidance > 1.0

    def resolved(self, manifest: Manifest) -> "GenerationRequest":
        """This request with defaults filled in from ``manifest``; raises on bad input."""
        if not isinstance(self.prompt, str):
            raise ConfigError("prompt must be a string")
        if not isinstance(self.steps, int) or self.steps <= 0:
            raise ConfigError(f"steps must be a positive integer, got {self.steps!r}; try --steps 25")
        if self.steps > MAX_STEPS:
            raise ConfigError(f"steps {self.steps} exceeds {MAX_STEPS}; use fewer steps")
        if not np.isfinite(self.guidance) or self.guidance < 0:
            raise ConfigError(f"guidance must be a finite number >= 0, got {self.guidance!r}")
        get_sampler(self.sampler)  # raises ConfigError listing the known samplers
        if not isinstance(self.num_images, int) or self.num_images <= 0:
            raise ConfigError(f"num_images must be a positive integer, got {self.num_images!r}")
        if self.seed is not None and not (0 <= self.seed < 2**63):
            raise ConfigError(f"seed must be in [0, 2**63), got {self.seed}")
        micro = {"original_size": self.original_size, "crop_top_left": self.crop_top_left, "target_size": self.target_size}
        for name, value in micro.items():
            if value is None and name != "crop_top_left":
                continue
            if (
                not isinstance(value, (tuple, list))
                or len(value) != 2
                or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
                or min(value) < (0 if name == "crop_top_left" else 1)
            ):
                raise ConfigError(f"{name} must be two whole numbers of pixels (height, width), got {value!r}")
        if manifest.family != "sdxl" and (
            self.original_size is not None or self.target_size is not None or tuple(self.crop_top_left) != (0, 0)
        ):
            raise ConfigError(
                f"original_size / crop_top_left / target_size are SDXL micro-conditioning; this "
                f"artifact is {manifest.family}, whose UNet does not take them: leave them unset"
            )
        width = self.width or manifest.default_size
        height = self.height or manifest.default_size
        manifest.limits.check(width=width, height=height, batch=self.num_images)
        if self.init_latents is not None:
            f = manifest.vae_scale_factor
            want = (self.num_images, manifest.latent_channels, height // f, width // f)
            lat = np.asarray(self.init_latents)
            if lat.shape != want:
                raise ConfigError(
                    f"init latents have shape {lat.shape}, expected {want} "
                    f"(num_images, latent channels, height/{f}, width/{f})"
                )
            if not np.issubdtype(lat.dtype, np.floating) or not np.all(np.isfinite(lat)):
                raise ConfigError("init latents must be finite floating-point values")
        return replace(
            self,
            width=width,
            height=height,
            original_size=None if self.original_size is None else tuple(int(v) for v in self.original_size),
            crop_top_left=tuple(int(v) for v in self.crop_top_left),
            target_size=None if self.target_size is None else tuple(int(v) for v in self.target_size),
        )
