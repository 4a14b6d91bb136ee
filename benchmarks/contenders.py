"""The things being raced: sdrt on a backend, the diffusers PyTorch pipeline (the reference),
Optimum's ONNX Runtime diffusion pipeline (the peer).

Every contender answers ``load() -> seconds`` and ``generate(request, init_latents) -> Sample``.
Stage times are measured the same way for all: a timer around each model call (sdrt's own
``backend.run`` timers; a wrapper on ``unet.forward`` / ``text_encoder.forward`` /
``vae.decode`` for diffusers-style pipelines). The sampler overhead is *not* measured by any
contender: the harness derives it as total wall time minus the named stages, identically.
"""

from __future__ import annotations

import abc
import importlib.util
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from sdrt.runtime.request import GenerationRequest

from .harness import StageClock, timed

#: Stages each contender reports (seconds per call); "sampler_overhead" is derived.
MEASURED_STAGES = ("tokenize", "text_encoder", "unet", "vae_decoder", "image_encode")
STAGES = ("tokenize", "text_encoder", "unet", "sampler_overhead", "vae_decoder", "image_encode")


@dataclass
class Sample:
    images_float: np.ndarray  # (B, H, W, 3) in [0, 1]
    latents: np.ndarray  # (B, C, h, w) final latents, before dividing by the VAE scaling factor
    stages: dict[str, float]  # MEASURED_STAGES, seconds
    unet_calls: int


class Unavailable(Exception):
    """A contender that cannot run here; the message is the reason printed in the report."""


class Contender(abc.ABC):
    #: "sdrt", "reference" or "peer"
    kind: str = "sdrt"

    def __init__(self, name: str):
        self.name = name
        self.info: dict[str, Any] = {}

    @abc.abstractmethod
    def load(self) -> float:
        """Build / load everything needed to generate; returns the seconds it took."""

    @abc.abstractmethod
    def generate(self, req: GenerationRequest, init_latents: np.ndarray) -> Sample:
        """One image batch for the resolved ``req`` starting from ``init_latents``."""

    def close(self) -> None:
        """Drop sessions and weights."""


# -- sdrt ------------------------------------------------------------------------------
@dataclass(frozen=True)
class OrtLevers:
    """ONNX Runtime CPU settings tried against sdrt's defaults (see docs/benchmarks.md).

    ``None`` keeps OrtBackend's own choice. ``io_binding`` runs each call through an
    ``IOBinding`` with CPU outputs instead of ``session.run``.
    """

    graph_optimization_level: Optional[str] = None  # ORT_DISABLE_ALL / _BASIC / _EXTENDED / _ALL
    enable_mem_pattern: Optional[bool] = None
    enable_cpu_mem_arena: Optional[bool] = None
    execution_mode: Optional[str] = None  # ORT_SEQUENTIAL / ORT_PARALLEL
    inter_op_num_threads: Optional[int] = None
    intra_op_spinning: Optional[bool] = None  # session config "session.intra_op.allow_spinning"
    io_binding: bool = False

    def label(self) -> str:
        parts = [f"{k}={v}" for k, v in self.__dict__.items() if v is not None and (k != "io_binding" or v)]
        return ",".join(parts) or "defaults"


def apply_levers(so: Any, ort: Any, levers: OrtLevers) -> Any:
    """Set ``levers``' session options on the ``onnxruntime.SessionOptions`` ``so``; returns it."""
    if levers.graph_optimization_level is not None:
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, levers.graph_optimization_level)
    if levers.enable_mem_pattern is not None:
        so.enable_mem_pattern = levers.enable_mem_pattern
    if levers.enable_cpu_mem_arena is not None:
        so.enable_cpu_mem_arena = levers.enable_cpu_mem_arena
    if levers.execution_mode is not None:
        so.execution_mode = getattr(ort.ExecutionMode, levers.execution_mode)
    if levers.inter_op_num_threads is not None:
        so.inter_op_num_threads = levers.inter_op_num_threads
    if levers.intra_op_spinning is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if levers.intra_op_spinning else "0")
    return so


def _tuned_ort_backend(artifact: Any, threads: Optional[int], levers: OrtLevers) -> Any:
    """An OrtBackend whose session options / run path apply ``levers``.

    A subclass in the benchmark, so sdrt's backend stays untouched until a lever earns its
    place there (docs/benchmarks.md lists the measured effect and the change it implies).
    """
    from sdrt.runtime.backends.onnxruntime import OrtBackend, run_with_iobinding

    class TunedOrtBackend(OrtBackend):
        def _session_options(self, ort: Any) -> Any:
            return apply_levers(super()._session_options(ort), ort, levers)

        def _run_impl(self, spec: Any, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            if not levers.io_binding:
                return super()._run_impl(spec, feeds)
            outs = run_with_iobinding(self._sessions[spec.name], spec, feeds, "cpu")
            return dict(zip(spec.output_names, outs))

    return TunedOrtBackend(artifact, device="cpu", threads=threads)


class SdrtContender(Contender):
    """sdrt's ``Pipeline`` on ``backend`` ("ort-cpu", "torch", ...), optionally with ORT levers."""

    kind = "sdrt"

    def __init__(
        self,
        artifact_dir: str | Path,
        backend: str = "ort-cpu",
        *,
        threads: Optional[int] = None,
        model_dir: Optional[str | Path] = None,
        levers: Optional[OrtLevers] = None,
        name: Optional[str] = None,
    ):
        label = f"sdrt-{backend}" + (f"[{levers.label()}]" if levers else "")
        super().__init__(name or label)
        self.artifact_dir = Path(artifact_dir)
        self.backend = backend
        self.threads = threads
        self.model_dir = model_dir
        self.levers = levers
        self.pipe: Any = None

    def load(self) -> float:
        from sdrt.runtime import Pipeline
        from sdrt.runtime.backends import create_backend
        from sdrt.runtime.manifest import Artifact

        def build() -> Any:
            artifact = Artifact.open(self.artifact_dir)
            if self.levers is not None:
                if self.backend != "ort-cpu":
                    raise ValueError("ORT levers apply to the ort-cpu backend only")
                backend = _tuned_ort_backend(artifact, self.threads, self.levers)
            else:
                opts: dict[str, Any] = {"threads": self.threads}
                if self.backend == "torch" and self.model_dir is not None:
                    opts["model_dir"] = self.model_dir
                backend = create_backend(self.backend, artifact, **opts)
            return Pipeline(artifact, backend.load())

        self.pipe, seconds = timed(build)
        self.info = {"backend": self.pipe.backend.describe(), "levers": self.levers.label() if self.levers else None}
        return seconds

    def generate(self, req: GenerationRequest, init_latents: np.ndarray) -> Sample:
        res = self.pipe(replace(req, init_latents=init_latents))
        t = res.timings
        stages = {
            "tokenize": t["tokenize"],
            "text_encoder": t["text_encoder"],
            "unet": t["unet"],
            "vae_decoder": t["vae_decoder"],
            "image_encode": t["to_uint8"],
        }
        return Sample(res.images_float, res.latents, stages, req.steps)

    def close(self) -> None:
        if self.pipe is not None:
            self.pipe.close()
            self.pipe = None


# -- diffusers-style pipelines (reference and Optimum peer) ----------------------------
class _TokenizerProxy:
    """Times ``tokenizer(...)`` and delegates everything else to the real tokenizer."""

    def __init__(self, tokenizer: Any, clock: StageClock):
        self._tok = tokenizer
        self._call = clock.wrap("tokenize", tokenizer.__call__)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)


@dataclass
class _Instrumented:
    clock: StageClock = field(default_factory=StageClock)
    decode_input: Optional[Any] = None


def instrument_diffusers_pipeline(pipe: Any) -> _Instrumented:
    """Wrap a diffusers ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` (or a subclass such as Optimum's) with
    stage timers, and capture the VAE decoder's input (the final latents / scaling factor)."""
    state = _Instrumented()
    clock = state.clock
    # SDXL pipelines also have tokenizer_2 / text_encoder_2: both count into the same stages
    # (sdrt times its two encoders into "text_encoder" too).
    for attr in ("tokenizer", "tokenizer_2"):
        if getattr(pipe, attr, None) is not None:
            object.__setattr__(pipe, attr, _TokenizerProxy(getattr(pipe, attr), clock))
    for attr in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, attr, None)
        if encoder is not None:
            encoder.forward = clock.wrap("text_encoder", encoder.forward)
    pipe.unet.forward = clock.wrap("unet", pipe.unet.forward)
    decode = clock.wrap("vae_decoder", pipe.vae.decode)

    def capturing_decode(latents: Any, *args: Any, **kwargs: Any) -> Any:
        state.decode_input = latents
        return decode(latents, *args, **kwargs)

    pipe.vae.decode = capturing_decode
    pipe.image_processor.postprocess = clock.wrap("image_encode", pipe.image_processor.postprocess)
    return state


class DiffusersContender(Contender):
    """diffusers' ``StableDiffusionPipeline`` in eager PyTorch fp32, sdrt's sampler's scheduler."""

    kind = "reference"

    def __init__(self, model_dir: str | Path, sampler: str, *, threads: Optional[int] = None, name: str = "diffusers"):
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.sampler = sampler
        self.threads = threads
        self.pipe: Any = None
        self.state: Optional[_Instrumented] = None

    def _build(self) -> Any:
        from sdrt.export.reference import diffusers_pipeline

        return diffusers_pipeline(self.model_dir, self.sampler)

    def load(self) -> float:
        import diffusers
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        self.pipe, seconds = timed(self._build)
        self.state = instrument_diffusers_pipeline(self.pipe)
        self.info = {
            "diffusers": diffusers.__version__,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "scheduler": type(self.pipe.scheduler).__name__,
        }
        return seconds

    def generate(self, req: GenerationRequest, init_latents: np.ndarray) -> Sample:
        from sdrt.export.reference import diffusers_generate

        assert self.state is not None
        self.state.clock.reset()
        images = diffusers_generate(self.pipe, req, init_latents)
        # diffusers decodes latents / scaling_factor; sdrt reports latents before that division.
        decoded = self.state.decode_input
        if hasattr(decoded, "detach"):  # a torch tensor (diffusers); Optimum may pass numpy
            decoded = decoded.detach().cpu().numpy()
        latents = np.asarray(decoded, dtype=np.float32) * float(self.pipe.vae.config.scaling_factor)
        sec = self.state.clock.seconds
        stages = {s: sec.get(s, 0.0) for s in MEASURED_STAGES}
        return Sample(images, latents, stages, self.state.clock.calls.get("unet", 0))

    def close(self) -> None:
        self.pipe = None
        self.state = None


OPTIMUM_MISSING = (
    "optimum-onnx is not importable in this environment; its only release (0.1.0) pins "
    "transformers<4.58 and optimum~=2.1, and installing it would downgrade the venv's "
    "transformers 5 (with --no-deps it fails at import on transformers 5: CLIPFeatureExtractor, "
    "transformers.modeling_utils.get_parameter_dtype, transformers.utils.generic._CAN_RECORD_REGISTRY)"
)


def optimum_available() -> Optional[str]:
    """None when Optimum's ORT diffusion pipeline imports, else the reason it does not."""
    if importlib.util.find_spec("optimum") is None or importlib.util.find_spec("optimum.onnxruntime") is None:
        return OPTIMUM_MISSING
    try:
        from optimum.onnxruntime import ORTStableDiffusionPipeline  # noqa: F401
    except Exception as e:  # an incompatible install raises ImportError / AttributeError / ...
        return f"{OPTIMUM_MISSING}; import error here: {type(e).__name__}: {e}"
    return None


class OptimumContender(DiffusersContender):
    """Optimum's ``ORTStableDiffusionPipeline`` exported from the same diffusers directory.

    It subclasses diffusers' pipeline, so the same stage wrappers time it (its ``unet.forward``
    wraps ``session.run``). Build time includes Optimum's own ONNX export.
    """

    kind = "peer"

    def __init__(self, model_dir: str | Path, sampler: str, *, threads: Optional[int] = None,
                 export_dir: Optional[str | Path] = None, name: str = "optimum-ort"):
        super().__init__(model_dir, sampler, threads=threads, name=name)
        self.export_dir = Path(export_dir) if export_dir else None

    def _build(self) -> Any:
        reason = optimum_available()
        if reason:
            raise Unavailable(reason)
        import diffusers
        import onnxruntime as ort
        from optimum.onnxruntime import ORTStableDiffusionPipeline

        from sdrt.export.reference import SCHEDULERS

        so = ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = self.threads
        if self.export_dir is not None and (self.export_dir / "model_index.json").is_file():
            pipe = ORTStableDiffusionPipeline.from_pretrained(self.export_dir, session_options=so)
        else:
            pipe = ORTStableDiffusionPipeline.from_pretrained(self.model_dir, export=True, session_options=so)
            if self.export_dir is not None:
                pipe.save_pretrained(self.export_dir)
        cls_name, extra = SCHEDULERS[self.sampler]
        pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **extra)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def load(self) -> float:
        seconds = super().load()
        import optimum

        self.info["optimum"] = getattr(optimum, "__version__", "?")
        return seconds
