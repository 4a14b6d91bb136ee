"""The numpy sampling loop on ONNX Runtime: determinism, options, threads, PNG metadata."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from sdrt.errors import ConfigError, ShapeError
from sdrt.runtime import GenerationRequest
from sdrt.runtime.png import format_parameters, save_png

REQ = GenerationRequest(prompt="a red circle on a blue background", steps=6, seed=11)


def test_same_seed_same_image_other_seed_other_image(sd1_pipeline):
    a = sd1_pipeline(REQ).images
    b = sd1_pipeline(REQ).images
    c = sd1_pipeline(replace(REQ, seed=12)).images
    assert a.dtype == np.uint8 and a.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).max() > 0


@pytest.mark.parametrize("sampler", ["euler", "euler_a", "ddim", "dpmpp_2m", "dpmpp_2m_karras"])
def test_every_sampler_runs_and_is_reproducible(sd1_pipeline, sampler):
    req = replace(REQ, sampler=sampler)
    a, b = sd1_pipeline(req), sd1_pipeline(req)
    np.testing.assert_array_equal(a.images, b.images)
    assert np.isfinite(a.latents).all()


def test_num_images_size_and_callback(sd1_pipeline):
    steps = []
    res = sd1_pipeline(
        replace(REQ, num_images=3, width=40, height=24), callback=lambda info: steps.append(info["i"])
    )
    assert res.images.shape == (3, 24, 40, 3)
    assert res.latents.shape == (3, 4, 12, 20)
    assert steps == list(range(REQ.steps))
    assert res.request.width == 40 and res.request.seed == 11


def test_negative_prompt_and_guidance_change_the_image(sd1_pipeline):
    base = sd1_pipeline(REQ).images_float
    neg = sd1_pipeline(replace(REQ, negative_prompt="blurry")).images_float
    no_cfg = sd1_pipeline(replace(REQ, guidance=1.0)).images_float
    assert np.abs(base - neg).max() > 1e-4
    assert np.abs(base - no_cfg).max() > 1e-4


def test_init_latents_replace_the_seeded_noise(sd1_pipeline):
    noise = np.random.default_rng(11).standard_normal((1, 4, 16, 16), dtype=np.float32)
    a = sd1_pipeline(replace(REQ, init_latents=noise, seed=1)).images
    b = sd1_pipeline(replace(REQ, init_latents=noise, seed=2)).images
    np.testing.assert_array_equal(a, b)  # deterministic sampler: the seed no longer matters
    with pytest.raises(ConfigError, match=r"shape \(1, 4, 8, 8\), expected \(1, 4, 16, 16\)"):
        sd1_pipeline(replace(REQ, init_latents=noise[:, :, :8, :8]))


def test_random_seed_is_reported(sd1_pipeline):
    res = sd1_pipeline(replace(REQ, seed=None))
    again = sd1_pipeline(replace(REQ, seed=res.request.seed))
    np.testing.assert_array_equal(res.images, again.images)


def test_concurrent_calls_match_sequential(sd1_pipeline):
    """One loaded pipeline, several threads: each result equals its sequential twin."""
    reqs = [replace(REQ, seed=s, sampler=smp) for s, smp in [(1, "euler_a"), (2, "ddim"), (3, "dpmpp_2m"), (4, "euler")]]
    sequential = [sd1_pipeline(r).images for r in reqs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda r: sd1_pipeline(r).images, reqs))
    for s, c in zip(sequential, concurrent):
        np.testing.assert_array_equal(s, c)


@pytest.mark.parametrize(
    "change,error,match",
    [
        ({"steps": 0}, ConfigError, "steps must be a positive integer"),
        ({"steps": -3}, ConfigError, "steps must be a positive integer"),
        ({"sampler": "lms"}, ConfigError, "unknown sampler"),
        ({"width": 30}, ShapeError, "not a positive multiple of 4"),
        ({"height": 128}, ShapeError, "outside this artifact's range"),
        ({"num_images": 9}, ShapeError, "batch of 9"),
        ({"guidance": float("nan")}, ConfigError, "guidance"),
    ],
)
def test_bad_requests_are_rejected_before_running(sd1_pipeline, change, error, match):
    with pytest.raises(error, match=match):
        sd1_pipeline(replace(REQ, **change))


def test_png_carries_generation_parameters(sd1_pipeline, tmp_path):
    res = sd1_pipeline(replace(REQ, negative_prompt="green"))
    text = format_parameters(res.request, sd1_pipeline.manifest)
    path = save_png(tmp_path / "x.png", res.images[0], text)
    img = Image.open(path)
    assert img.size == (32, 32)
    params = img.text["parameters"]
    assert params.splitlines()[0] == REQ.prompt
    assert params.splitlines()[1] == "Negative prompt: green"
    assert "Steps: 6, Sampler: dpmpp_2m, CFG scale: 7.5, Seed: 11, Size: 32x32, Model hash: " in params
    np.testing.assert_array_equal(np.asarray(img), res.images[0])
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind
