"""``run_benchmark(config) -> report dict``: load every contender in one process, warm them up,
run them interleaved round by round with a machine-speed probe per round, and aggregate.

The report's schema (``SCHEMA``) is documented in docs/benchmarks.md.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from sdrt.runtime.request import GenerationRequest

from .contenders import (
    MEASURED_STAGES,
    STAGES,
    Contender,
    DiffusersContender,
    OptimumContender,
    OrtLevers,
    Sample,
    SdrtContender,
    Unavailable,
)
from .harness import PeakRss, interleaved_schedule, paired_ratios, probe_gflops, rss_bytes, summarize, timed
from .workloads import Workload, prepare_workload, unet_gflop_per_call

SCHEMA = "sdrt-bench/1"
REFERENCE = "diffusers"
MB = 2**20


@dataclass(frozen=True)
class BenchConfig:
    workload: str = "shipped"
    size: Optional[int] = None  # image side in pixels; None: the model's native size
    steps: int = 8
    rounds: int = 3
    warmup: int = 1  # unrecorded rounds after each contender's first call
    backends: tuple[str, ...] = ("ort-cpu",)
    reference: bool = True
    optimum: bool = True
    levers: tuple[OrtLevers, ...] = ()  # extra sdrt-ort-cpu contenders with tuned settings
    threads: Optional[int] = None  # None: os.cpu_count(); the same for every contender
    sampler: str = "euler"
    guidance: float = 7.5
    prompt: str = "a red circle above a blue square"
    negative_prompt: str = ""
    seed: int = 0
    root: Optional[Path] = None  # where workload models and artifacts are cached
    probe_n: int = 1024

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["levers"] = [lv.label() for lv in self.levers]
        d["root"] = str(self.root) if self.root else None
        return d


@dataclass
class _Entry:
    contender: Contender
    status: str = "ok"  # ok | absent | failed
    reason: Optional[str] = None
    build_s: Optional[float] = None
    first_call_s: Optional[float] = None
    load_rss_mb: Optional[float] = None  # RSS growth over load() alone (mmap'd weights not yet touched)
    first_call_rss_mb: Optional[float] = None  # RSS growth from before load() to after the first call
    runs: list[dict[str, Any]] = field(default_factory=list)
    last: Optional[Sample] = None


def _contenders(cfg: BenchConfig, wl: Workload, threads: int) -> list[Contender]:
    out: list[Contender] = []
    if cfg.reference:
        out.append(DiffusersContender(wl.model_dir, cfg.sampler, threads=threads))
    for backend in cfg.backends:
        out.append(SdrtContender(wl.artifact_dir, backend, threads=threads, model_dir=wl.model_dir))
    for lv in cfg.levers:
        out.append(SdrtContender(wl.artifact_dir, "ort-cpu", threads=threads, levers=lv))
    if cfg.optimum:
        export_dir = Path(wl.artifact_dir).parent / f"{Path(wl.model_dir).name}-optimum"
        out.append(OptimumContender(wl.model_dir, cfg.sampler, threads=threads, export_dir=export_dir))
    return out


def _run_record(entry: _Entry, sample: Sample, total: float, peak: int, rnd: int, order: int) -> dict[str, Any]:
    stages = {s: float(sample.stages[s]) for s in MEASURED_STAGES}
    stages["sampler_overhead"] = max(0.0, total - sum(stages.values()))
    return {
        "contender": entry.contender.name,
        "round": rnd,
        "order": order,
        "total_s": total,
        "stages_s": {s: stages[s] for s in STAGES},
        "unet_calls": sample.unet_calls,
        "peak_rss_mb": peak / MB,
    }


def run_benchmark(
    cfg: BenchConfig,
    *,
    progress: Optional[Callable[[str], None]] = None,
    contenders: Optional[list[Contender]] = None,
    workload: Optional[Workload] = None,
) -> dict[str, Any]:
    """Run ``cfg`` and return the report (``SCHEMA``). ``contenders`` / ``workload`` override
    the ones ``cfg`` names (tests use this to race stand-ins)."""
    say = progress or (lambda _m: None)
    threads = cfg.threads or os.cpu_count() or 1
    wl = workload or prepare_workload(cfg.workload, cfg.root, say)
    size = cfg.size or wl.native_size
    req = GenerationRequest(
        cfg.prompt, negative_prompt=cfg.negative_prompt, steps=cfg.steps, guidance=cfg.guidance,
        sampler=cfg.sampler, seed=cfg.seed, width=size, height=size,
    )
    from sdrt.runtime.manifest import Artifact

    manifest = Artifact.open(wl.artifact_dir).manifest
    req = req.resolved(manifest)
    f = manifest.vae_scale_factor
    lat_shape = (1, manifest.latent_channels, size // f, size // f)
    init = np.random.default_rng(cfg.seed).standard_normal(lat_shape, dtype=np.float32)
    from sdrt.runtime.conditioning import classifier_free_guidance

    # LCM / guidance-embedding UNets take the guidance scale as an input: one batch, no CFG pair
    unet_batch = 2 if classifier_free_guidance(req, manifest) else 1
    gflop_per_call = unet_gflop_per_call(wl.model_dir, unet_batch, size // f, size // f)

    entries = [_Entry(c) for c in (contenders if contenders is not None else _contenders(cfg, wl, threads))]
    names = [e.contender.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"contender names must be unique, got {names}")
    for e in entries:
        say(f"loading {e.contender.name}")
        rss0 = rss_bytes()
        try:
            e.build_s = e.contender.load()
            e.load_rss_mb = (rss_bytes() - rss0) / MB
            with PeakRss() as peak:
                e.last, e.first_call_s = timed(lambda: e.contender.generate(req, init))
            e.first_call_rss_mb = (rss_bytes() - rss0) / MB
            say(f"{e.contender.name}: load {e.build_s:.2f} s, first call {e.first_call_s:.2f} s, peak RSS {peak.peak / MB:.0f} MB")
        except Unavailable as exc:
            e.status, e.reason = "absent", str(exc)
            say(f"{e.contender.name}: absent ({exc})")
        except Exception as exc:  # a contender that breaks is reported, not fatal to the others
            e.status, e.reason = "failed", f"{type(exc).__name__}: {exc}"
            say(f"{e.contender.name}: FAILED ({e.reason})")
            e.contender.close()

    live = {e.contender.name: e for e in entries if e.status == "ok"}
    rounds: list[dict[str, Any]] = []
    current: Optional[dict[str, Any]] = None
    order = 0
    for rnd, name in interleaved_schedule(list(live), cfg.rounds, cfg.warmup):
        if current is None or current["round"] != rnd:
            current = {"round": rnd, "warmup": rnd < 0, "probe_gflops": probe_gflops(cfg.probe_n),
                       "loadavg": _loadavg(), "started": time.time(), "runs": []}
            rounds.append(current)
            order = 0
            say(f"round {rnd}{' (warm-up)' if rnd < 0 else ''}: probe {current['probe_gflops']:.0f} GFLOP/s")
        e = live[name]
        with PeakRss() as peak:
            sample, total = timed(lambda: e.contender.generate(req, init))
        rec = _run_record(e, sample, total, peak.peak, rnd, order)
        order += 1
        current["runs"].append(rec)
        if rnd >= 0:
            e.runs.append({**rec, "probe_gflops": current["probe_gflops"]})
            e.last = sample
        say(f"  {name}: {total:.3f} s (unet {sample.stages['unet']:.3f} s)")

    for e in entries:
        e.contender.close()

    report = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(threads),
        "config": cfg.to_json(),
        "workload": {
            "name": wl.name,
            "requested": wl.requested,
            "note": wl.note,
            "model_dir": str(wl.model_dir),
            "artifact": str(wl.artifact_dir),
            "export_s": wl.export_s,
            "export_cached": wl.export_skipped,
            "width": size,
            "height": size,
            "steps": req.steps,
            "sampler": req.sampler,
            "guidance": req.guidance,
            "cfg": req.cfg,
            "unet_batch": unet_batch,
            "unet_gflop_per_call": gflop_per_call,
        },
        "reference": REFERENCE if REFERENCE in live else None,
        "probe_gflops": summarize(r["probe_gflops"] for r in rounds if not r["warmup"]),
        "rounds": rounds,
        "contenders": {},
    }
    ref = live.get(REFERENCE)
    for e in entries:
        report["contenders"][e.contender.name] = _aggregate(e, ref, req.steps, gflop_per_call)
    return report


def _aggregate(e: _Entry, ref: Optional[_Entry], steps: int, gflop_per_call: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": e.contender.kind,
        "status": e.status,
        "reason": e.reason,
        "info": e.contender.info,
        "build_s": e.build_s,
        "first_call_s": e.first_call_s,
        "load_rss_mb": e.load_rss_mb,
        "first_call_rss_mb": e.first_call_rss_mb,
    }
    if e.status != "ok" or not e.runs:
        return out
    runs = e.runs
    out["latency_s"] = summarize(r["total_s"] for r in runs)
    out["stages_s"] = {s: summarize(r["stages_s"][s] for r in runs) for s in STAGES}
    calls = [max(1, r["unet_calls"]) for r in runs]
    out["per_step_s"] = {
        "unet": summarize(r["stages_s"]["unet"] / c for r, c in zip(runs, calls)),
        "overhead": summarize(r["stages_s"]["sampler_overhead"] / steps for r in runs),
    }
    out["overhead_share"] = summarize(
        (r["stages_s"]["sampler_overhead"] / steps) / (r["stages_s"]["unet"] / c + r["stages_s"]["sampler_overhead"] / steps)
        for r, c in zip(runs, calls)
    )
    gflops = [gflop_per_call * c / r["stages_s"]["unet"] for r, c in zip(runs, calls) if r["stages_s"]["unet"] > 0]
    out["unet_gflops"] = summarize(gflops)
    out["unet_probe_share"] = summarize(
        g / r["probe_gflops"] for g, r in zip(gflops, runs) if r["probe_gflops"] > 0
    )
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    if ref is not None and ref.runs and len(ref.runs) == len(runs):
        out["speedup_vs_reference"] = {
            "total": paired_ratios([r["total_s"] for r in ref.runs], [r["total_s"] for r in runs]),
            "unet": paired_ratios([r["stages_s"]["unet"] for r in ref.runs], [r["stages_s"]["unet"] for r in runs]),
        }
        out["parity"] = _parity(ref.last, e.last) if e is not ref else None
    return out


def _parity(ref: Optional[Sample], got: Optional[Sample]) -> Optional[dict[str, float]]:
    from sdrt.export.reference import psnr

    if ref is None or got is None:
        return None
    db = psnr(got.images_float, ref.images_float)
    return {
        "image_psnr_db": db if np.isfinite(db) else None,  # JSON has no infinity
        "images_identical": not np.isfinite(db),
        "latent_max_abs": float(np.max(np.abs(np.asarray(got.latents, np.float64) - np.asarray(ref.latents, np.float64)))),
    }


def _machine(threads: int) -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for pkg in ("numpy", "onnxruntime", "torch", "diffusers", "transformers", "optimum", "optimum-onnx"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "versions": versions,
        "loadavg_at_start": _loadavg(),
    }


def _loadavg() -> Optional[list[float]]:
    """1/5/15-minute load averages: other jobs on the machine show up here and in the probe."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
