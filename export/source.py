"""The source side: a local diffusers-format checkpoint, validated, fingerprinted and loaded.

Only this module (and the rest of ``sdrt.export``) imports torch / diffusers / transformers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdrt.errors import ModelDirError, UnsafeCheckpointError

#: diffusers pipeline class -> the kind of model sdrt exports from it
SUPPORTED_PIPELINES = {
    "StableDiffusionPipeline": "sd",
    "LatentConsistencyModelPipeline": "sd",  # SD 1.x/2.x UNet distilled with LCM
    "StableDiffusionXLPipeline": "sdxl",
}
REQUIRED_SUBDIRS = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")
#: extra component folders per kind
EXTRA_SUBDIRS = {"sd": (), "sdxl": ("tokenizer_2", "text_encoder_2")}
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
# Files that determine the exported graphs; hashed into the fingerprint.
FINGERPRINT_SUFFIXES = (".json", ".txt", ".safetensors", *PICKLE_SUFFIXES)


@dataclass(frozen=True)
class SourceModel:
    """A validated diffusers model directory (nothing loaded yet)."""

    path: Path
    pipeline_class: str
    use_safetensors: bool

    @property
    def kind(self) -> str:
        """"sd" (1.x / 2.x, one text encoder) or "sdxl" (two text encoders, added conditions)."""
        return SUPPORTED_PIPELINES[self.pipeline_class]

    @property
    def subdirs(self) -> tuple[str, ...]:
        return REQUIRED_SUBDIRS + EXTRA_SUBDIRS[self.kind]

    @property
    def pipeline_config(self) -> dict[str, Any]:
        """``model_index.json`` (holds e.g. SDXL's ``force_zeros_for_empty_prompt``)."""
        return _read_json(self.path / "model_index.json")

    @property
    def name(self) -> str:
        return self.path.resolve().name

    def config(self, sub: str, filename: str = "config.json") -> dict[str, Any]:
        return _read_json(self.path / sub / filename)

    @property
    def scheduler_config(self) -> dict[str, Any]:
        return self.config("scheduler", "scheduler_config.json")

    def fingerprint(self) -> str:
        """sha256 over the relative path and bytes of every config, vocab and weight file."""
        h = hashlib.sha256()
        files = [self.path / "model_index.json"]
        for sub in self.subdirs:
            files += sorted(
                p for p in (self.path / sub).rglob("*") if p.is_file() and p.suffix in FINGERPRINT_SUFFIXES
            )
        for p in files:
            h.update(str(p.relative_to(self.path)).encode())
            h.update(b"\0")
            with p.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
        return "sha256:" + h.hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ModelDirError(f"{path} is missing; is this a complete diffusers model directory?") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelDirError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ModelDirError(f"{path} is not a JSON object")
    return data


def open_source(path: str | Path, *, allow_pickle: bool = False) -> SourceModel:
    """Validate a diffusers Stable Diffusion directory; refuse pickles unless ``allow_pickle``."""
    path = Path(path)
    if not path.is_dir():
        raise ModelDirError(f"model directory {path} does not exist")
    index_path = path / "model_index.json"
    if not index_path.is_file():
        raise ModelDirError(
            f"{path} has no model_index.json: it is not a diffusers pipeline directory "
            f"(save one with `pipeline.save_pretrained(dir)`)"
        )
    index = _read_json(index_path)
    cls = index.get("_class_name")
    if cls not in SUPPORTED_PIPELINES:
        raise ModelDirError(
            f"{path} holds a {cls!r}; sdrt exports {sorted(SUPPORTED_PIPELINES)} "
            f"(Stable Diffusion 1.x / 2.x / XL in diffusers layout)"
        )
    kind = SUPPORTED_PIPELINES[cls]
    missing = [s for s in REQUIRED_SUBDIRS + EXTRA_SUBDIRS[kind] if not (path / s).is_dir()]
    if missing:
        raise ModelDirError(f"{path} ({cls}) is missing the component folder(s) {missing}")

    weights_dirs = ("text_encoder", "unet", "vae") + (("text_encoder_2",) if kind == "sdxl" else ())
    has_safe = {s: any((path / s).glob("*.safetensors")) for s in weights_dirs}
    has_pickle = {s: any(p.suffix in PICKLE_SUFFIXES for p in (path / s).iterdir()) for s in weights_dirs}
    no_weights = [s for s in weights_dirs if not has_safe[s] and not has_pickle[s]]
    if no_weights:
        raise ModelDirError(f"{path}: no weight files in {no_weights}")
    pickle_only = [s for s in weights_dirs if not has_safe[s]]
    if pickle_only and not allow_pickle:
        raise UnsafeCheckpointError(
            f"{path}: {pickle_only} have only pickle weights (.bin/.ckpt), which can run arbitrary "
            f"code when loaded; convert them to safetensors, or pass --allow-pickle if you trust "
            f"the source"
        )
    return SourceModel(path=path, pipeline_class=cls, use_safetensors=not pickle_only)


@dataclass
class LoadedModel:
    """The torch modules of a source model, in eval mode, fp32."""

    source: SourceModel
    text_encoder: Any
    unet: Any
    vae: Any
    tokenizer_config: dict[str, Any]
    text_encoder_2: Any = None  # SDXL: CLIPTextModelWithProjection

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        # diffusers' UNet handles sizes that are not multiples of 2**num_upsamplers with a
        # Python branch (forward_upsample_size); tracing freezes the branch, so the exported
        # graph needs latents that are multiples of it.
        return self.vae_scale_factor * 2 ** int(self.unet.num_upsamplers)


def load_source(source: SourceModel) -> LoadedModel:
    try:
        import torch
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection
    except ImportError as e:
        raise ModelDirError(
            f"exporting needs torch, diffusers and transformers ({e}); "
            f"`pip install 'sdrt[export]'` (install a torch build for your machine first)"
        ) from e
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # Keep progress readable: no per-shard progress bars or "install accelerate" notices.
    for lib in (diffusers_logging, transformers_logging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    kw = {"use_safetensors": source.use_safetensors}
    try:
        with torch.no_grad():
            text_encoder = CLIPTextModel.from_pretrained(source.path / "text_encoder", **kw).float().eval()
            unet = UNet2DConditionModel.from_pretrained(source.path / "unet", **kw).float().eval()
            vae = AutoencoderKL.from_pretrained(source.path / "vae", **kw).float().eval()
            text_encoder_2 = None
            if source.kind == "sdxl":
                text_encoder_2 = (
                    CLIPTextModelWithProjection.from_pretrained(source.path / "text_encoder_2", **kw)
                    .float()
                    .eval()
                )
    except (OSError, ValueError, KeyError) as e:
        raise ModelDirError(f"could not load the model in {source.path}: {str(e).splitlines()[0]}") from e
    tok_cfg = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        p = source.path / "tokenizer" / name
        if p.is_file():
            tok_cfg.update(_read_json(p))
    return LoadedModel(source, text_encoder, unet, vae, tok_cfg, text_encoder_2)
