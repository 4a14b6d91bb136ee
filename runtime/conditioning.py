"""Prompt conditioning per model family: prompts -> the UNet's conditioning feeds.

Computed once, before the sampling loop. The loop then sends
``{"sample", "timestep", **conditioning}`` to the UNet and never asks which family it runs.

=========  =====================================================================================
family     conditioning feeds (all with ``cfg_batch`` rows: unconditional half first with CFG)
=========  =====================================================================================
sd1, sd2   ``encoder_hidden_states``: the text encoder's last hidden state
sdxl       ``encoder_hidden_states``: penultimate hidden states of both text encoders side by
           side; ``text_embeds``: text_encoder_2's pooled projection; ``time_ids``: original
           size + crop top-left + target size (Podell et al. 2023, "SDXL", Sec. 2.2)
any        ``timestep_cond`` when the UNet has a guidance embedding (LCM, Luo et al. 2023):
           the sinusoidal embedding of w = guidance - 1; classifier-free guidance is then off
=========  =====================================================================================

Each function reproduces the matching diffusers pipeline (``StableDiffusionPipeline.encode_prompt``,
``StableDiffusionXLPipeline.encode_prompt`` / ``_get_add_time_ids``,
``LatentConsistencyModelPipeline.get_guidance_scale_embedding``).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Mapping, MutableMapping

import numpy as np

from .manifest import Manifest
from .request import GenerationRequest
from .tokenizer import ClipTokenizer

__all__ = [
    "EncodePrompt",
    "ENCODE_PROMPT",
    "classifier_free_guidance",
    "guidance_scale_embedding",
    "sdxl_time_ids",
    "unet_conditioning",
]

#: run(component, feeds) -> outputs: the backend seam
Run = Callable[[str, Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]
#: encode_prompt(run, tokenizers, manifest, request, cfg, timings) -> conditioning feeds
EncodePrompt = Callable[
    [Run, Mapping[str, ClipTokenizer], Manifest, GenerationRequest, bool, MutableMapping[str, float]],
    dict[str, np.ndarray],
]


def classifier_free_guidance(req: GenerationRequest, manifest: Manifest) -> bool:
    """CFG runs for guidance > 1 unless the UNet embeds the guidance scale itself (diffusers'
    ``do_classifier_free_guidance``: ``guidance_scale > 1 and time_cond_proj_dim is None``)."""
    return req.cfg and "timestep_cond" not in manifest.components["unet"].input_names


def _tokenize(tokenizer: ClipTokenizer, prompts: list[str], timings: MutableMapping[str, float]) -> np.ndarray:
    t = time.perf_counter()
    ids = tokenizer(prompts).astype(np.int32)
    timings["tokenize"] = timings.get("tokenize", 0.0) + time.perf_counter() - t
    return ids


def _encode(run: Run, component: str, ids: np.ndarray, timings: MutableMapping[str, float]) -> Mapping[str, np.ndarray]:
    t = time.perf_counter()
    out = run(component, {"input_ids": ids})
    timings["text_encoder"] = timings.get("text_encoder", 0.0) + time.perf_counter() - t
    return out


def encode_prompt_sd(
    run: Run,
    tokenizers: Mapping[str, ClipTokenizer],
    manifest: Manifest,
    req: GenerationRequest,
    cfg: bool,
    timings: MutableMapping[str, float],
) -> dict[str, np.ndarray]:
    """SD 1.x / 2.x: the CLIP text encoder's last hidden state."""
    b = req.num_images
    prompts = [req.negative_prompt] * b + [req.prompt] * b if cfg else [req.prompt] * b
    ids = _tokenize(tokenizers["text_encoder"], prompts, timings)
    return {"encoder_hidden_states": _encode(run, "text_encoder", ids, timings)["last_hidden_state"]}


def sdxl_time_ids(req: GenerationRequest) -> np.ndarray:
    """(6,) float32 micro-conditioning: original (h, w) + crop top-left (y, x) + target (h, w);
    original and target default to the requested size, the crop to (0, 0), as in diffusers."""
    original = req.original_size or (req.height, req.width)
    target = req.target_size or (req.height, req.width)
    return np.asarray([*original, *req.crop_top_left, *target], dtype=np.float32)


def encode_prompt_sdxl(
    run: Run,
    tokenizers: Mapping[str, ClipTokenizer],
    manifest: Manifest,
    req: GenerationRequest,
    cfg: bool,
    timings: MutableMapping[str, float],
) -> dict[str, np.ndarray]:
    """SDXL: both encoders' penultimate hidden states concatenated on the channel axis, the
    pooled ``text_embeds`` of text_encoder_2, and ``time_ids``.

    With ``force_zeros_for_empty_prompt`` (the manifest's ``conditioning``) an empty negative
    prompt is all-zero embeddings, not the encoding of "" (diffusers does this when
    ``negative_prompt`` is None); the encoders then only run on the prompt.
    """
    b = req.num_images
    zero_negative = cfg and not req.negative_prompt and bool(
        manifest.conditioning.get("force_zeros_for_empty_prompt", True)
    )
    prompts = [req.negative_prompt] * b + [req.prompt] * b if cfg and not zero_negative else [req.prompt] * b
    first = _encode(run, "text_encoder", _tokenize(tokenizers["text_encoder"], prompts, timings), timings)
    second = _encode(run, "text_encoder_2", _tokenize(tokenizers["text_encoder_2"], prompts, timings), timings)
    embeddings = np.concatenate([first["hidden_states"], second["hidden_states"]], axis=-1)
    pooled = second["text_embeds"]
    if zero_negative:
        embeddings = np.concatenate([np.zeros_like(embeddings), embeddings])
        pooled = np.concatenate([np.zeros_like(pooled), pooled])
    rows = embeddings.shape[0]
    return {
        "encoder_hidden_states": embeddings,
        "text_embeds": pooled,
        "time_ids": np.tile(sdxl_time_ids(req), (rows, 1)),
    }


#: manifest family -> its prompt encoder
ENCODE_PROMPT: dict[str, EncodePrompt] = {
    "sd1": encode_prompt_sd,
    "sd2": encode_prompt_sd,
    "sdxl": encode_prompt_sdxl,
}


def guidance_scale_embedding(w: np.ndarray, embedding_dim: int) -> np.ndarray:
    """Sinusoidal embedding of the guidance weight (VDM's timestep embedding applied to
    ``1000 w``; diffusers' ``get_guidance_scale_embedding``), in float32 like diffusers:

        emb_k = exp(-k log(10000) / (d/2 - 1)),  k < d/2;   [sin(1000 w emb), cos(1000 w emb)]
    """
    w = np.asarray(w, dtype=np.float32) * np.float32(1000.0)
    half = embedding_dim // 2
    scale = np.float32(math.log(10000.0)) / np.float32(half - 1)
    freqs = np.exp(np.arange(half, dtype=np.float32) * -scale)
    args = w[:, None] * freqs[None, :]
    emb = np.concatenate([np.sin(args), np.cos(args)], axis=1)
    if embedding_dim % 2:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb.astype(np.float32)


def unet_conditioning(
    run: Run,
    tokenizers: Mapping[str, ClipTokenizer],
    manifest: Manifest,
    req: GenerationRequest,
    cfg: bool,
    timings: MutableMapping[str, float],
) -> dict[str, np.ndarray]:
    """Every UNet input except ``sample`` and ``timestep``, for this request."""
    feeds = ENCODE_PROMPT[manifest.family](run, tokenizers, manifest, req, cfg, timings)
    unet = manifest.components["unet"]
    if "timestep_cond" in unet.input_names:
        dim = next(t.shape[1] for t in unet.inputs if t.name == "timestep_cond")
        rows = feeds["encoder_hidden_states"].shape[0]
        feeds["timestep_cond"] = guidance_scale_embedding(np.full((rows,), req.guidance - 1.0), int(dim))
    return feeds
