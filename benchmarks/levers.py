"""Where ONNX Runtime's CPU time goes on one UNet call: each session setting alone, against
sdrt's defaults and PyTorch eager, on the artifact's UNet.

Full-size UNet sessions hold several GB each, so configurations are loaded one at a time
(never two large sessions at once) and run in sequence, with the machine-speed probe before
each and the defaults measured first *and* last: the distance between those two is the drift
the comparison cannot remove. ``probe_adjusted_s`` rescales each time to the study's median
probe (time x probe / median probe), assuming the UNet slows as the probe does.

``python -m sdrt.benchmarks.levers ARTIFACT MODEL_DIR --size 256 --json out.json``
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .contenders import OrtLevers, apply_levers
from .harness import probe_gflops, rss_bytes, summarize

#: name -> levers (None: PyTorch eager, the diffusers module)
STUDY: dict[str, Optional[OrtLevers]] = {
    "ort defaults (sdrt)": OrtLevers(),
    "torch eager": None,
    "io_binding": OrtLevers(io_binding=True),
    "enable_mem_pattern=False": OrtLevers(enable_mem_pattern=False),
    "enable_cpu_mem_arena=False": OrtLevers(enable_cpu_mem_arena=False),
    "opt level BASIC": OrtLevers(graph_optimization_level="ORT_ENABLE_BASIC"),
    "opt level EXTENDED": OrtLevers(graph_optimization_level="ORT_ENABLE_EXTENDED"),
    "ORT_PARALLEL, inter_op=2": OrtLevers(execution_mode="ORT_PARALLEL", inter_op_num_threads=2),
    "intra_op spinning off": OrtLevers(intra_op_spinning=False),
    "ort defaults (again)": OrtLevers(),
}


TEXT_LEN = 77  # CLIP's context length in every SD 1.x/2.x text encoder


def _unet_feeds(batch: int, latent: int, text_len: int, cross_dim: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "sample": rng.standard_normal((batch, 4, latent, latent), dtype=np.float32),
        "timestep": np.full((batch,), 500.0, dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((batch, text_len, cross_dim), dtype=np.float32),
    }


def _ort_runner(path: Path, levers: OrtLevers, threads: int, output: str) -> Callable[[dict], np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # OrtBackend's default
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=apply_levers(so, ort, levers), providers=["CPUExecutionProvider"])

    if levers.io_binding:
        def run(feeds: dict) -> np.ndarray:
            b = sess.io_binding()
            for k, v in feeds.items():
                b.bind_cpu_input(k, v)
            b.bind_output(output, "cpu")
            sess.run_with_iobinding(b)
            return b.copy_outputs_to_cpu()[0]
    else:
        def run(feeds: dict) -> np.ndarray:
            return sess.run([output], feeds)[0]
    run.session = sess  # type: ignore[attr-defined]  # keeps it alive with the closure
    return run


def _torch_runner(model_dir: Path, threads: int) -> Callable[[dict], np.ndarray]:
    import torch
    from diffusers import UNet2DConditionModel

    torch.set_num_threads(threads)
    unet = UNet2DConditionModel.from_pretrained(str(model_dir / "unet")).eval()

    def run(feeds: dict) -> np.ndarray:
        with torch.inference_mode():
            out = unet(torch.from_numpy(feeds["sample"]), torch.from_numpy(feeds["timestep"]),
                       encoder_hidden_states=torch.from_numpy(feeds["encoder_hidden_states"])).sample
        return out.numpy()
    return run


def unet_lever_study(
    artifact_dir: str | Path,
    model_dir: str | Path,
    *,
    size: int = 256,
    calls: int = 3,
    threads: int = 2,
    study: Optional[dict[str, Optional[OrtLevers]]] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """Time one UNet call (CFG batch 2) per configuration of ``study``; see the module doc."""
    from sdrt.runtime.manifest import Artifact

    say = progress or (lambda _m: None)
    artifact = Artifact.open(artifact_dir)
    m = artifact.manifest
    spec = m.components["unet"]
    latent = size // m.vae_scale_factor
    cross = int(json.loads((Path(model_dir) / "unet" / "config.json").read_text())["cross_attention_dim"])
    feeds = _unet_feeds(2, latent, TEXT_LEN, cross)
    results: dict[str, Any] = {}
    reference_out: Optional[np.ndarray] = None
    for name, levers in (study or STUDY).items():
        gc.collect()
        rss0 = rss_bytes()
        t = time.perf_counter()
        if levers is None:
            run = _torch_runner(Path(model_dir), threads)
        else:
            run = _ort_runner(artifact.component_path("unet"), levers, threads, spec.output_names[0])
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        out = run(feeds)  # first call: session warm-up, allocations
        first_s = time.perf_counter() - t
        if reference_out is None:
            reference_out = out
        probe = probe_gflops()
        times = []
        for _ in range(calls):
            t = time.perf_counter()
            run(feeds)
            times.append(time.perf_counter() - t)
        probe_after = probe_gflops()
        results[name] = {
            "levers": None if levers is None else levers.label(),
            "load_s": load_s,
            "first_call_s": first_s,
            "call_s": summarize(times),
            "probe_gflops": [probe, probe_after],
            "rss_mb": (rss_bytes() - rss0) / 2**20,
            "max_abs_vs_first": float(np.max(np.abs(out - reference_out))),
        }
        say(f"{name}: {results[name]['call_s']['p50']:.2f} s/call (probe {probe:.0f}/{probe_after:.0f} GFLOP/s)")
        del run, out
    median_probe = float(np.median([p for r in results.values() for p in r["probe_gflops"]]))
    base = results[next(iter(results))]
    for r in results.values():
        p = float(np.mean(r["probe_gflops"]))
        r["probe_adjusted_s"] = r["call_s"]["p50"] * p / median_probe
    base_adj = base["probe_adjusted_s"]
    for r in results.values():
        r["speedup_vs_defaults_adjusted"] = base_adj / r["probe_adjusted_s"]
    return {
        "schema": "sdrt-bench-levers/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "artifact": str(artifact_dir),
        "size": size,
        "latent": latent,
        "unet_batch": 2,
        "calls": calls,
        "threads": threads,
        "median_probe_gflops": median_probe,
        "configs": results,
    }


def render_levers_markdown(study: dict[str, Any]) -> str:
    lines = [
        f"UNet call at {study['size']}² (latent {study['latent']}², batch {study['unet_batch']}), "
        f"{study['threads']} threads, median of {study['calls']} calls after one warm-up call; "
        f"median probe {study['median_probe_gflops']:.0f} GFLOP/s.",
        "",
        "| configuration | s/call p50 (min–max) | probe before/after GFLOP/s | probe-adjusted s | vs first row (adjusted) | load s | first call s | max\\|Δ\\| vs first config |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in study["configs"].items():
        c = r["call_s"]
        lines.append(
            f"| {name} | {c['p50']:.2f} ({c['min']:.2f}–{c['max']:.2f}) | {r['probe_gflops'][0]:.0f}/{r['probe_gflops'][1]:.0f} | "
            f"{r['probe_adjusted_s']:.2f} | {r['speedup_vs_defaults_adjusted']:.2f}× | {r['load_s']:.1f} | "
            f"{r['first_call_s']:.1f} | {r['max_abs_vs_first']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", action="append", choices=list(STUDY), default=None,
                    help="Run only these configurations, in this order (repeatable).")
    ap.add_argument("--json", type=Path, required=True)
    a = ap.parse_args(argv)
    chosen = {name: STUDY[name] for name in a.only} if a.only else None
    study = unet_lever_study(a.artifact, a.model_dir, size=a.size, calls=a.calls, threads=a.threads,
                             study=chosen, progress=lambda m: print(m, flush=True))
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(study, indent=1) + "\n")
    md = render_levers_markdown(study)
    a.json.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
