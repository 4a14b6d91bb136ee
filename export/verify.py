"""``sdrt verify``: an artifact against the PyTorch model it came from.

1. Each component through ONNX Runtime and through PyTorch on the same random inputs, at
   two shapes: max-abs and mean-abs difference.
2. The whole pipeline (sdrt on ONNX Runtime vs the diffusers pipeline) from the same
   initial latents with a deterministic sampler: image PSNR.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from sdrt.runtime.backends import create_backend
from sdrt.runtime.manifest import Artifact
from sdrt.runtime.pipeline import Pipeline
from sdrt.runtime.request import GenerationRequest
from sdrt.runtime.specs import resolve_dims
from sdrt.runtime.tokenizer import ClipTokenizer

from .onnx_export import random_feeds
from .reference import diffusers_generate, diffusers_pipeline, psnr


@dataclass(frozen=True)
class ComponentDiff:
    component: str
    shape: str  # e.g. "2x512x512"
    max_abs: float
    mean_abs: float
    passed: bool


@dataclass
class VerifyReport:
    artifact: str
    model: str
    atol: float
    min_psnr: float
    components: list[ComponentDiff] = field(default_factory=list)
    pipeline_psnr_db: Optional[float] = None
    pipeline_max_abs: Optional[float] = None
    pipeline_settings: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        ok = all(c.passed for c in self.components)
        return ok and (self.pipeline_psnr_db is None or self.pipeline_psnr_db >= self.min_psnr)

    def to_json(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        if d["pipeline_psnr_db"] == float("inf"):
            d["pipeline_psnr_db"] = "inf"
        return d


def verify_sizes(artifact: Artifact) -> list[tuple[int, int, int]]:
    """(batch, height, width) shapes to compare at: the native size and a smaller non-square one."""
    m = artifact.manifest
    lim = m.limits
    small = max(lim.min_size, (m.default_size // 2) // lim.size_multiple * lim.size_multiple)
    wide = min(lim.max_size, small + lim.size_multiple)
    return [(1, m.default_size, m.default_size), (min(2, lim.max_batch), small, wide)]


def verify_artifact(
    artifact_dir: str | Path,
    model_dir: str | Path,
    *,
    atol: float = 1e-3,
    min_psnr: float = 40.0,
    sampler: str = "ddim",
    steps: int = 10,
    prompt: str = "a red circle on a blue background",
    seed: int = 0,
    threads: Optional[int] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> VerifyReport:
    say = progress or (lambda _m: None)
    artifact = Artifact.open(artifact_dir)
    m = artifact.manifest
    report = VerifyReport(artifact=str(artifact_dir), model=str(model_dir), atol=atol, min_psnr=min_psnr)
    opts = {"threads": threads} if threads else {}
    rng = np.random.default_rng(seed)
    vocab_size = ClipTokenizer.from_dir(artifact.tokenizer_dir).vocab_size
    with create_backend("ort-cpu", artifact, **opts) as ort, create_backend(
        "torch", artifact, model_dir=model_dir, **opts
    ) as ref:
        for batch, height, width in verify_sizes(artifact):
            dims = resolve_dims(
                batch=batch, height=height, width=width, cfg=True, vae_scale_factor=m.vae_scale_factor
            )
            for name, spec in m.components.items():
                feeds = random_feeds(spec, dims, rng, int_high=vocab_size)
                a = ort.run(name, feeds)
                b = ref.run(name, feeds)
                for out in spec.output_names:
                    diff = np.abs(a[out] - b[out])
                    label = name if len(spec.outputs) == 1 else f"{name}.{out}"
                    row = ComponentDiff(
                        component=label,
                        shape=f"{batch}x{height}x{width}",
                        max_abs=float(diff.max()),
                        mean_abs=float(diff.mean()),
                        passed=bool(diff.max() <= atol),
                    )
                    report.components.append(row)
                    say(f"{label:13s} {row.shape:>12s}  max-abs {row.max_abs:.2e}  mean-abs {row.mean_abs:.2e}")

    req = GenerationRequest(prompt=prompt, negative_prompt="", steps=steps, sampler=sampler, seed=seed)
    req = req.resolved(m)
    f = m.vae_scale_factor
    init = np.random.default_rng(seed).standard_normal(
        (1, m.latent_channels, req.height // f, req.width // f), dtype=np.float32
    )
    req = replace(req, init_latents=init)
    with Pipeline.load(artifact_dir, backend="ort-cpu", **opts) as pipe:
        ours = pipe.generate(req).images_float
    theirs = diffusers_generate(diffusers_pipeline(model_dir, sampler), req, init)
    report.pipeline_psnr_db = psnr(ours, theirs)
    report.pipeline_max_abs = float(np.abs(ours - theirs).max())
    report.pipeline_settings = {
        "sampler": sampler, "steps": steps, "guidance": req.guidance, "size": f"{req.width}x{req.height}"
    }
    say(f"pipeline      {req.width}x{req.height}  PSNR {report.pipeline_psnr_db:.1f} dB vs diffusers "
        f"({sampler}, {steps} steps)")
    return report
