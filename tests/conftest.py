"""Shared fixtures: tiny SD 1.x / 2.x pipelines (random weights, fixed seeds) and their
exported artifacts, built once per test session."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

HAVE_EXPORT = all(importlib.util.find_spec(m) for m in ("torch", "diffusers", "transformers", "onnx"))
needs_export = pytest.mark.skipif(not HAVE_EXPORT, reason="needs the export extras (torch, diffusers)")


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    if not HAVE_EXPORT:
        pytest.skip("needs the export extras (torch, diffusers, transformers, onnx)")
    from sdrt.export.tiny import make_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-models")
    return {fam: make_tiny_pipeline(root / f"tiny-{fam}", fam, seed=0) for fam in ("sd1", "sd2")}


@pytest.fixture(scope="session")
def tiny_artifacts(tiny_model_dirs, tmp_path_factory) -> dict[str, Path]:
    from sdrt.export.artifact import export_artifact

    root = tmp_path_factory.mktemp("artifacts")
    return {
        fam: export_artifact(model_dir, root / f"art-{fam}").artifact.path
        for fam, model_dir in tiny_model_dirs.items()
    }


@pytest.fixture(params=["sd1", "sd2"])
def family(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def sd1_pipeline(tiny_artifacts):
    from sdrt.runtime import Pipeline

    with Pipeline.load(tiny_artifacts["sd1"], backend="ort-cpu") as pipe:
        yield pipe


XL_FIXTURES = ("sdxl", "sdxl-turbo", "sd1-lcm")


@pytest.fixture(scope="session")
def tiny_xl_model_dirs(tmp_path_factory) -> dict[str, Path]:
    """Tiny SDXL, SDXL-Turbo-style and LCM pipelines (random weights from configs)."""
    if not HAVE_EXPORT:
        pytest.skip("needs the export extras (torch, diffusers, transformers, onnx)")
    from sdrt.export.tiny import make_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-xl-models")
    return {name: make_tiny_pipeline(root / f"tiny-{name}", name, seed=0) for name in XL_FIXTURES}


@pytest.fixture(scope="session")
def tiny_xl_artifacts(tiny_xl_model_dirs, tmp_path_factory) -> dict[str, Path]:
    from sdrt.export.artifact import export_artifact

    root = tmp_path_factory.mktemp("xl-artifacts")
    return {
        name: export_artifact(model_dir, root / f"art-{name}").artifact.path
        for name, model_dir in tiny_xl_model_dirs.items()
    }
