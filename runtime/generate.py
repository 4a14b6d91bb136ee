"""One call from options to PNG files: what ``sdrt generate`` runs, usable from Python too."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from sdrt.errors import ConfigError

from .pipeline import GenerationResult, Pipeline
from .png import check_writable, format_parameters, output_paths, save_png
from .request import GenerationRequest


@dataclass(frozen=True)
class GenerateConfig:
    request: GenerationRequest
    artifact: Path
    output: Path
    backend: str = "ort-cpu"
    # Constructor options of that backend, e.g. {"threads": 2} (ort-*, torch) or
    # {"engine_dir": ..., "cuda_graphs": False} (trt).
    backend_options: Mapping[str, Any] = field(default_factory=dict)


def load_init_latents(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a ``.npy`` of unit-variance noise; a clear error for anything else."""
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError as e:
        raise ConfigError(f"init latents file {path} does not exist") from e
    except (ValueError, OSError) as e:
        raise ConfigError(f"init latents file {path} is not a readable .npy array ({e})") from e
    return arr.astype(np.float32)


def generate_to_files(config: GenerateConfig) -> tuple[GenerationResult, list[Path]]:
    """Validate everything, load the artifact, generate, write one PNG per image."""
    paths = output_paths(config.output, config.request.num_images)
    for p in paths:  # fail before loading any model
        check_writable(p)
    with Pipeline.load(config.artifact, backend=config.backend, **config.backend_options) as pipe:
        result = pipe.generate(config.request)
        for i, (path, image) in enumerate(zip(paths, result.images)):
            save_png(path, image, format_parameters(result.request, pipe.manifest, batch_pos=i))
    return result, paths
