"""TensorRT build logic that needs no TensorRT: buckets -> profiles, config mapping, cache keys."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from sdrt.errors import BackendError, ConfigError, EngineCacheError, ShapeError
from sdrt.export import trt_build as tb
from sdrt.runtime.manifest import ShapeLimits
from sdrt.runtime.specs import sd_text_encoder_spec, sd_unet_spec, sd_vae_decoder_spec

LIMITS = ShapeLimits(size_multiple=64, min_size=256, max_size=1024, max_batch=8)
UNET = sd_unet_spec(latent_channels=4, out_channels=4, max_length=77, cross_attention_dim=768)
TEXT = sd_text_encoder_spec(max_length=77, hidden_size=768)
VAE = sd_vae_decoder_spec(latent_channels=4)


# -- buckets --------------------------------------------------------------------


def test_parse_static_and_dynamic_buckets():
    assert tb.parse_bucket("768x512@2") == tb.ShapeBucket(batch=(2, 2, 2), height=(512,) * 3, width=(768,) * 3)
    assert tb.parse_bucket("512x512") == tb.ShapeBucket.static(batch=1, height=512, width=512)
    b = tb.parse_bucket("256x384-512x512-1024x768@1-2-4")
    assert b.width == (256, 512, 1024) and b.height == (384, 512, 768) and b.batch == (1, 2, 4)
    assert not b.is_static and tb.parse_bucket("512x512@1").is_static


@pytest.mark.parametrize("text", ["512", "512x512@0", "256x256-512x512@1", "512x512@1-2", "axb"])
def test_parse_bucket_rejects_malformed(text):
    with pytest.raises(ConfigError):
        tb.parse_bucket(text)


def test_bucket_check_against_limits():
    tb.parse_bucket("256x256-512x512-1024x1024@1-1-8").check(LIMITS)
    with pytest.raises(ShapeError, match="multiple of 64"):
        tb.parse_bucket("500x512@1").check(LIMITS)
    with pytest.raises(ShapeError, match="outside this artifact's range"):
        tb.parse_bucket("2048x512@1").check(LIMITS)
    with pytest.raises(ShapeError, match="batch of 9"):
        tb.parse_bucket("512x512@9").check(LIMITS)
    with pytest.raises(ShapeError, match="min <= opt <= max"):
        tb.parse_bucket("512x512-256x256-1024x1024@1").check(LIMITS)


def test_default_dynamic_bucket_spans_half_native_to_max():
    b = tb.default_dynamic_bucket(LIMITS, 512)
    assert b.height == (256, 512, 1024) and b.width == (256, 512, 1024) and b.batch == (1, 1, 4)
    b.check(LIMITS)


# -- profiles from specs ------------------------------------------------------------


def test_static_unet_profile_from_spec():
    (p,) = tb.component_profiles(UNET, [tb.ShapeBucket.static(batch=2, height=512, width=768)], vae_scale_factor=8)
    # min: guidance off (cfg_batch = batch); opt/max: guidance on (cfg_batch = 2 * batch)
    assert p["sample"] == ((2, 4, 64, 96), (4, 4, 64, 96), (4, 4, 64, 96))
    assert p["timestep"] == ((2,), (4,), (4,))
    assert p["encoder_hidden_states"] == ((2, 77, 768), (4, 77, 768), (4, 77, 768))


def test_dynamic_profiles_for_every_component():
    bucket = tb.parse_bucket("256x256-512x512-1024x768@1-1-4")
    (text,) = tb.component_profiles(TEXT, [bucket], vae_scale_factor=8)
    (vae,) = tb.component_profiles(VAE, [bucket], vae_scale_factor=8)
    assert text == {"input_ids": ((1, 77), (2, 77), (8, 77))}
    # the VAE sees images, not the cfg batch; latent = image / 8
    assert vae == {"latent": ((1, 4, 32, 32), (1, 4, 64, 64), (4, 4, 96, 128))}


def test_several_buckets_give_one_profile_each_and_selection_prefers_the_first():
    buckets = [tb.parse_bucket("512x512@1"), tb.parse_bucket("256x256-512x512-1024x1024@1-1-4")]
    profiles = tb.component_profiles(UNET, buckets, vae_scale_factor=8)
    assert len(profiles) == 2

    def shapes(b, h, w):
        return UNET.shapes({"cfg_batch": b, "latent_height": h, "latent_width": w})

    assert tb.select_profile(profiles, shapes(2, 64, 64)) == 0  # 512x512, guidance on
    assert tb.select_profile(profiles, shapes(1, 64, 64)) == 0  # 512x512, guidance off
    assert tb.select_profile(profiles, shapes(2, 96, 64)) == 1  # 512 wide, 768 high
    assert tb.select_profile(profiles, shapes(8, 128, 128)) == 1
    assert tb.select_profile(profiles, shapes(10, 64, 64)) == -1  # batch 5 with guidance
    assert tb.select_profile(profiles, shapes(2, 160, 64)) == -1  # 1280 high


# -- build config ---------------------------------------------------------------------


def test_precision_per_component():
    assert tb.BuildConfig().precision("unet") == "fp16"
    assert tb.BuildConfig(vae_fp32=True).precision("vae_decoder") == "fp32"
    assert tb.BuildConfig(vae_fp32=True).precision("unet") == "fp16"
    assert tb.BuildConfig(fp16=False).precision("unet") == "fp32"


def test_optimization_level_is_range_checked():
    tb.BuildConfig(optimization_level=5)
    with pytest.raises(ConfigError, match="0..5"):
        tb.BuildConfig(optimization_level=6)


# -- cache keys -------------------------------------------------------------------------


def _key(**overrides) -> dict:
    key = tb.EngineKey(
        onnx_sha256="sha256:" + "a" * 64,
        precision="fp16",
        profiles=tb.profiles_to_json(
            tb.component_profiles(UNET, [tb.parse_bucket("512x512@1")], vae_scale_factor=8)
        ),
        tensorrt_version="10.3.0",
        compute_capability="8.9",
        cuda_version="12.4",
        build_options={"optimization_level": None, "refit": False},
        gpu_name="NVIDIA L4",
    ).to_json()
    key.update(overrides)
    return key


ENGINE = Path("/art/trt/unet.plan")


def _check(stored, current):
    tb.check_engine_key(stored, current, component="unet", engine=ENGINE, rebuild="sdrt build /art")


def test_matching_key_passes():
    stored = _key()
    _check(stored, {f: stored[f] for f in tb.KEY_FIELDS})
    # the runtime checks a subset: environment + ONNX hash
    _check(stored, {"tensorrt_version": "10.3.0", "compute_capability": "8.9", "cuda_version": "12.4",
                    "onnx_sha256": stored["onnx_sha256"]})


@pytest.mark.parametrize(
    "field, current",
    [
        ("tensorrt_version", "10.5.0"),
        ("compute_capability", "9.0"),
        ("cuda_version", "12.6"),
        ("onnx_sha256", "sha256:" + "b" * 64),
        ("precision", "fp32"),
    ],
)
def test_mismatch_names_the_field_and_says_rebuild(field, current):
    stored = _key()
    with pytest.raises(EngineCacheError) as e:
        _check(stored, {field: current})
    msg = str(e.value)
    assert msg.startswith("unet: engine /art/trt/unet.plan was built with ")
    assert f"{field}={stored[field]}" in msg and f"{field}={current}" in msg
    assert "rebuild it with `sdrt build /art`" in msg
    assert "\n" not in msg


def test_first_mismatch_in_key_order_is_reported():
    with pytest.raises(EngineCacheError, match="onnx_sha256="):
        _check(_key(), {"compute_capability": "9.0", "onnx_sha256": "sha256:x", "tensorrt_version": "10.0"})


def test_profiles_mismatch_is_reported_shortened():
    other = tb.profiles_to_json(tb.component_profiles(UNET, [tb.parse_bucket("768x768@1")], vae_scale_factor=8))
    with pytest.raises(EngineCacheError, match=r"profiles=.*\.\.\.") as e:
        _check(_key(), {"profiles": other})
    assert len(str(e.value)) < 400


def test_key_differences_lists_every_field():
    diffs = tb.key_differences(_key(), {"tensorrt_version": "10.5", "cuda_version": "12.4", "precision": "fp32"})
    assert [d[0] for d in diffs] == ["tensorrt_version", "precision"]


def test_read_key_errors(tmp_path):
    with pytest.raises(EngineCacheError, match="is missing.*sdrt build"):
        tb.read_key(tmp_path / "unet.plan.key.json", component="unet")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(EngineCacheError, match="not valid JSON"):
        tb.read_key(bad, component="unet")
    old = tmp_path / "old.json"
    old.write_text(json.dumps({**_key(), "format": 0}))
    with pytest.raises(EngineCacheError, match="format 0"):
        tb.read_key(old, component="unet")
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_key()))
    assert tb.read_key(good, component="unet")["tensorrt_version"] == "10.3.0"


def test_rebuild_command_mentions_custom_engine_dir():
    assert tb.rebuild_command(Path("/a"), Path("/a/trt")) == "sdrt build /a"
    assert tb.rebuild_command(Path("/a"), Path("/e")) == "sdrt build /a --engine-dir /e"


def test_onnx_hash_covers_external_data(tmp_path):
    graph, data = tmp_path / "unet.onnx", tmp_path / "unet.onnx.data"
    graph.write_bytes(b"graph")
    h1 = tb.onnx_sha256([graph])
    data.write_bytes(b"weights")
    h2 = tb.onnx_sha256([graph, data])
    data.write_bytes(b"weightz")
    h3 = tb.onnx_sha256([graph, data])
    assert len({h1, h2, h3}) == 3 and h1.startswith("sha256:")
    # small chunks give the same digest (streamed)
    assert tb.onnx_sha256([graph, data], chunk=3) == h3


def test_write_bytes_atomic_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "unet.plan"
    tb.write_bytes_atomic(p, b"old")
    tb.write_bytes_atomic(p, np.arange(4, dtype=np.uint8))  # any buffer-protocol object
    assert p.read_bytes() == bytes([0, 1, 2, 3])
    assert os.listdir(tmp_path) == ["unet.plan"]


def test_write_bytes_atomic_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "unet.plan"
    tb.write_bytes_atomic(p, b"old")
    with pytest.raises(TypeError):
        tb.write_bytes_atomic(p, object())
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["unet.plan"]


# -- without TensorRT -------------------------------------------------------------------


def _has_tensorrt() -> bool:
    try:
        tb.import_tensorrt()
    except BackendError:
        return False
    return True


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed here")
def test_missing_tensorrt_is_a_backend_error_with_install_hint():
    with pytest.raises(BackendError) as e:
        tb.import_tensorrt()
    assert str(e.value) == (
        "TensorRT is not installed: pip install 'sdrt[tensorrt]' on a machine with an NVIDIA GPU"
    )
