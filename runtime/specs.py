"""Component specs: the one description of each model component's I/O.

A :class:`ComponentSpec` is data. The same object drives

* ONNX export (input/output names, ``dynamic_axes`` from the symbolic dims),
* TensorRT optimization profiles (min/opt/max shapes from :func:`resolve_dims`),
* buffer allocation and feed validation in every backend.

Symbolic dims are strings shared across components, so one request resolves every shape:

=================  ==========================================================
``batch``          images in the request (VAE decoder batch)
``cfg_batch``      UNet / text-encoder batch: ``2 * batch`` with classifier-free guidance
``latent_height``  ``height // vae_scale_factor`` (likewise ``latent_width``)
``height``         image height in pixels (likewise ``width``)
=================  ==========================================================

SDXL's extra UNet inputs (``text_embeds``, ``time_ids``) and the LCM guidance embedding
(``timestep_cond``) have ``cfg_batch`` as their only symbolic dim; their other dims are fixed
by the model, so no new symbols are needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Union

import numpy as np

from sdrt.errors import ArtifactError, BackendError

Dim = Union[int, str]

SYMBOLS = ("batch", "cfg_batch", "latent_height", "latent_width", "height", "width")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "float16", "int32", "int64"
    shape: tuple[Dim, ...]

    def resolve(self, dims: Mapping[str, int]) -> tuple[int, ...]:
        """Concrete shape for ``dims``; every symbolic dim must be in ``dims``."""
        return tuple(d if isinstance(d, int) else int(dims[d]) for d in self.shape)

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """``{axis: symbol}``, the form ``torch.onnx.export(dynamic_axes=...)`` takes."""
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "TensorSpec":
        return cls(name=d["name"], dtype=d["dtype"], shape=tuple(d["shape"]))


@dataclass(frozen=True)
class ComponentSpec:
    name: str  # "text_encoder", "unet", "vae_decoder"
    file: str  # ONNX file, relative to the artifact directory
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: t.dynamic_axes for t in (*self.inputs, *self.outputs) if t.dynamic_axes}

    def shapes(self, dims: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
        """Every input and output shape for one request (buffer allocation, profiles)."""
        return {t.name: t.resolve(dims) for t in (*self.inputs, *self.outputs)}

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Raise :class:`BackendError` unless ``feeds`` match this spec's inputs.

        Checks names, dtypes, ranks, static dims, and that one symbol has one value.
        """
        missing = [n for n in self.input_names if n not in feeds]
        extra = [n for n in feeds if n not in self.input_names]
        if missing or extra:
            raise BackendError(
                f"{self.name}: feeds must be exactly {self.input_names}; "
                f"missing {missing}, unexpected {extra}"
            )
        seen: dict[str, int] = {}
        for t in self.inputs:
            a = feeds[t.name]
            if a.dtype != t.np_dtype:
                raise BackendError(f"{self.name}.{t.name}: dtype {a.dtype}, expected {t.dtype}")
            if a.ndim != len(t.shape):
                raise BackendError(
                    f"{self.name}.{t.name}: shape {a.shape}, expected rank {len(t.shape)} {t.shape}"
                )
            for axis, (want, got) in enumerate(zip(t.shape, a.shape)):
                if isinstance(want, int) and want != got:
                    raise BackendError(
                        f"{self.name}.{t.name}: axis {axis} is {got}, expected {want} (shape {t.shape})"
                    )
                if isinstance(want, str) and seen.setdefault(want, got) != got:
                    raise BackendError(
                        f"{self.name}.{t.name}: axis {axis} ({want}) is {got}, but another input "
                        f"has {want}={seen[want]}"
                    )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": self.file,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ComponentSpec":
        try:
            return cls(
                name=d["name"],
                file=d["file"],
                inputs=tuple(TensorSpec.from_json(t) for t in d["inputs"]),
                outputs=tuple(TensorSpec.from_json(t) for t in d["outputs"]),
            )
        except (KeyError, TypeError) as e:
            raise ArtifactError(
                f"component spec is malformed ({e!r}); re-export the artifact with `sdrt export`"
            ) from e


def resolve_dims(
    *, batch: int, height: int, width: int, cfg: bool, vae_scale_factor: int
) -> dict[str, int]:
    """Values of every symbolic dim for a request of ``batch`` images of ``height x width``."""
    return {
        "batch": batch,
        "cfg_batch": batch * (2 if cfg else 1),
        "latent_height": height // vae_scale_factor,
        "latent_width": width // vae_scale_factor,
        "height": height,
        "width": width,
    }


# ---------------------------------------------------------------------------
# Stable Diffusion 1.x / 2.x components
# ---------------------------------------------------------------------------


def sd_text_encoder_spec(*, max_length: int, hidden_size: int) -> ComponentSpec:
    """CLIP text encoder: token ids -> last hidden state (SD 1.x / 2.x conditioning)."""
    return ComponentSpec(
        name="text_encoder",
        file="text_encoder.onnx",
        inputs=(TensorSpec("input_ids", "int32", ("cfg_batch", max_length)),),
        outputs=(
            TensorSpec("last_hidden_state", "float32", ("cfg_batch", max_length, hidden_size)),
        ),
    )


def sd_unet_spec(
    *,
    latent_channels: int,
    out_channels: int,
    max_length: int,
    cross_attention_dim: int,
    added_conditions: tuple[TensorSpec, ...] = (),
) -> ComponentSpec:
    """UNet: (latent, timestep, text embeddings, *added conditions) -> model output (eps or v).

    ``added_conditions`` are extra conditioning inputs after ``encoder_hidden_states``:
    SDXL's ``text_embeds`` / ``time_ids`` (:func:`sdxl_added_conditions`) and the LCM
    guidance embedding ``timestep_cond`` (:func:`guidance_embedding_condition`).
    """
    return ComponentSpec(
        name="unet",
        file="unet.onnx",
        inputs=(
            TensorSpec(
                "sample", "float32", ("cfg_batch", latent_channels, "latent_height", "latent_width")
            ),
            TensorSpec("timestep", "float32", ("cfg_batch",)),
            TensorSpec(
                "encoder_hidden_states", "float32", ("cfg_batch", max_length, cross_attention_dim)
            ),
            *added_conditions,
        ),
        outputs=(
            TensorSpec(
                "out_sample", "float32", ("cfg_batch", out_channels, "latent_height", "latent_width")
            ),
        ),
    )


def sd_vae_decoder_spec(*, latent_channels: int, image_channels: int = 3) -> ComponentSpec:
    """VAE decoder: unscaled latent (already divided by scaling_factor) -> image in [-1, 1]."""
    return ComponentSpec(
        name="vae_decoder",
        file="vae_decoder.onnx",
        inputs=(
            TensorSpec("latent", "float32", ("batch", latent_channels, "latent_height", "latent_width")),
        ),
        outputs=(TensorSpec("image", "float32", ("batch", image_channels, "height", "width")),),
    )


# ---------------------------------------------------------------------------
# Stable Diffusion XL components and added UNet conditions
# ---------------------------------------------------------------------------

def sdxl_text_encoder_spec(*, max_length: int, hidden_size: int) -> ComponentSpec:
    """SDXL's first text encoder (CLIP ViT-L): token ids -> penultimate-layer hidden states
    (``hidden_states[-2]``, before the final layer norm), as SDXL conditions on."""
    return ComponentSpec(
        name="text_encoder",
        file="text_encoder.onnx",
        inputs=(TensorSpec("input_ids", "int32", ("cfg_batch", max_length)),),
        outputs=(
            TensorSpec("hidden_states", "float32", ("cfg_batch", max_length, hidden_size)),
        ),
    )


def sdxl_text_encoder_2_spec(*, max_length: int, hidden_size: int, projection_dim: int) -> ComponentSpec:
    """SDXL's second text encoder (OpenCLIP ViT-bigG with projection): token ids ->
    penultimate-layer hidden states and the pooled, projected ``text_embeds``."""
    return ComponentSpec(
        name="text_encoder_2",
        file="text_encoder_2.onnx",
        inputs=(TensorSpec("input_ids", "int32", ("cfg_batch", max_length)),),
        outputs=(
            TensorSpec("hidden_states", "float32", ("cfg_batch", max_length, hidden_size)),
            TensorSpec("text_embeds", "float32", ("cfg_batch", projection_dim)),
        ),
    )


def sdxl_added_conditions(*, projection_dim: int, num_time_ids: int = 6) -> tuple[TensorSpec, ...]:
    """SDXL UNet's ``added_cond_kwargs``: pooled text embeddings and the micro-conditioning
    ``time_ids`` (original size + crop top-left + target size, each (h, w))."""
    return (
        TensorSpec("text_embeds", "float32", ("cfg_batch", projection_dim)),
        TensorSpec("time_ids", "float32", ("cfg_batch", num_time_ids)),
    )


def guidance_embedding_condition(*, time_cond_proj_dim: int) -> tuple[TensorSpec, ...]:
    """The guidance-scale embedding of guidance-distilled (LCM) UNets: ``timestep_cond``."""
    return (TensorSpec("timestep_cond", "float32", ("cfg_batch", time_cond_proj_dim)),)
