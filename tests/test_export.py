"""Export: manifest contents, graph checks, external data, atomic writes, caching."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from sdrt.errors import ExportError
from sdrt.export import artifact as artifact_mod
from sdrt.export import onnx_export
from sdrt.export.artifact import ExportOptions, export_artifact
from sdrt.runtime.backends import create_backend
from sdrt.runtime.manifest import FORMAT_VERSION, Artifact
from sdrt.runtime.specs import resolve_dims


def test_manifest_describes_the_model(tiny_artifacts):
    sd1 = Artifact.open(tiny_artifacts["sd1"]).manifest
    sd2 = Artifact.open(tiny_artifacts["sd2"]).manifest
    assert sd1.format_version == FORMAT_VERSION
    assert (sd1.family, sd1.prediction_type) == ("sd1", "epsilon")
    assert (sd2.family, sd2.prediction_type) == ("sd2", "v_prediction")
    # The tiny VAE downsamples by 2 (not a hard-coded 8); the UNet by 2 once more.
    assert sd1.vae_scale_factor == 2 and sd1.limits.size_multiple == 4 and sd1.default_size == 32
    assert sd1.vae_scaling_factor == 0.5 and sd1.latent_channels == 4
    assert sd1.fingerprint.startswith("sha256:") and sd1.fingerprint != sd2.fingerprint
    assert sd1.scheduler["_class_name"] == "DDIMScheduler"
    assert set(sd1.components) == {"text_encoder", "unet", "vae_decoder"}


def test_onnx_graphs_have_the_spec_io_and_dynamic_axes(tiny_artifacts):
    art = Artifact.open(tiny_artifacts["sd1"])
    for name, spec in art.manifest.components.items():
        path = art.component_path(name)
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        graph_inputs = {i.name: i for i in model.graph.input}
        assert list(graph_inputs) == spec.input_names
        for t in spec.inputs:
            dims = graph_inputs[t.name].type.tensor_type.shape.dim
            got = tuple(d.dim_param or d.dim_value for d in dims)
            assert got == t.shape, (name, t.name, got)
        # Cleaned: no Identity/Constant chains left for the constant folder to find.
        assert not [n for n in model.graph.node if n.op_type == "Constant"]


def test_external_data_goes_to_one_file(tiny_model_dirs, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)
    art = export_artifact(tiny_model_dirs["sd1"], tmp_path / "ext").artifact
    for name, spec in art.manifest.components.items():
        data_files = sorted(p.name for p in art.path.iterdir() if p.name.startswith(spec.file))
        assert data_files == [spec.file, spec.file + ".data"]
        assert (art.path / (spec.file + ".data")).stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in art.path.iterdir() if p.is_file()) == sorted(
        [s.file for s in art.manifest.components.values()]
        + [s.file + ".data" for s in art.manifest.components.values()]
        + ["manifest.json"]
    )
    dims = resolve_dims(batch=1, height=32, width=32, cfg=True, vae_scale_factor=2)
    spec = art.manifest.components["unet"]
    with create_backend("ort-cpu", art) as ort:
        feeds = onnx_export.random_feeds(spec, dims, np.random.default_rng(0), int_high=100)
        assert np.isfinite(ort.run("unet", feeds)["out_sample"]).all()


def test_failed_export_leaves_nothing_behind(tiny_model_dirs, tmp_path, monkeypatch):
    calls = []

    def fail_on_unet(module, spec, feeds, out_path, **kw):
        calls.append(spec.name)
        if spec.name == "unet":
            raise ExportError("simulated crash while exporting unet")
        return real(module, spec, feeds, out_path, **kw)

    real = artifact_mod.export_component
    monkeypatch.setattr(artifact_mod, "export_component", fail_on_unet)
    with pytest.raises(ExportError, match="simulated"):
        export_artifact(tiny_model_dirs["sd1"], tmp_path / "art")
    assert calls == ["text_encoder", "unet"]
    assert list(tmp_path.iterdir()) == []  # no artifact, no temp directory


def test_reexport_with_other_options_replaces_the_artifact(tiny_model_dirs, tmp_path):
    out = tmp_path / "art"
    first = export_artifact(tiny_model_dirs["sd1"], out)
    again = export_artifact(tiny_model_dirs["sd1"], out)
    assert not first.skipped and again.skipped
    bigger = export_artifact(tiny_model_dirs["sd1"], out, options=ExportOptions(max_size=128, max_batch=2))
    assert not bigger.skipped
    m = json.loads((out / "manifest.json").read_text())
    assert m["limits"]["max_size"] == 128 and m["limits"]["max_batch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def test_changed_weights_change_the_fingerprint(tiny_model_dirs, tmp_path):
    import shutil

    from sdrt.export.source import open_source

    src = tmp_path / "m"
    shutil.copytree(tiny_model_dirs["sd1"], src)
    before = open_source(src).fingerprint()
    cfg = json.loads((src / "scheduler" / "scheduler_config.json").read_text())
    cfg["steps_offset"] = 0
    (src / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    assert open_source(src).fingerprint() != before
