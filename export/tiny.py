"""Tiny Stable Diffusion pipelines built from configs with fixed seeds (random weights).

They go through exactly the same export/runtime path as a real checkpoint; tests and the
benchmark's overhead workload use them. ``sd2`` exercises what SD 2.x differs in:
v-prediction, linear attention projections, per-block attention head dims, "!" padding.
"""

from __future__ import annotations

from pathlib import Path

from sdrt.clip_vocab import save_clip_tokenizer

CLIP_VOCAB_SIZE = 49408
FAMILIES = ("sd1", "sd2")


def make_tiny_pipeline(dst: str | Path, family: str = "sd1", *, seed: int = 0) -> Path:
    """Write a tiny diffusers ``StableDiffusionPipeline`` of ``family`` to ``dst``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}")
    sd2 = family == "sd2"
    dst = Path(dst)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4) if sd2 else 8,
        use_linear_projection=sd2,
        upcast_attention=sd2,
        norm_num_groups=16,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        latent_channels=4,
        norm_num_groups=16,
        sample_size=32,
        scaling_factor=0.5,
    )
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
