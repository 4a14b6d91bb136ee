"""Tier 3/4: exported components and the whole pipeline against PyTorch / diffusers."""

from __future__ import annotations

import numpy as np
import pytest

from sdrt.runtime import GenerationRequest, Pipeline
from sdrt.runtime.backends import create_backend
from sdrt.runtime.manifest import Artifact
from sdrt.runtime.specs import resolve_dims

from sdrt.export.onnx_export import random_feeds
from sdrt.export.reference import diffusers_generate, diffusers_pipeline, psnr

# (batch, height, width): native, smaller non-square, larger non-square
SHAPES = [(1, 32, 32), (2, 24, 40), (1, 48, 36)]


@pytest.mark.parametrize("batch,height,width", SHAPES)
def test_component_parity_ort_vs_torch(tiny_artifacts, tiny_model_dirs, family, batch, height, width):
    artifact = Artifact.open(tiny_artifacts[family])
    m = artifact.manifest
    dims = resolve_dims(batch=batch, height=height, width=width, cfg=True, vae_scale_factor=m.vae_scale_factor)
    rng = np.random.default_rng(7)
    with create_backend("ort-cpu", artifact) as ort, create_backend(
        "torch", artifact, model_dir=tiny_model_dirs[family]
    ) as ref:
        for name, spec in m.components.items():
            feeds = random_feeds(spec, dims, rng, int_high=49408)
            out = spec.output_names[0]
            a, b = ort.run(name, feeds)[out], ref.run(name, feeds)[out]
            assert a.shape == spec.outputs[0].resolve(dims)
            assert np.abs(a - b).max() <= 1e-4, name
            assert np.abs(b).max() > 1e-3, f"{name} output is ~0: the comparison would prove nothing"


@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp_2m", "dpmpp_2m_karras"])
def test_end_to_end_psnr_vs_diffusers(tiny_artifacts, tiny_model_dirs, family, sampler):
    """The sdrt image and the diffusers pipeline image from the same initial latents."""
    m = Artifact.open(tiny_artifacts[family]).manifest
    f = m.vae_scale_factor
    init = np.random.default_rng(3).standard_normal((2, 4, 32 // f, 40 // f), dtype=np.float32)
    req = GenerationRequest(
        prompt="a red circle on a blue background", negative_prompt="green", steps=8, guidance=5.0,
        sampler=sampler, seed=1, width=40, height=32, num_images=2, init_latents=init,
    ).resolved(m)
    with Pipeline.load(tiny_artifacts[family]) as pipe:
        ours = pipe(req).images_float
    theirs = diffusers_generate(diffusers_pipeline(tiny_model_dirs[family], sampler), req, init)
    assert ours.shape == theirs.shape == (2, 32, 40, 3)
    assert psnr(ours, theirs) >= 40.0
    assert ours.std() > 1e-3  # not a blank image


def test_end_to_end_detects_a_wrong_model(tiny_artifacts, tiny_model_dirs):
    """The parity check can fail: an SD1 artifact against the SD2 pipeline is far off."""
    m = Artifact.open(tiny_artifacts["sd1"]).manifest
    init = np.random.default_rng(3).standard_normal((1, 4, 16, 16), dtype=np.float32)
    req = GenerationRequest(prompt="a cat", steps=4, sampler="ddim", seed=1, init_latents=init).resolved(m)
    with Pipeline.load(tiny_artifacts["sd1"]) as pipe:
        ours = pipe(req).images_float
    theirs = diffusers_generate(diffusers_pipeline(tiny_model_dirs["sd2"], "ddim"), req, init)
    assert psnr(ours, theirs) < 40.0
