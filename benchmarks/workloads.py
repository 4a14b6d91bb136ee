"""Benchmark workloads: a diffusers model directory plus its sdrt artifact, built once and cached.

* ``shipped`` — the packaged small model (falls back to ``tiny`` when it is not installed,
  and says so in the report);
* ``tiny`` — the tiny SD1 fixture of the tests (overhead-dominated);
* ``sd15`` — the full-size SD1.5 architecture from its config with random weights;
* ``tiny-sdxl`` — the tiny SDXL fixture of the tests (``make_tiny_pipeline(dst, "sdxl")``: two
  text encoders, added time conditioning; overhead-dominated, like ``tiny``);
* ``sdxl`` — the full-size SDXL architecture is not built here (random-weight SDXL is ~10 GB
  of fp32 weights); refused with a pointer to ``tiny-sdxl``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from sdrt.errors import ConfigError, ModelDirError

from .sd15_config import RANDOM_WEIGHTS_NOTE, make_sd15_random

WORKLOADS = ("shipped", "tiny", "tiny-sdxl", "sd15", "sdxl")
TINY_NOTE = "tiny SD1 fixture (sdrt.export.tiny, random weights): the model calls are tiny, so it measures what a runtime adds around them."
TINY_SDXL_NOTE = (
    "tiny SDXL fixture (sdrt.export.tiny family 'sdxl', random weights; StableDiffusionXLPipeline "
    "reference): the model calls are tiny, so it measures what a runtime adds around them."
)
#: workload -> (model directory name under the cache root, sdrt.export.tiny family)
_TINY = {"tiny": ("tiny-sd1", "sd1"), "tiny-sdxl": ("tiny-sdxl", "sdxl")}


@dataclass(frozen=True)
class Workload:
    name: str  # what actually ran ("tiny" when "shipped" fell back)
    requested: str
    model_dir: Path
    artifact_dir: Path
    export_s: float  # the export that made the artifact (0 when reused from the cache)
    export_skipped: bool
    note: str
    native_size: int


def default_root() -> Path:
    from sdrt.export.artifact import engines_dir

    return engines_dir() / "bench"


def prepare_workload(
    name: str, root: Optional[Path] = None, progress: Optional[Callable[[str], None]] = None
) -> Workload:
    """Build (once) the model directory and artifact of workload ``name`` under ``root``."""
    from sdrt.export.artifact import export_artifact

    say = progress or (lambda _m: None)
    if name not in WORKLOADS:
        raise ConfigError(f"unknown workload {name!r}; choose one of {list(WORKLOADS)}")
    if name == "sdxl":
        raise ConfigError(
            "the full-size sdxl workload is not built by sdrt bench (random-weight SDXL is ~10 GB of "
            "fp32 weights); use --workload tiny-sdxl for the SDXL pipeline on the tiny fixture"
        )
    root = Path(root) if root is not None else default_root()
    root.mkdir(parents=True, exist_ok=True)

    if name == "shipped":
        from sdrt.shipped import SHIPPED_MODEL_DIR, shipped_artifact

        try:
            t_art = shipped_artifact(progress=say)
        except ModelDirError as e:
            say(f"shipped model unavailable ({e}); falling back to the tiny fixture")
            tiny = prepare_workload("tiny", root, progress)
            return Workload(
                "tiny", "shipped", tiny.model_dir, tiny.artifact_dir, tiny.export_s, tiny.export_skipped,
                f"FALLBACK: the shipped model is not installed, so this ran the {TINY_NOTE}", tiny.native_size,
            )
        res = export_artifact(SHIPPED_MODEL_DIR, t_art)  # cached: returns at once, with its timing
        return Workload(
            "shipped", "shipped", SHIPPED_MODEL_DIR, Path(t_art), 0.0, True,
            "the shipped small model (sdrt/models/shapes64), trained weights.",
            res.artifact.manifest.default_size,
        )

    model_dir = root / (_TINY[name][0] if name in _TINY else "sd15-random")
    if not (model_dir / "model_index.json").is_file():
        say(f"building {name} model at {model_dir}")
        if name in _TINY:
            from sdrt.export.tiny import make_tiny_pipeline

            make_tiny_pipeline(model_dir, _TINY[name][1], seed=0)
        else:
            make_sd15_random(model_dir, seed=0)
    res = export_artifact(model_dir, root / f"{model_dir.name}-art", progress=say)
    note = {"tiny": TINY_NOTE, "tiny-sdxl": TINY_SDXL_NOTE}.get(name, RANDOM_WEIGHTS_NOTE)
    return Workload(
        name, name, model_dir, res.artifact.path, 0.0 if res.skipped else res.seconds, res.skipped,
        note, res.artifact.manifest.default_size,
    )


def unet_gflop_per_call(model_dir: Path, batch: int, latent_h: int, latent_w: int, text_len: int = 77) -> float:
    """GFLOP of one UNet call, counted on the meta device (no weights, no time).

    ``torch.utils.flop_counter`` on CPU tensors undercounts attention (the fused CPU kernel
    is not counted); on the meta device SDPA decomposes into counted matmuls: 360 GFLOP at a
    32x32 latent, batch 2, for SD1.5 (docs/benchmarks.md).

    SDXL-style UNets (``addition_embed_type == "text_time"``) also get zero ``text_embeds`` /
    ``time_ids`` of the shapes the config implies; the FLOPs do not depend on their values.
    """
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    config = UNet2DConditionModel.load_config(str(Path(model_dir) / "unet"))
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
        cross = int(unet.config.cross_attention_dim)
        sample = torch.empty(batch, int(unet.config.in_channels), latent_h, latent_w)
        timestep = torch.empty(batch)
        hidden = torch.empty(batch, text_len, cross)
        kwargs = {}
        if unet.config.addition_embed_type == "text_time":
            n_time = 6  # original size, crop top-left, target size
            text_dim = int(unet.config.projection_class_embeddings_input_dim) - n_time * int(
                unet.config.addition_time_embed_dim
            )
            kwargs["added_cond_kwargs"] = {
                "text_embeds": torch.zeros(batch, text_dim),
                "time_ids": torch.zeros(batch, n_time),
            }
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(sample, timestep, encoder_hidden_states=hidden, **kwargs)
    return counter.get_total_flops() / 1e9
