"""The Stable Diffusion 1.5 architecture as data, built with random weights (no download).

The values below are those of the published ``runwayml/stable-diffusion-v1-5`` configs
(``unet/config.json``, ``vae/config.json``, ``text_encoder/config.json`` — the CLIP ViT-L/14
text tower — and ``scheduler/scheduler_config.json``). Weights are drawn from a fixed seed, so
speed figures are those of the real architecture, but images are noise: parity is measured
between implementations of the same random model, never against published SD1.5 images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdrt.clip_vocab import save_clip_tokenizer

#: Stated in every benchmark report that uses these models.
RANDOM_WEIGHTS_NOTE = (
    "SD1.5 architecture built from its published config with random weights (seeded); "
    "no checkpoint was downloaded, so images are noise and only speed and parity are meaningful."
)

SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}

SD15_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

SD15_TEXT_ENCODER: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}

SD15_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


def make_sd15_random(dst: str | Path, *, seed: int = 0) -> Path:
    """Write a diffusers ``StableDiffusionPipeline`` with SD1.5's architecture to ``dst``."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    dst = Path(dst)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SD15_UNET)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**SD15_VAE)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER))
    tok_dir = dst / "tokenizer"
    save_clip_tokenizer(tok_dir)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(tok_dir),
        unet=unet,
        scheduler=PNDMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(dst, safe_serialization=True)
    return dst
