"""The artifact directory and its ``manifest.json``: self-describing, validated before use.

Layout of an artifact::

    manifest.json          this module's Manifest, as JSON
    tokenizer/             vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json
    tokenizer_2/           SDXL only: the second text encoder's tokenizer
    text_encoder.onnx      one ONNX file per component (``ComponentSpec.file``),
    text_encoder_2.onnx    (SDXL only)
    unet.onnx              plus ``<file>.data`` when the weights exceed 2 GB
    vae_decoder.onnx

Family differences are data: ``family`` picks the prompt-encoding function
(:mod:`sdrt.runtime.conditioning`), the UNet spec lists its extra conditioning inputs, and
``conditioning`` carries the few settings that function needs (e.g. SDXL's
``force_zeros_for_empty_prompt``). ``conditioning`` is optional and empty for SD 1.x / 2.x, so
their manifests are unchanged and format version 1 still describes them.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from sdrt import __version__
from sdrt.errors import ArtifactError, ManifestVersionError, ShapeError

from .specs import ComponentSpec

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
#: text-encoder component -> its tokenizer folder in the artifact
TOKENIZER_DIRS = {"text_encoder": TOKENIZER_DIR, "text_encoder_2": "tokenizer_2"}
FAMILIES = ("sd1", "sd2", "sdxl")


@dataclass(frozen=True)
class ShapeLimits:
    """The request sizes an artifact promises to run (recorded at export time)."""

    size_multiple: int  # width/height must be multiples (VAE factor x 2**UNet downsamplings)
    min_size: int
    max_size: int
    max_batch: int

    def check(self, *, width: int, height: int, batch: int) -> None:
        for label, v in (("width", width), ("height", height)):
            if v <= 0 or v % self.size_multiple:
                lo = max(self.size_multiple, (max(v, 1) // self.size_multiple) * self.size_multiple)
                raise ShapeError(
                    f"{label} {v} is not a positive multiple of {self.size_multiple}, which this "
                    f"model's VAE and UNet downsampling require; use e.g. {lo} or "
                    f"{lo + self.size_multiple}"
                )
            if not self.min_size <= v <= self.max_size:
                raise ShapeError(
                    f"{label} {v} is outside this artifact's range {self.min_size}..{self.max_size}; "
                    f"pick a size in range or re-export with `sdrt export --max-size {v}`"
                )
        if not 1 <= batch <= self.max_batch:
            raise ShapeError(
                f"batch of {batch} images is outside this artifact's range 1..{self.max_batch}; "
                f"use --num-images <= {self.max_batch} or re-export with `--max-batch {batch}`"
            )


@dataclass(frozen=True)
class Manifest:
    family: str  # one of FAMILIES
    fingerprint: str  # sha256 of the source weights and configs
    export_key: str  # fingerprint + export options: equal key => export is skipped
    prediction_type: str  # "epsilon" | "v_prediction"
    vae_scaling_factor: float
    vae_scale_factor: int  # spatial downsampling of the VAE (8 for SD)
    latent_channels: int
    default_size: int
    limits: ShapeLimits
    scheduler: Mapping[str, Any]  # the source's scheduler_config.json, verbatim
    components: Mapping[str, ComponentSpec]
    model_name: str = ""
    source: str = ""  # source model directory at export time (informational)
    export_info: Mapping[str, Any] = field(default_factory=dict)
    #: family-specific prompt-conditioning settings (SDXL: force_zeros_for_empty_prompt, ...)
    conditioning: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    sdrt_version: str = __version__

    def to_json(self) -> dict[str, Any]:
        d = {
            "format_version": self.format_version,
            "sdrt_version": self.sdrt_version,
            "model_name": self.model_name,
            "family": self.family,
            "fingerprint": self.fingerprint,
            "export_key": self.export_key,
            "source": self.source,
            "prediction_type": self.prediction_type,
            "vae_scaling_factor": self.vae_scaling_factor,
            "vae_scale_factor": self.vae_scale_factor,
            "latent_channels": self.latent_channels,
            "default_size": self.default_size,
            "limits": {
                "size_multiple": self.limits.size_multiple,
                "min_size": self.limits.min_size,
                "max_size": self.limits.max_size,
                "max_batch": self.limits.max_batch,
            },
            "scheduler": dict(self.scheduler),
            "components": {k: v.to_json() for k, v in self.components.items()},
            "export": dict(self.export_info),
        }
        if self.conditioning:
            d["conditioning"] = dict(self.conditioning)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Manifest":
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise ManifestVersionError(
                f"artifact format version {version!r} is not supported by sdrt {__version__} "
                f"(which reads version {FORMAT_VERSION}); re-export the model with this sdrt "
                f"(`sdrt export MODEL_DIR --out DIR`) or use the sdrt version that wrote it "
                f"({d.get('sdrt_version', 'unknown')})"
            )
        if d.get("family") not in FAMILIES:
            raise ArtifactError(
                f"manifest family {d.get('family')!r} is not one this sdrt runs ({', '.join(FAMILIES)}); "
                f"re-export the model with this sdrt or use the sdrt version that wrote it "
                f"({d.get('sdrt_version', 'unknown')})"
            )
        try:
            return cls(
                format_version=version,
                sdrt_version=d["sdrt_version"],
                model_name=d.get("model_name", ""),
                family=d["family"],
                fingerprint=d["fingerprint"],
                export_key=d["export_key"],
                source=d.get("source", ""),
                prediction_type=d["prediction_type"],
                vae_scaling_factor=float(d["vae_scaling_factor"]),
                vae_scale_factor=int(d["vae_scale_factor"]),
                latent_channels=int(d["latent_channels"]),
                default_size=int(d["default_size"]),
                limits=ShapeLimits(**d["limits"]),
                scheduler=d["scheduler"],
                components={k: ComponentSpec.from_json(v) for k, v in d["components"].items()},
                export_info=d.get("export", {}),
                conditioning=d.get("conditioning", {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(
                f"manifest.json is missing or has a malformed field ({e!r}); re-export the "
                f"artifact with `sdrt export`"
            ) from e


@dataclass(frozen=True)
class Artifact:
    """An artifact directory whose manifest parsed and whose files exist."""

    path: Path
    manifest: Manifest

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / TOKENIZER_DIR

    def tokenizer_dirs(self) -> dict[str, Path]:
        """Text-encoder component -> its tokenizer folder, for every text encoder present."""
        return {
            name: self.path / sub for name, sub in TOKENIZER_DIRS.items() if name in self.manifest.components
        }

    def component_path(self, name: str) -> Path:
        return self.path / self.manifest.components[name].file

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "Artifact":
        path = Path(path)
        mpath = path / MANIFEST
        if not path.is_dir():
            raise ArtifactError(
                f"artifact directory {path} does not exist; create one with "
                f"`sdrt export MODEL_DIR --out {path}`"
            )
        if not mpath.is_file():
            raise ArtifactError(
                f"{path} has no {MANIFEST}, so it is not an sdrt artifact (or its export did not "
                f"finish); re-run `sdrt export MODEL_DIR --out {path}`"
            )
        try:
            data = json.loads(mpath.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ArtifactError(f"{mpath} is not valid JSON ({e}); re-export the artifact") from e
        if not isinstance(data, dict):
            raise ArtifactError(f"{mpath} is not a JSON object; re-export the artifact")
        manifest = Manifest.from_json(data)
        artifact = cls(path=path, manifest=manifest)
        artifact.check_files()
        return artifact

    def check_files(self) -> None:
        """Every file the manifest names exists and is not empty."""
        required = [self.component_path(n) for n in self.manifest.components]
        # transformers 5 saves only tokenizer.json; older tools write vocab.json + merges.txt.
        for tok in {self.tokenizer_dir, *self.tokenizer_dirs().values()}:
            if not (tok / "tokenizer.json").is_file():
                required += [tok / "vocab.json", tok / "merges.txt"]
        for p in required:
            if not p.is_file() or p.stat().st_size == 0:
                raise ArtifactError(
                    f"artifact file {p} is missing or empty; the artifact is incomplete, "
                    f"re-export it with `sdrt export`"
                )


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON to ``path`` through a temp file in the same directory and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
