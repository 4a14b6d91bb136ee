"""torch modules with exactly the I/O of each :class:`ComponentSpec`.

The same wrappers are traced to ONNX and run by the PyTorch reference backend, so ONNX vs
PyTorch parity compares like with like.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from sdrt.runtime.specs import (
    ComponentSpec,
    guidance_embedding_condition,
    sd_text_encoder_spec,
    sd_unet_spec,
    sd_vae_decoder_spec,
    sdxl_added_conditions,
    sdxl_text_encoder_2_spec,
    sdxl_text_encoder_spec,
)

from .source import LoadedModel

#: SDXL's micro-conditioning: original size (h, w) + crop top-left (y, x) + target size (h, w)
NUM_TIME_IDS = 6


class TextEncoder(torch.nn.Module):
    """int32 token ids -> CLIP last hidden state (after the final layer norm)."""

    def __init__(self, text_encoder: Any):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids.to(torch.int64), return_dict=False)[0]


class PenultimateTextEncoder(torch.nn.Module):
    """int32 token ids -> ``hidden_states[-2]`` (SDXL conditions on the penultimate layer, with
    no final layer norm), plus the pooled projected ``text_embeds`` when ``pooled``."""

    def __init__(self, text_encoder: Any, *, pooled: bool):
        super().__init__()
        self.text_encoder = text_encoder
        self.pooled = pooled

    def forward(self, input_ids: torch.Tensor) -> Any:
        out = self.text_encoder(input_ids.to(torch.int64), output_hidden_states=True)
        if self.pooled:
            return out.hidden_states[-2], out.text_embeds
        return out.hidden_states[-2]


class UNet(torch.nn.Module):
    """(sample, per-sample float timestep, text embeddings, *conditions) -> eps / v prediction.

    ``conditions`` names the extra inputs in spec order: SDXL's ``text_embeds`` and
    ``time_ids`` (diffusers' ``added_cond_kwargs``) and/or ``timestep_cond``. Float inputs are
    cast to the UNet's dtype and the output back to float32, so a float16 UNet keeps float32 I/O.
    """

    def __init__(self, unet: Any, conditions: Sequence[str] = ()):
        super().__init__()
        self.unet = unet
        self.conditions = tuple(conditions)
        self.dtype = next(unet.parameters()).dtype

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        *conditions: torch.Tensor,
    ) -> torch.Tensor:
        if self.dtype != torch.float32:
            sample = sample.to(self.dtype)
            encoder_hidden_states = encoder_hidden_states.to(self.dtype)
            conditions = tuple(c.to(self.dtype) for c in conditions)
        named = dict(zip(self.conditions, conditions))
        added = {k: named[k] for k in ("text_embeds", "time_ids") if k in named}
        out = self.unet(
            sample,
            timestep,
            encoder_hidden_states,
            timestep_cond=named.get("timestep_cond"),
            added_cond_kwargs=added or None,
            return_dict=False,
        )[0]
        return out if self.dtype == torch.float32 else out.float()


class VaeDecoder(torch.nn.Module):
    """latent / scaling_factor -> image in [-1, 1] (post_quant_conv + decoder)."""

    def __init__(self, vae: Any):
        super().__init__()
        self.vae = vae

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent, return_dict=False)[0]


def unet_conditions(unet_config: Any, *, projection_dim: int | None) -> tuple:
    """The UNet's extra conditioning inputs (TensorSpecs), read from its config.

    ``addition_embed_type == "text_time"`` (SDXL) needs ``projection_dim`` of the pooled text
    embeddings; ``time_cond_proj_dim`` (LCM-distilled UNets) adds the guidance embedding.
    """
    conditions: tuple = ()
    if unet_config.get("addition_embed_type") == "text_time":
        expected = int(unet_config["projection_class_embeddings_input_dim"])
        got = int(unet_config["addition_time_embed_dim"]) * NUM_TIME_IDS + int(projection_dim or 0)
        if expected != got:
            raise NotImplementedError(
                f"the UNet's added embedding takes {expected} values but {NUM_TIME_IDS} time ids x "
                f"{unet_config['addition_time_embed_dim']} + text_embeds {projection_dim} make {got}; "
                f"refiner-style (aesthetic score) conditioning is not supported"
            )
        conditions += sdxl_added_conditions(projection_dim=int(projection_dim), num_time_ids=NUM_TIME_IDS)
    elif unet_config.get("addition_embed_type") is not None:
        raise NotImplementedError(
            f"UNet addition_embed_type {unet_config.get('addition_embed_type')!r} is not supported"
        )
    if unet_config.get("time_cond_proj_dim") is not None:
        conditions += guidance_embedding_condition(time_cond_proj_dim=int(unet_config["time_cond_proj_dim"]))
    return conditions


def unet_spec(unet_config: Any, *, max_length: int, projection_dim: int | None) -> ComponentSpec:
    """The UNet's spec from its diffusers config (a dict or ``unet.config``)."""
    cross = unet_config["cross_attention_dim"]
    if not isinstance(cross, int):
        raise NotImplementedError("per-block cross_attention_dim lists are not supported")
    return sd_unet_spec(
        latent_channels=int(unet_config["in_channels"]),
        out_channels=int(unet_config["out_channels"]),
        max_length=max_length,
        cross_attention_dim=cross,
        added_conditions=unet_conditions(unet_config, projection_dim=projection_dim),
    )


def _projection_dim(model: LoadedModel) -> int | None:
    """Width of the pooled ``text_embeds`` (SDXL's text_encoder_2 projection), else None."""
    return None if model.text_encoder_2 is None else int(model.text_encoder_2.config.projection_dim)


def component_specs(model: LoadedModel, *, max_length: int) -> dict[str, ComponentSpec]:
    vae = sd_vae_decoder_spec(latent_channels=model.vae.config.latent_channels)
    projection_dim = _projection_dim(model)
    if model.text_encoder_2 is None:
        return {
            "text_encoder": sd_text_encoder_spec(
                max_length=max_length, hidden_size=model.text_encoder.config.hidden_size
            ),
            "unet": unet_spec(model.unet.config, max_length=max_length, projection_dim=None),
            "vae_decoder": vae,
        }
    return {
        "text_encoder": sdxl_text_encoder_spec(
            max_length=max_length, hidden_size=model.text_encoder.config.hidden_size
        ),
        "text_encoder_2": sdxl_text_encoder_2_spec(
            max_length=max_length,
            hidden_size=model.text_encoder_2.config.hidden_size,
            projection_dim=projection_dim,
        ),
        "unet": unet_spec(model.unet.config, max_length=max_length, projection_dim=projection_dim),
        "vae_decoder": vae,
    }


def component_modules(model: LoadedModel) -> dict[str, torch.nn.Module]:
    conditions = unet_conditions(model.unet.config, projection_dim=_projection_dim(model))
    unet = UNet(model.unet, conditions=[t.name for t in conditions]).eval()
    if model.text_encoder_2 is None:
        return {
            "text_encoder": TextEncoder(model.text_encoder).eval(),
            "unet": unet,
            "vae_decoder": VaeDecoder(model.vae).eval(),
        }
    return {
        "text_encoder": PenultimateTextEncoder(model.text_encoder, pooled=False).eval(),
        "text_encoder_2": PenultimateTextEncoder(model.text_encoder_2, pooled=True).eval(),
        "unet": unet,
        "vae_decoder": VaeDecoder(model.vae).eval(),
    }
