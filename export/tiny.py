"""Tiny Stable Diffusion pipelines built from configs with fixed seeds (random weights).

They go through exactly the same export/runtime path as a real checkpoint; tests and the
benchmark's overhead workload use them. ``sd2`` exercises what SD 2.x differs in:
v-prediction, linear attention projections, per-block attention head dims, "!" padding.

``sdxl`` is a ``StableDiffusionXLPipeline`` (two text encoders, the second with projection
and "!" padding like OpenCLIP bigG; a "text_time" UNet with ``transformer_layers_per_block``);
``sdxl-turbo`` is the same with SDXL-Turbo's scheduler (Euler ancestral, "trailing" spacing);
``sd1-lcm`` is an SD1 UNet with a guidance embedding (``time_cond_proj_dim``) and LCMScheduler,
saved as a ``LatentConsistencyModelPipeline``.
"""

from __future__ import annotations

import json
from pathlib import Path

from sdrt.clip_vocab import save_clip_tokenizer

CLIP_VOCAB_SIZE = 49408
FAMILIES = ("sd1", "sd2")
XL_FAMILIES = ("sdxl", "sdxl-turbo")
LCM_FAMILIES = ("sd1-lcm",)
#: SDXL UNet config values (stabilityai/stable-diffusion-xl-base-1.0, unet/config.json) that
#: the tiny one scales down; the benchmark builds the full-size UNet from them.
SDXL_BASE_UNET = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (5, 10, 20),
    "transformer_layers_per_block": (1, 2, 10),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # 6 time ids x 256 + 1280 pooled text
    "norm_num_groups": 32,
}


def make_tiny_pipeline(dst: str | Path, family: str = "sd1", *, seed: int = 0) -> Path:
    """Write a tiny diffusers ``StableDiffusionPipeline`` of ``family`` to ``dst``."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if family in XL_FAMILIES:
        return make_tiny_xl_pipeline(dst, turbo=family == "sdxl-turbo", seed=seed)
    if family in LCM_FAMILIES:
        return make_tiny_lcm_pipeline(dst, seed=seed)
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES + XL_FAMILIES + LCM_FAMILIES}")
    sd2 = family == "sd2"
    dst = Path(dst)
    unet = _tiny_sd_unet(
        seed, attention_head_dim=(2, 4) if sd2 else 8, use_linear_projection=sd2, upcast_attention=sd2
    )
    vae = _tiny_vae(seed + 1, scaling_factor=0.5)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=CLIP_VOCAB_SIZE,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            hidden_act="gelu" if sd2 else "quick_gelu",
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=0 if sd2 else 49407,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction" if sd2 else "epsilon",
        timestep_spacing="leading",
    )
    tok_dir = dst / "tokenizer"
    save_clip_tokenizer(tok_dir, pad_token="!" if sd2 else "<|endoftext|>")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(dst, safe_serialization=True)
    return dst


def _tiny_clip(seed: int, *, projection: bool, hidden_act: str = "gelu", pad_token_id: int = 0):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        projection_dim=32,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=pad_token_id,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _tiny_sd_unet(seed: int, **overrides):
    """The SD 1.x / 2.x-shaped tiny UNet; ``overrides`` set the family's differences."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    config = dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    return UNet2DConditionModel(**{**config, **overrides})


def _tiny_vae(seed: int, *, scaling_factor: float):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        latent_channels=4,
        norm_num_groups=16,
        sample_size=32,
        scaling_factor=scaling_factor,
    )


def make_tiny_xl_pipeline(dst: str | Path, *, turbo: bool = False, seed: int = 0) -> Path:
    """Write a tiny ``StableDiffusionXLPipeline`` (SDXL-Turbo's scheduler if ``turbo``)."""
    import torch
    from diffusers import (
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTokenizer

    dst = Path(dst)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        **dict(
            SDXL_BASE_UNET,
            sample_size=16,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            transformer_layers_per_block=(1, 2),
            cross_attention_dim=64,  # 32 + 32: both encoders' hidden states side by side
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32,
            norm_num_groups=16,
        )
    )
    vae = _tiny_vae(seed + 1, scaling_factor=0.13025)
    text_encoder = _tiny_clip(seed + 2, projection=False, hidden_act="quick_gelu", pad_token_id=49407)
    text_encoder_2 = _tiny_clip(seed + 3, projection=True)
    common = dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        prediction_type="epsilon",
    )
    if turbo:  # stabilityai/sdxl-turbo scheduler_config.json
        scheduler = EulerAncestralDiscreteScheduler(**common, timestep_spacing="trailing")
    else:  # stabilityai/stable-diffusion-xl-base-1.0 scheduler_config.json
        scheduler = EulerDiscreteScheduler(**common, timestep_spacing="leading", interpolation_type="linear")
    save_clip_tokenizer(dst / "tokenizer", pad_token="<|endoftext|>")
    save_clip_tokenizer(dst / "tokenizer_2", pad_token="!")
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(dst / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(dst / "tokenizer_2"),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(dst, safe_serialization=True)
    # The published SDXL / SDXL-Turbo scheduler configs also carry these DDIM/PNDM keys, which
    # matter when another scheduler class is built from them (DDIMScheduler's default is
    # clip_sample=True).
    config_path = dst / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(clip_sample=False, set_alpha_to_one=False, skip_prk_steps=True, sample_max_value=1.0)
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return dst


def make_tiny_lcm_pipeline(dst: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny ``LatentConsistencyModelPipeline``: an SD1 UNet with a guidance embedding
    (``time_cond_proj_dim``, as in SimianLuo/LCM_Dreamshaper_v7) and its LCMScheduler."""
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler
    from transformers import CLIPTokenizer

    dst = Path(dst)
    unet = _tiny_sd_unet(seed, time_cond_proj_dim=32)
    vae = _tiny_vae(seed + 1, scaling_factor=0.5)
    text_encoder = _tiny_clip(seed + 2, projection=False, hidden_act="quick_gelu", pad_token_id=49407)
    scheduler = LCMScheduler(  # SimianLuo/LCM_Dreamshaper_v7 scheduler_config.json
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        original_inference_steps=50,
        set_alpha_to_one=True,
        steps_offset=1,
        prediction_type="epsilon",
    )
    save_clip_tokenizer(dst / "tokenizer", pad_token="<|endoftext|>")
    pipe = LatentConsistencyModelPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(dst / "tokenizer"),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(dst, safe_serialization=True)
    return dst
