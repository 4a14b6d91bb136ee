"""The small text-to-image model shipped inside the package (see training/README.md).

``sdrt generate`` without ``--artifact`` uses it: exported once into the artifact store
(cached by fingerprint), then run by the lean runtime like any other artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from sdrt.errors import ModelDirError

SHIPPED_MODEL_DIR = Path(__file__).parent / "models" / "shapes64"


def shipped_artifact(progress: Optional[Callable[[str], None]] = None) -> Path:
    """Path of the shipped model's artifact, exporting it first if the cache has none."""
    if not (SHIPPED_MODEL_DIR / "model_index.json").is_file():
        raise ModelDirError(
            f"the shipped model is not installed at {SHIPPED_MODEL_DIR}; pass --artifact DIR "
            f"(made with `sdrt export MODEL_DIR --out DIR`)"
        )
    try:
        from sdrt.export.artifact import export_artifact
    except ImportError as e:
        raise ModelDirError(
            f"the shipped model is exported on first use, which needs torch and diffusers ({e}); "
            f"`pip install 'sdrt[export]'`, or pass --artifact DIR"
        ) from e
    return export_artifact(SHIPPED_MODEL_DIR, progress=progress).artifact.path
