"""torch modules with exactly the I/O of each :class:`ComponentSpec`.

The same wrappers are traced to ONNX and run by the PyTorch reference backend, so ONNX vs
PyTorch parity compares like with like.
"""

from __future__ import annotations

from typing import Any

import torch

from sdrt.runtime.specs import (
    ComponentSpec,
    sd_text_encoder_spec,
    sd_unet_spec,
    sd_vae_decoder_spec,
)

from .source import LoadedModel


class TextEncoder(torch.nn.Module):
    """int32 token ids -> CLIP last hidden state (after the final layer norm)."""

    def __init__(self, text_encoder: Any):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids.to(torch.int64), return_dict=False)[0]


class UNet(torch.nn.Module):
    """(sample, per-sample float timestep, text embeddings) -> eps / v prediction."""

    def __init__(self, unet: Any):
        super().__init__()
        self.unet = unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


class VaeDecoder(torch.nn.Module):
    """latent / scaling_factor -> image in [-1, 1] (post_quant_conv + decoder)."""

    def __init__(self, vae: Any):
        super().__init__()
        self.vae = vae

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent, return_dict=False)[0]


def component_specs(model: LoadedModel, *, max_length: int) -> dict[str, ComponentSpec]:
    unet_cfg = model.unet.config
    cross = unet_cfg.cross_attention_dim
    if not isinstance(cross, int):
        raise NotImplementedError("per-block cross_attention_dim lists are not supported")
    return {
        "text_encoder": sd_text_encoder_spec(
            max_length=max_length, hidden_size=model.text_encoder.config.hidden_size
        ),
        "unet": sd_unet_spec(
            latent_channels=unet_cfg.in_channels,
            out_channels=unet_cfg.out_channels,
            max_length=max_length,
            cross_attention_dim=cross,
        ),
        "vae_decoder": sd_vae_decoder_spec(latent_channels=model.vae.config.latent_channels),
    }


def component_modules(model: LoadedModel) -> dict[str, torch.nn.Module]:
    return {
        "text_encoder": TextEncoder(model.text_encoder).eval(),
        "unet": UNet(model.unet).eval(),
        "vae_decoder": VaeDecoder(model.vae).eval(),
    }
