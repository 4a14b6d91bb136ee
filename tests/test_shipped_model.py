"""The shipped shapes64 model (sdrt/models/shapes64) follows prompts it never saw in training.

Loads the model dir with diffusers' StableDiffusionPipeline, generates 6 held-out prompts
(colour/shape/background combinations excluded from training) with fixed seeds at 20 DDIM
steps, and reads the images back with the pixel scorer of training/shapes.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "sdrt" / "models" / "shapes64"

pytestmark = pytest.mark.skipif(
    not (MODEL_DIR / "model_index.json").is_file()
    or not (MODEL_DIR / "unet" / "diffusion_pytorch_model.safetensors").is_file(),
    reason=f"shipped shapes64 weights not present at {MODEL_DIR}",
)

# 6 held-out prompts: one per held-out triple (every shape, every background, 6 colours),
# mixing centred and corner positions.
PROMPTS_IDX = [0, 6, 12, 33, 44, 56]


@pytest.fixture(scope="module")
def results():
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    sys.path.insert(0, str(ROOT / "training"))
    import shapes

    torch.set_num_threads(2)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        MODEL_DIR, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    items = [shapes.eval_prompts()[i] for i in PROMPTS_IDX]
    for it in items:
        assert (it["colour"], it["shape"], it["background"]) not in shapes.TRAIN_TRIPLES
    gens = [torch.Generator().manual_seed(1000 + i) for i in range(len(items))]
    out = pipe(prompt=[it["prompt"] for it in items], generator=gens, num_inference_steps=20,
               guidance_scale=7.5, output_type="np")
    imgs = (out.images * 255).round().clip(0, 255).astype("uint8")
    assert imgs.shape == (len(items), 64, 64, 3)
    return [shapes.judge(im, it) for im, it in zip(imgs, items)]


def test_layout_is_standard_diffusers():
    import json
    index = json.loads((MODEL_DIR / "model_index.json").read_text())
    for part in ("tokenizer", "text_encoder", "unet", "vae", "scheduler"):
        assert part in index, part
    assert not list(MODEL_DIR.rglob("*.bin")), "weights must be safetensors only"
    size = sum(p.stat().st_size for p in MODEL_DIR.rglob("*") if p.is_file())
    assert size < 32e6, f"model dir is {size / 1e6:.1f} MB"


def test_background_colour_follows_prompt(results):
    ok = sum(r["background"] for r in results)
    assert ok >= 5, [r["read"] for r in results]


def test_shape_colour_follows_prompt(results):
    ok = sum(r["shape_colour"] for r in results)
    assert ok >= 4, [r["read"] for r in results]


def test_shape_type_follows_prompt(results):
    ok = sum(r["shape"] for r in results)
    assert ok >= 3, [r["read"] for r in results]
