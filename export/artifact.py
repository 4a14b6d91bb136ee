"""Export a diffusers checkpoint into a self-contained sdrt artifact directory.

The artifact is assembled in a temporary sibling directory and renamed into place, so a
crash never leaves a half artifact. An export whose key (source fingerprint + export
options + format version) matches the existing artifact is skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from sdrt import __version__
from sdrt.errors import ArtifactError, ExportError, OutputError, SdrtError
from sdrt.runtime.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    TOKENIZER_DIRS,
    Artifact,
    Manifest,
    ShapeLimits,
    write_json_atomic,
)
from sdrt.runtime.specs import resolve_dims

from .onnx_export import OPSET, export_component, random_feeds
from .source import LoadedModel, load_source, open_source

Progress = Callable[[str], None]
TOKENIZER_FILES = (
    "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"
)
ENGINES_DIR_ENV = "SDRT_ENGINES_DIR"


@dataclass(frozen=True)
class ExportOptions:
    opset: int = OPSET
    max_size: int | None = None  # default: 2 x the model's native size
    max_batch: int = 8
    allow_pickle: bool = False
    #: components exported with float16 weights (I/O stays float32): ("unet",) makes the
    #: full-size SDXL UNet export fit 24 GiB; ONNX Runtime's CPU provider cannot run it.
    fp16: tuple[str, ...] = ()

    def key_fields(self) -> dict[str, object]:
        fields: dict[str, object] = {"opset": self.opset, "max_size": self.max_size, "max_batch": self.max_batch}
        if self.fp16:  # only when set, so fp32 export keys (and existing artifacts) stay valid
            fields["fp16"] = sorted(self.fp16)
        return fields


@dataclass(frozen=True)
class ExportResult:
    artifact: Artifact
    skipped: bool
    seconds: float


def _export_key(fingerprint: str, options: ExportOptions) -> str:
    blob = json.dumps(
        {"fingerprint": fingerprint, "format": FORMAT_VERSION, **options.key_fields()}, sort_keys=True
    )
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def engines_dir() -> Path:
    """The artifact store: ``$SDRT_ENGINES_DIR``, else ``./engines``."""
    return Path(os.environ.get(ENGINES_DIR_ENV, "engines"))


def default_artifact_dir(model_dir: Path, fingerprint: str) -> Path:
    return engines_dir() / f"{model_dir.resolve().name}-{fingerprint.split(':')[-1][:12]}"


def _family(model: LoadedModel) -> str:
    if model.source.kind == "sdxl":
        return "sdxl"
    pad = model.tokenizer_config.get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    return "sd2" if pad == "!" else "sd1"


def _manifest(model: LoadedModel, key: str, fingerprint: str, options: ExportOptions, specs: dict) -> Manifest:
    default_size = int(model.unet.config.sample_size) * model.vae_scale_factor
    multiple = model.size_multiple
    max_size = options.max_size or 2 * default_size
    if max_size % multiple or max_size < default_size:
        raise SdrtError(
            f"--max-size {max_size} must be a multiple of {multiple} and at least the model's "
            f"native size {default_size}"
        )
    sched = model.source.scheduler_config
    return Manifest(
        model_name=model.source.name,
        family=_family(model),
        fingerprint=fingerprint,
        export_key=key,
        source=str(model.source.path.resolve()),
        prediction_type=sched.get("prediction_type", "epsilon"),
        vae_scaling_factor=float(model.vae.config.scaling_factor),
        vae_scale_factor=model.vae_scale_factor,
        latent_channels=int(model.unet.config.in_channels),
        default_size=default_size,
        limits=ShapeLimits(
            size_multiple=multiple, min_size=multiple, max_size=max_size, max_batch=options.max_batch
        ),
        scheduler=sched,
        components=specs,
        export_info={
            "opset": options.opset,
            "exporter": "torch.onnx (TorchScript, dynamo=False)",
            "versions": _versions(),
            **({"fp16": sorted(options.fp16)} if options.fp16 else {}),
        },
        conditioning=_conditioning(model),
    )


def _conditioning(model: LoadedModel) -> dict[str, object]:
    """What the runtime's SDXL prompt encoder needs beyond the specs (empty for SD 1.x / 2.x)."""
    if model.source.kind != "sdxl":
        return {}
    index = model.source.pipeline_config
    return {
        # diffusers' StableDiffusionXLPipeline default is True
        "force_zeros_for_empty_prompt": bool(index.get("force_zeros_for_empty_prompt", True)),
        "addition_time_embed_dim": int(model.unet.config.addition_time_embed_dim),
    }


def _versions() -> dict[str, str]:
    import diffusers
    import onnx
    import torch
    import transformers

    return {
        "sdrt": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
    }


def export_artifact(
    model_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    options: ExportOptions = ExportOptions(),
    progress: Progress | None = None,
) -> ExportResult:
    """Export ``model_dir`` to ``out_dir`` (default ``engines/<name>-<fingerprint>``)."""
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    source = open_source(model_dir, allow_pickle=options.allow_pickle)
    fingerprint = source.fingerprint()
    key = _export_key(fingerprint, options)
    out = Path(out_dir) if out_dir is not None else default_artifact_dir(source.path, fingerprint)

    if (out / MANIFEST).is_file():
        try:
            existing = Artifact.open(out)
        except ArtifactError:
            existing = None  # broken or old artifact: rebuild it
        if existing is not None and existing.manifest.export_key == key:
            say(f"{out} is up to date with {source.path} ({fingerprint[:19]}...): export skipped")
            return ExportResult(existing, skipped=True, seconds=time.perf_counter() - t0)
    if out.exists() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise OutputError(f"{out} exists and is not an sdrt artifact; choose another --out or remove it")

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
        tmp.chmod(0o755)  # mkdtemp makes it private; an artifact is meant to be shared
    except OSError as e:
        raise OutputError(f"cannot write the artifact under {out.parent} ({e.strerror}); choose another --out") from e
    try:
        _build(source, tmp, key, fingerprint, options, say)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t0
    say(f"artifact written to {out} in {seconds:.1f} s")
    return ExportResult(Artifact.open(out), skipped=False, seconds=seconds)


def _build(source, tmp: Path, key: str, fingerprint: str, options: ExportOptions, say: Progress) -> None:
    from .wrappers import component_modules, component_specs

    t = time.perf_counter()
    model = load_source(source)
    say(f"loaded {source.path} ({time.perf_counter() - t:.1f} s)")

    for encoder, sub in TOKENIZER_DIRS.items():
        if not (source.path / encoder).is_dir() or not (source.path / sub).is_dir():
            continue
        tok_dst = tmp / sub
        tok_dst.mkdir()
        for name in TOKENIZER_FILES:
            src = source.path / sub / name
            if src.is_file():
                shutil.copy2(src, tok_dst / name)
    max_length = int(model.tokenizer_config.get("model_max_length", 77))
    if max_length > 1024:  # transformers writes a huge sentinel when the length is unset
        max_length = 77

    unknown = sorted(set(options.fp16) - {"unet"})
    if unknown:
        raise SdrtError(f"float16 export is available for the unet only, not {unknown}")
    if "unet" in options.fp16:
        model.unet.half()
    specs = component_specs(model, max_length=max_length)
    manifest = _manifest(model, key, fingerprint, options, specs)
    dims = resolve_dims(
        batch=1,
        height=manifest.default_size,
        width=manifest.default_size,
        cfg=True,
        vae_scale_factor=manifest.vae_scale_factor,
    )
    rng = np.random.default_rng(0)
    modules = component_modules(model)
    vocab = int(model.text_encoder.config.vocab_size)
    for name, spec in specs.items():
        t = time.perf_counter()
        feeds = random_feeds(spec, dims, rng, int_high=vocab)
        try:
            export_component(modules[name], spec, feeds, tmp / spec.file, opset=options.opset)
        except ExportError:
            raise
        except OSError as e:
            raise OutputError(f"writing {spec.file} failed ({e.strerror}); check free disk space") from e
        size_mb = sum(p.stat().st_size for p in tmp.glob(spec.file + "*")) / 2**20
        say(f"exported {name} -> {spec.file} ({size_mb:.1f} MB, {time.perf_counter() - t:.1f} s)")
    write_json_atomic(tmp / MANIFEST, manifest.to_json())
    for p in tmp.rglob("*"):  # onnx writes external data 0600; an artifact is meant to be shared
        if p.is_file():
            p.chmod(0o644)


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move ``tmp`` to ``out``; an existing ``out`` is swapped out and deleted after."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)
