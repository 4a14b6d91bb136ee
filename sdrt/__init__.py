"""sdrt: a lean inference runtime for Stable-Diffusion-family text-to-image models.

Import layout: ``sdrt.export`` (torch side: ONNX export, TensorRT build), ``sdrt.runtime``
(numpy side: tokenizer, samplers, pipeline, backends), ``sdrt.benchmarks`` and ``sdrt.cli``.
"""

__version__ = "0.1.0"
