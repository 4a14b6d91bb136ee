"""Per-component latency of the TensorRT backend (CUDA graphs on / off) vs ONNX Runtime.

Needs an NVIDIA GPU with TensorRT (``pip install 'sdrt[tensorrt]'``); it refuses to run
elsewhere rather than print numbers it did not measure. Usage::

    sdrt build ARTIFACT --static 512x512 --batch 1      # or pass --build here
    python -m sdrt.benchmarks.trt_latency ARTIFACT --size 512x512 --batch 1 \
        --backends trt,trt-no-graphs,ort-cuda --out latency.md

Each cell is the median (and p90) wall time of ``backend.run(component, feeds)`` over
``--iters`` calls after ``--warmup`` calls: host -> device copy, execution and device -> host
copy included, exactly what the pipeline pays per call. Inputs are random, with the shapes of
one request of ``--batch`` images at ``--size`` with classifier-free guidance.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sdrt.errors import SdrtError
from sdrt.export.trt_build import BuildConfig, ShapeBucket, build_engines, parse_size, probe_environment
from sdrt.runtime.backends import create_backend
from sdrt.runtime.manifest import Artifact
from sdrt.runtime.specs import ComponentSpec, resolve_dims

#: benchmark label -> (registry name, backend options)
BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "trt": ("trt", {"cuda_graphs": True}),
    "trt-no-graphs": ("trt", {"cuda_graphs": False}),
    "ort-cuda": ("ort-cuda", {}),
    "ort-trt": ("ort-trt", {}),
    "ort-cpu": ("ort-cpu", {}),
}


def random_feeds(spec: ComponentSpec, dims: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for t in spec.inputs:
        shape = t.resolve(dims)
        if t.np_dtype.kind == "i":
            feeds[t.name] = rng.integers(0, 49408, size=shape).astype(t.np_dtype)
        elif t.name == "timestep":
            feeds[t.name] = rng.uniform(0, 999, size=shape).astype(t.np_dtype)
        else:
            feeds[t.name] = rng.standard_normal(shape).astype(t.np_dtype)
    return feeds


def time_calls(fn: Callable[[], object], *, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def measure(
    artifact: Artifact, labels: list[str], *, width: int, height: int, batch: int, warmup: int, iters: int,
    engine_dir: Path | None,
) -> list[dict[str, Any]]:
    dims = resolve_dims(batch=batch, height=height, width=width, cfg=True,
                        vae_scale_factor=artifact.manifest.vae_scale_factor)
    rng = np.random.default_rng(0)
    feeds = {n: random_feeds(s, dims, rng) for n, s in artifact.manifest.components.items()}
    rows = []
    for label in labels:
        name, options = BACKENDS[label]
        if name == "trt" and engine_dir is not None:
            options = {**options, "engine_dir": engine_dir}
        with create_backend(name, artifact, **options) as backend:
            for component, f in feeds.items():
                times = np.array(time_calls(lambda: backend.run(component, f), warmup=warmup, iters=iters))
                rows.append({
                    "component": component, "backend": label,
                    "median_ms": float(np.median(times) * 1e3), "p90_ms": float(np.percentile(times, 90) * 1e3),
                    "iters": iters,
                })
    return rows


def markdown(rows: list[dict[str, Any]], env: dict[str, str], *, width: int, height: int, batch: int) -> str:
    lines = [
        f"TensorRT {env['tensorrt_version']}, {env['gpu_name']} (sm {env['compute_capability']}), "
        f"CUDA {env['cuda_version']}; {width}x{height}, {batch} image(s), guidance on",
        "",
        "| component | backend | median ms | p90 ms | vs first backend |",
        "|---|---|---:|---:|---:|",
    ]
    first: dict[str, float] = {}
    for r in rows:
        base = first.setdefault(r["component"], r["median_ms"])
        lines.append(
            f"| {r['component']} | {r['backend']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
            f"{base / r['median_ms']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("artifact", type=Path)
    p.add_argument("--size", default=None, help="WIDTHxHEIGHT (default: the model's native size)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--backends", default="trt,trt-no-graphs,ort-cuda", help=f"comma list of {list(BACKENDS)}")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--engine-dir", type=Path, default=None)
    p.add_argument("--build", action="store_true", help="build a static engine for --size/--batch first")
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here (and .json beside it)")
    args = p.parse_args(argv)
    try:
        artifact = Artifact.open(args.artifact)
        width, height = parse_size(args.size) if args.size else (artifact.manifest.default_size,) * 2
        labels = [b.strip() for b in args.backends.split(",") if b.strip()]
        unknown = [b for b in labels if b not in BACKENDS]
        if unknown:
            p.error(f"unknown backends {unknown}; choose from {list(BACKENDS)}")
        env = probe_environment()  # no GPU / TensorRT: a BackendError, never made-up numbers
        if args.build:
            config = BuildConfig(
                buckets=(ShapeBucket.static(batch=args.batch, height=height, width=width),),
                engine_dir=args.engine_dir,
            )
            build_engines(artifact, config, progress=lambda m: print(m, file=sys.stderr))
        rows = measure(artifact, labels, width=width, height=height, batch=args.batch,
                       warmup=args.warmup, iters=args.iters, engine_dir=args.engine_dir)
    except SdrtError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    table = markdown(rows, env, width=width, height=height, batch=args.batch)
    print(table)
    if args.out is not None:
        args.out.write_text(table, encoding="utf-8")
        args.out.with_suffix(".json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
