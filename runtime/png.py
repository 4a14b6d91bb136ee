"""PNG output with generation parameters, written atomically.

The ``parameters`` text chunk uses the layout other Stable Diffusion tools read
(AUTOMATIC1111 and the tools that parse its PNGs)::

    <prompt>
    Negative prompt: <negative prompt>
    Steps: 25, Sampler: dpmpp_2m, CFG scale: 7.5, Seed: 42, Size: 512x512, Model hash: 1a2b3c4d5e, Model: name
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from sdrt.errors import OutputError

from .manifest import Manifest
from .request import GenerationRequest


def format_parameters(req: GenerationRequest, manifest: Manifest, *, batch_pos: int = 0) -> str:
    lines = [req.prompt]
    if req.negative_prompt:
        lines.append(f"Negative prompt: {req.negative_prompt}")
    fields = [
        ("Steps", req.steps),
        ("Sampler", req.sampler),
        ("CFG scale", f"{req.guidance:g}"),
        ("Seed", req.seed),
        ("Size", f"{req.width}x{req.height}"),
        ("Model hash", manifest.fingerprint.split(":")[-1][:10]),
        ("Model", manifest.model_name),
    ]
    if req.num_images > 1:
        fields.append(("Batch size", req.num_images))
        fields.append(("Batch pos", batch_pos))
    if req.init_latents is not None:
        fields.append(("Init latents", "provided"))
    lines.append(", ".join(f"{k}: {v}" for k, v in fields))
    return "\n".join(lines)


def output_paths(output: str | os.PathLike[str], count: int) -> list[Path]:
    """``out.png`` for one image; ``out-0.png, out-1.png, ...`` for several."""
    out = Path(output)
    if out.suffix.lower() != ".png":
        raise OutputError(f"output {out} must end in .png")
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]


def check_writable(path: Path) -> None:
    """Fail before any model runs if ``path`` cannot be written: try creating a file beside it."""
    parent = path.parent
    if path.is_dir():
        raise OutputError(f"output {path} is a directory; give a file name ending in .png")
    if not parent.is_dir():
        raise OutputError(f"output directory {parent} does not exist; create it or choose another --output")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"output file {path} exists and is not writable; choose another --output")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as e:
        raise OutputError(f"output directory {parent} is not writable ({e.strerror}); choose another --output") from e


def save_png(path: str | os.PathLike[str], image: np.ndarray, parameters: str) -> Path:
    """Write ``image`` (H, W, 3) uint8 to ``path`` via a temp file and an atomic rename."""
    path = Path(path)
    check_writable(path)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(image).save(f, format="PNG", pnginfo=info)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"could not write {path} ({e.strerror}); choose another --output") from e
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path
