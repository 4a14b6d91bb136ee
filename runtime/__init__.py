"""sdrt's runtime: runs an exported artifact with numpy + a backend; never imports torch.

    from sdrt.runtime import GenerationRequest, Pipeline

    with Pipeline.load("engines/my-model", backend="ort-cpu") as pipe:   # load once
        result = pipe(GenerationRequest("a red circle on a blue background", seed=1))
        result.images  # uint8 (N, H, W, 3)
"""

from .manifest import Artifact, Manifest
from .pipeline import GenerationResult, Pipeline
from .request import GenerationRequest

__all__ = ["Artifact", "GenerationRequest", "GenerationResult", "Manifest", "Pipeline"]
