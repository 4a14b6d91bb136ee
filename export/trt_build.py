"""TensorRT engines for an artifact: shape buckets -> optimization profiles -> engines + cache keys.

Layout (default ``<artifact>/trt``)::

    unet.plan             serialized engine, written atomically (temp file + rename)
    unet.plan.key.json    its cache key: what the engine was built from and for
    timing.cache          TensorRT tactic timing cache, reused and extended by every build

Two halves:

* pure Python, importable and unit-tested without TensorRT: :class:`ShapeBucket` (one
  optimization profile), :func:`component_profiles` (min/opt/max shape of every input, derived
  from the :class:`~sdrt.runtime.specs.ComponentSpec`), :class:`BuildConfig`,
  :class:`EngineKey` and :func:`check_engine_key`;
* the build itself, :func:`build_engines`, through Polygraphy's loaders
  (``NetworkFromOnnxPath`` -> ``CreateConfig`` -> ``engine_bytes_from_network``). TensorRT,
  Polygraphy and cuda-python are imported lazily, only there.

Host memory: the ONNX parser reads the graph *from its path* (``OnnxParser.parse_from_file``,
which Polygraphy's ``NetworkFromOnnxPath`` calls), so TensorRT loads external weights itself and
this process never holds an ``onnx.ModelProto`` copy of a multi-GB UNet next to TensorRT's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from sdrt.errors import BackendError, ConfigError, EngineCacheError, ShapeError
from sdrt.runtime.manifest import Artifact, ShapeLimits, write_json_atomic
from sdrt.runtime.specs import ComponentSpec, resolve_dims

Progress = Callable[[str], None]
Range = tuple[int, int, int]  # (min, opt, max)
ShapeRange = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]

ENGINE_DIR = "trt"
ENGINE_SUFFIX = ".plan"
KEY_SUFFIX = ".key.json"
TIMING_CACHE = "timing.cache"
KEY_FORMAT = 1
#: TensorRT 10.1 added ``ICudaEngine.device_memory_size_v2`` and
#: ``IExecutionContext.set_device_memory``, which the backend's shared activation memory uses.
MIN_TENSORRT = (10, 1)
#: Fields that make up the cache key; any difference means "rebuild".
KEY_FIELDS = (
    "onnx_sha256",
    "precision",
    "profiles",
    "tensorrt_version",
    "compute_capability",
    "cuda_version",
    "build_options",
)
#: Fields the runtime can check against the machine it runs on (see TrtBackend).
ENVIRONMENT_FIELDS = ("tensorrt_version", "compute_capability", "cuda_version")
INSTALL_HINT = "pip install 'sdrt[tensorrt]' on a machine with an NVIDIA GPU"


# ---------------------------------------------------------------------------
# Shape buckets and optimization profiles (pure Python)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeBucket:
    """One TensorRT optimization profile, as request sizes: (min, opt, max) of batch, height, width.

    ``batch`` counts images; the UNet and text encoder see ``cfg_batch``, which is ``batch``
    without classifier-free guidance and ``2 * batch`` with it, so their profile spans
    ``[min_batch, 2 * max_batch]`` with ``opt = 2 * opt_batch`` (guidance on is the common case).
    TensorRT tunes kernels for ``opt`` and accepts anything in ``[min, max]``
    (TensorRT developer guide, "Working with Dynamic Shapes / Optimization Profiles").
    """

    batch: Range
    height: Range
    width: Range

    @classmethod
    def static(cls, *, batch: int, height: int, width: int) -> "ShapeBucket":
        return cls((batch,) * 3, (height,) * 3, (width,) * 3)

    @property
    def is_static(self) -> bool:
        return all(r[0] == r[2] for r in (self.batch, self.height, self.width))

    def check(self, limits: ShapeLimits) -> None:
        """Raise :class:`ShapeError` unless every size in the bucket is one the artifact runs."""
        for label, r in (("batch", self.batch), ("height", self.height), ("width", self.width)):
            if not r[0] <= r[1] <= r[2]:
                raise ShapeError(f"bucket {self}: {label} needs min <= opt <= max, got {r}")
        try:
            for h, w, b in zip(self.height, self.width, self.batch):
                limits.check(width=w, height=h, batch=b)
        except ShapeError as e:
            raise ShapeError(f"bucket ({self.describe()}): {e}") from None

    def dims(self, which: int, *, vae_scale_factor: int) -> dict[str, int]:
        """Symbolic dim values at ``which`` = 0 (min), 1 (opt) or 2 (max)."""
        return resolve_dims(
            batch=self.batch[which],
            height=self.height[which],
            width=self.width[which],
            cfg=which != 0,  # min: guidance off (cfg_batch = batch); opt/max: guidance on
            vae_scale_factor=vae_scale_factor,
        )

    def describe(self) -> str:
        def r(v: Range) -> str:
            return str(v[0]) if v[0] == v[2] else f"{v[0]}..{v[2]} (opt {v[1]})"

        return f"batch {r(self.batch)}, width {r(self.width)}, height {r(self.height)}"


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise ConfigError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 512x512")
    return int(m.group(1)), int(m.group(2))


def parse_bucket(text: str) -> ShapeBucket:
    """Parse a bucket from the CLI.

    ``"WxH@B"`` is static; ``"MINWxMINH-OPTWxOPTH-MAXWxMAXH@MINB-OPTB-MAXB"`` is dynamic
    (``@B`` may be omitted: batch 1).
    """
    sizes, _, batches = text.partition("@")
    parts = [parse_size(p) for p in sizes.split("-")]
    bs = [int(b) for b in batches.split("-")] if batches else [1]
    if len(parts) not in (1, 3) or len(bs) not in (1, 3) or not all(b > 0 for b in bs):
        raise ConfigError(
            f"bucket {text!r}: use WxH@B (static) or MINWxMINH-OPTWxOPTH-MAXWxMAXH@MINB-OPTB-MAXB"
        )
    if len(parts) == 1:
        parts *= 3
    if len(bs) == 1:
        bs *= 3
    return ShapeBucket(
        batch=(bs[0], bs[1], bs[2]),
        height=(parts[0][1], parts[1][1], parts[2][1]),
        width=(parts[0][0], parts[1][0], parts[2][0]),
    )


def default_dynamic_bucket(limits: ShapeLimits, default_size: int, *, max_batch: int = 4) -> ShapeBucket:
    """Half to the largest size the artifact allows, tuned for its native size; batch 1..4."""
    m = limits.size_multiple
    lo = max(limits.min_size, (default_size // 2) // m * m)
    hi = limits.max_size
    b = min(max_batch, limits.max_batch)
    return ShapeBucket(batch=(1, 1, b), height=(lo, default_size, hi), width=(lo, default_size, hi))


def component_profiles(
    spec: ComponentSpec, buckets: Sequence[ShapeBucket], *, vae_scale_factor: int
) -> list[dict[str, ShapeRange]]:
    """One profile per bucket: ``{input name: (min shape, opt shape, max shape)}``.

    Shapes come from the spec's symbolic dims, so the same spec that drove ONNX export
    drives the engine's profiles.
    """
    profiles = []
    for bucket in buckets:
        dims = [bucket.dims(i, vae_scale_factor=vae_scale_factor) for i in range(3)]
        profiles.append(
            {t.name: (t.resolve(dims[0]), t.resolve(dims[1]), t.resolve(dims[2])) for t in spec.inputs}
        )
    return profiles


def select_profile(profiles: Sequence[Mapping[str, ShapeRange]], shapes: Mapping[str, Sequence[int]]) -> int:
    """Index of the first profile whose [min, max] holds every input shape, or -1.

    Buckets are tried in the order they were given to the build, so list the most specific first.
    """
    for i, profile in enumerate(profiles):
        if all(
            len(shapes[name]) == len(lo)
            and all(a <= s <= b for a, s, b in zip(lo, shapes[name], hi))
            for name, (lo, _opt, hi) in profile.items()
        ):
            return i
    return -1


def profiles_to_json(profiles: Sequence[Mapping[str, ShapeRange]]) -> list[dict[str, list[list[int]]]]:
    return [{n: [list(s) for s in r] for n, r in p.items()} for p in profiles]


# ---------------------------------------------------------------------------
# Build configuration (pure Python)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildConfig:
    """Everything ``sdrt build`` can be told. ``buckets=()`` means one default dynamic bucket."""

    buckets: tuple[ShapeBucket, ...] = ()
    fp16: bool = True
    vae_fp32: bool = False  # keep the VAE decoder in fp32 (fp16 VAEs can overflow to NaN)
    optimization_level: int | None = None  # builder optimization level 0..5 (TensorRT default: 3)
    refit: bool = False
    timing_cache: bool = True
    engine_dir: Path | None = None  # default: <artifact>/trt
    components: tuple[str, ...] | None = None  # default: every component of the artifact
    force: bool = False  # rebuild even when the stored key matches

    def __post_init__(self) -> None:
        if self.optimization_level is not None and not 0 <= self.optimization_level <= 5:
            raise ConfigError(
                f"builder optimization level {self.optimization_level} is outside 0..5 "
                f"(TensorRT IBuilderConfig.builder_optimization_level); use 3 (default) or 5 (slowest build)"
            )

    def precision(self, component: str) -> str:
        if self.fp16 and not (self.vae_fp32 and component == "vae_decoder"):
            return "fp16"
        return "fp32"

    def resolved_buckets(self, artifact: Artifact) -> tuple[ShapeBucket, ...]:
        m = artifact.manifest
        buckets = self.buckets or (default_dynamic_bucket(m.limits, m.default_size),)
        for b in buckets:
            b.check(m.limits)
        return buckets

    def build_options(self) -> dict[str, Any]:
        """Builder settings that change the engine but not its validity on a machine."""
        return {"optimization_level": self.optimization_level, "refit": self.refit}


def engine_dir(artifact: Artifact, override: str | os.PathLike[str] | None = None) -> Path:
    return Path(override) if override is not None else artifact.path / ENGINE_DIR


def engine_path(directory: Path, component: str) -> Path:
    return directory / f"{component}{ENGINE_SUFFIX}"


def key_path(directory: Path, component: str) -> Path:
    return directory / f"{component}{ENGINE_SUFFIX}{KEY_SUFFIX}"


# ---------------------------------------------------------------------------
# Cache keys (pure Python)
# ---------------------------------------------------------------------------


def onnx_files(artifact: Artifact, component: str) -> list[Path]:
    """The component's ONNX graph plus its external-data file ``<file>.data`` when present."""
    graph = artifact.component_path(component)
    data = graph.with_name(graph.name + ".data")
    return [graph, data] if data.is_file() else [graph]


def onnx_sha256(paths: Iterable[Path], *, chunk: int = 1 << 20) -> str:
    """sha256 over the files' bytes, streamed (a multi-GB UNet is never read into memory at once)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return "sha256:" + h.hexdigest()


@dataclass(frozen=True)
class EngineKey:
    """What an engine was built from and for. Equal keys => the engine can be reused."""

    onnx_sha256: str
    precision: str  # "fp16" | "fp32"
    profiles: list[dict[str, list[list[int]]]]  # profiles_to_json(...)
    tensorrt_version: str
    compute_capability: str  # e.g. "8.9"
    cuda_version: str  # CUDA runtime version, e.g. "12.4"
    build_options: dict[str, Any] = field(default_factory=dict)
    gpu_name: str = ""  # informational, not compared
    cuda_driver: str = ""  # informational, not compared
    format: int = KEY_FORMAT

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            **{f: getattr(self, f) for f in KEY_FIELDS},
            "gpu_name": self.gpu_name,
            "cuda_driver": self.cuda_driver,
        }


def read_key(path: Path, *, component: str) -> dict[str, Any]:
    """The stored key beside an engine; :class:`EngineCacheError` if missing or unreadable."""
    rebuild = "rebuild the engines with `sdrt build ARTIFACT_DIR`"
    if not path.is_file():
        raise EngineCacheError(
            f"{component}: engine cache key {path} is missing, so the engine cannot be validated; {rebuild}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EngineCacheError(f"{component}: engine cache key {path} is not valid JSON ({e}); {rebuild}") from e
    if not isinstance(data, dict) or data.get("format") != KEY_FORMAT:
        raise EngineCacheError(
            f"{component}: engine cache key {path} has format {data.get('format') if isinstance(data, dict) else None!r}, "
            f"expected {KEY_FORMAT}; {rebuild}"
        )
    return data


def key_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(field, stored value, current value)`` for every field of ``current`` that differs."""
    return [(f, stored.get(f), v) for f, v in current.items() if stored.get(f) != v]


def _short(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) <= 80 else s[:77] + "..."


def rebuild_command(artifact_dir: Path, engines: Path) -> str:
    cmd = f"sdrt build {artifact_dir}"
    return cmd if engines == artifact_dir / ENGINE_DIR else f"{cmd} --engine-dir {engines}"


def check_engine_key(
    stored: Mapping[str, Any], current: Mapping[str, Any], *, component: str, engine: Path, rebuild: str
) -> None:
    """Raise :class:`EngineCacheError` naming the first differing field (in ``KEY_FIELDS`` order).

    ``rebuild`` is the command that fixes it, e.g. ``rebuild_command(artifact.path, engine_dir)``.
    """
    diffs = {f: (s, c) for f, s, c in key_differences(stored, current)}
    for f in (*KEY_FIELDS, *diffs):
        if f in diffs:
            s, c = diffs[f]
            raise EngineCacheError(
                f"{component}: engine {engine} was built with {f}={_short(s)} but this machine/artifact "
                f"has {f}={_short(c)}; rebuild it with `{rebuild}`"
            )


# ---------------------------------------------------------------------------
# TensorRT / CUDA environment (lazy imports)
# ---------------------------------------------------------------------------


def import_tensorrt() -> Any:
    """The real ``tensorrt`` module (>= 10.1), or :class:`BackendError` saying how to install it.

    ``pip install tensorrt-stubs`` leaves a stub-only ``tensorrt/`` folder that imports as an
    empty namespace package, so a successful import alone proves nothing: check for ``Builder``.
    """
    try:
        import tensorrt as trt
    except ImportError:
        trt = None
    if trt is None or not hasattr(trt, "Builder"):
        raise BackendError(f"TensorRT is not installed: {INSTALL_HINT}")
    version = tuple(int(p) for p in re.findall(r"\d+", trt.__version__)[:2])
    if version < MIN_TENSORRT:
        raise BackendError(
            f"TensorRT {trt.__version__} is too old: sdrt needs TensorRT >= "
            f"{'.'.join(map(str, MIN_TENSORRT))}; pip install -U 'sdrt[tensorrt]'"
        )
    return trt


def import_cudart() -> Any:
    """cuda-python's runtime API module (``cuda.bindings.runtime``, cuda-python >= 12.6.1)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as e:
        raise BackendError(
            f"cuda-python is not installed (needed for device memory and CUDA graphs): {INSTALL_HINT}"
        ) from e
    return cudart


def cuda_check(result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(cudaError_t, *values)`` tuple; raise :class:`BackendError` on error.

    cuda-python returns errors instead of raising (cuda.bindings docs, "Overview").
    """
    cudart = import_cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        _, name = cudart.cudaGetErrorName(err)
        raise BackendError(
            f"CUDA call {what} failed with {name.decode() if isinstance(name, bytes) else name}; "
            f"check that an NVIDIA GPU and a driver that supports this CUDA version are present "
            f"(`nvidia-smi`)"
        )
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def probe_environment() -> dict[str, str]:
    """TensorRT version, GPU compute capability and CUDA version of this machine (current device).

    ``cuda_version`` is the CUDA runtime version cuda-python reports (part of the cache key);
    ``gpu_name`` and ``cuda_driver`` (the newest CUDA the driver supports) are informational.
    """
    trt = import_tensorrt()
    cudart = import_cudart()
    device = cuda_check(cudart.cudaGetDevice(), "cudaGetDevice")
    prop = cuda_check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    runtime_version = cuda_check(cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
    driver_version = cuda_check(cudart.cudaDriverGetVersion(), "cudaDriverGetVersion")
    name = prop.name.decode(errors="replace").rstrip("\0") if isinstance(prop.name, bytes) else str(prop.name)
    return {
        "tensorrt_version": str(trt.__version__),
        "compute_capability": f"{prop.major}.{prop.minor}",
        # CUDA encodes versions as 1000 * major + 10 * minor (cudaRuntimeGetVersion docs)
        "cuda_version": f"{runtime_version // 1000}.{runtime_version % 1000 // 10}",
        "gpu_name": name,
        "cuda_driver": f"{driver_version // 1000}.{driver_version % 1000 // 10}",
    }


# ---------------------------------------------------------------------------
# Build (Polygraphy)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltEngine:
    component: str
    path: Path
    key: EngineKey
    skipped: bool
    seconds: float


@dataclass(frozen=True)
class BuildResult:
    engine_dir: Path
    engines: tuple[BuiltEngine, ...]


def write_bytes_atomic(path: Path, data: Any) -> None:
    """Write a bytes-like object (``bytes``, TensorRT ``IHostMemory``) via a temp file + rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(memoryview(data))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _polygraphy_build(
    onnx_path: Path,
    profiles: Sequence[Mapping[str, ShapeRange]],
    *,
    fp16: bool,
    config: BuildConfig,
    timing_cache: Path | None,
) -> Any:
    """Serialized engine (``IHostMemory``) for one ONNX file, built through Polygraphy's loaders."""
    from polygraphy.backend.trt import CreateConfig, NetworkFromOnnxPath, Profile, engine_bytes_from_network
    from polygraphy.exception import PolygraphyException

    trt_profiles = []
    for p in profiles:
        profile = Profile()
        for name, (lo, opt, hi) in p.items():
            profile.add(name, min=lo, opt=opt, max=hi)
        trt_profiles.append(profile)
    create_config = CreateConfig(
        fp16=fp16,
        profiles=trt_profiles,
        builder_optimization_level=config.optimization_level,
        refittable=config.refit,
        # A missing cache file is fine: Polygraphy warns and starts an empty cache.
        load_timing_cache=str(timing_cache) if timing_cache is not None and timing_cache.is_file() else None,
    )
    try:
        return engine_bytes_from_network(
            NetworkFromOnnxPath(str(onnx_path)),
            config=create_config,
            # Polygraphy merges the new timings into the existing cache under a file lock.
            save_timing_cache=str(timing_cache) if timing_cache is not None else None,
        )
    except PolygraphyException as e:
        raise BackendError(
            f"TensorRT could not build an engine from {onnx_path}: {str(e).strip().splitlines()[-1][:300]}; "
            f"run `sdrt verify --artifact {onnx_path.parent} --trt-ops` to check the graph's operators"
        ) from e


def build_engines(
    artifact: Artifact | str | os.PathLike[str],
    config: BuildConfig = BuildConfig(),
    *,
    progress: Progress | None = None,
) -> BuildResult:
    """Build (or reuse, when the stored key matches) one engine per component of ``artifact``."""
    say = progress or (lambda _msg: None)
    if not isinstance(artifact, Artifact):
        artifact = Artifact.open(artifact)
    names = config.components or tuple(artifact.manifest.components)
    unknown = [n for n in names if n not in artifact.manifest.components]
    if unknown:
        raise ConfigError(f"unknown components {unknown}; this artifact has {list(artifact.manifest.components)}")
    buckets = config.resolved_buckets(artifact)
    env = probe_environment()  # imports TensorRT: a BackendError with the install hint without it
    out = engine_dir(artifact, config.engine_dir)
    out.mkdir(parents=True, exist_ok=True)
    timing_cache = out / TIMING_CACHE if config.timing_cache else None
    say(
        f"TensorRT {env['tensorrt_version']} on {env['gpu_name']} (sm {env['compute_capability']}, "
        f"CUDA {env['cuda_version']}); buckets: " + "; ".join(b.describe() for b in buckets)
    )
    built = []
    for name in names:
        t0 = time.perf_counter()
        spec = artifact.manifest.components[name]
        profiles = component_profiles(spec, buckets, vae_scale_factor=artifact.manifest.vae_scale_factor)
        key = EngineKey(
            onnx_sha256=onnx_sha256(onnx_files(artifact, name)),
            precision=config.precision(name),
            profiles=profiles_to_json(profiles),
            tensorrt_version=env["tensorrt_version"],
            compute_capability=env["compute_capability"],
            cuda_version=env["cuda_version"],
            build_options=config.build_options(),
            gpu_name=env["gpu_name"],
            cuda_driver=env["cuda_driver"],
        )
        plan, kpath = engine_path(out, name), key_path(out, name)
        if not config.force and plan.is_file() and kpath.is_file():
            try:
                stored = read_key(kpath, component=name)
            except EngineCacheError:
                stored = {}
            wanted = {f: v for f, v in key.to_json().items() if f in KEY_FIELDS}
            if not key_differences(stored, wanted):
                say(f"{name}: {plan} is up to date: build skipped")
                built.append(BuiltEngine(name, plan, key, skipped=True, seconds=time.perf_counter() - t0))
                continue
        say(f"{name}: building {key.precision} engine with {len(profiles)} profile(s) ...")
        serialized = _polygraphy_build(
            artifact.component_path(name), profiles, fp16=key.precision == "fp16", config=config,
            timing_cache=timing_cache,
        )
        # Old key first: a crash between the two renames leaves an engine without a key
        # (rejected at load), never a new engine under an old, wrong key.
        kpath.unlink(missing_ok=True)
        write_bytes_atomic(plan, serialized)
        del serialized
        write_json_atomic(kpath, key.to_json())
        seconds = time.perf_counter() - t0
        say(f"{name}: wrote {plan} ({plan.stat().st_size / 2**20:.1f} MiB) in {seconds:.1f} s")
        built.append(BuiltEngine(name, plan, key, skipped=False, seconds=seconds))
    return BuildResult(engine_dir=out, engines=tuple(built))
