"""Render a benchmark report (``run.SCHEMA``) as a markdown table and a per-stage PNG chart."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

from .contenders import STAGES

STAGE_LABELS = {
    "tokenize": "tokenize",
    "text_encoder": "text encoder",
    "unet": "UNet",
    "sampler_overhead": "sampler overhead",
    "vae_decoder": "VAE decode",
    "image_encode": "image encode",
}


def _f(x: Optional[float], fmt: str = "{:.2f}", scale: float = 1.0) -> str:
    return "–" if x is None else fmt.format(x * scale)


def _p50(d: Optional[dict], key: str = "p50") -> Optional[float]:
    return None if not d else d.get(key)


def _spread(d: Optional[dict]) -> str:
    if not d or d.get("p50") is None:
        return "–"
    return f"{d['p50']:.2f}× ({d['min']:.2f}–{d['max']:.2f})"


def _rss(c: dict[str, Any]) -> str:
    own = c.get("first_call_rss_mb")  # absent in reports made before it was added: show load only
    delta = _f(own, "{:+.0f}") if own is not None else "load " + _f(c.get("load_rss_mb"), "{:+.0f}")
    return f"{c['peak_rss_mb']:.0f} ({delta})"


def render_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: settings, probe per round, one table of all contenders."""
    wl = report["workload"]
    cfg = report["config"]
    m = report["machine"]
    probe = report["probe_gflops"]
    lines = [
        f"### {wl['name']} {wl['width']}×{wl['height']}, {wl['steps']} steps {wl['sampler']}, "
        f"guidance {wl['guidance']} (UNet batch {wl['unet_batch']})",
        "",
        f"- Model: {wl['note']}",
        f"- Run {report['created']}: {cfg['rounds']} rounds interleaved (order reversed every other round) "
        f"after {cfg['warmup']} warm-up round(s); {m['threads']} threads for every contender on "
        f"{m['cpu_count']} CPUs; {m['processor']}, {m['platform']}.",
        f"- Machine-speed probe (fp32 {cfg['probe_n']}² matmul, best of 5) per round: "
        + ", ".join(
            f"{r['probe_gflops']:.0f}" + (" (warm-up)" if r["warmup"] else "") for r in report["rounds"]
        )
        + f" GFLOP/s; load average at start {m.get('loadavg_at_start')}.",
        f"- UNet: {wl['unet_gflop_per_call']:.1f} GFLOP per call (counted on the meta device).",
        f"- Export of the sdrt artifact: "
        + ("cached (made earlier)" if wl["export_cached"] else f"{wl['export_s']:.1f} s"),
        "",
        "| contender | build s | first call s | p50 s | p90 s | speed-up vs ref (p50, min–max) | "
        "tokenize ms | text enc ms | UNet/step ms | overhead/step ms (share) | VAE ms | img enc ms | "
        "UNet GFLOP/s (% probe) | peak RSS MB (Δ own) | PSNR dB | latent max\\|Δ\\| |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ref = report.get("reference")
    for name, c in report["contenders"].items():
        if c["status"] != "ok":
            lines.append(f"| {name} | {c['status']}: {c['reason']} |" + " |" * 14)
            continue
        st = c["stages_s"]
        ps = c["per_step_s"]
        sp = c.get("speedup_vs_reference") or {}
        par = c.get("parity") or {}
        is_ref = name == ref
        share = _p50(c["overhead_share"])
        lines.append(
            "| " + " | ".join([
                f"{name}{' (reference)' if is_ref else ''}",
                _f(c["build_s"]),
                _f(c["first_call_s"]),
                _f(c["latency_s"]["p50"], "{:.3f}"),
                _f(c["latency_s"]["p90"], "{:.3f}"),
                "1.00×" if is_ref else _spread(sp.get("total")),
                _f(_p50(st["tokenize"]), "{:.2f}", 1e3),
                _f(_p50(st["text_encoder"]), "{:.1f}", 1e3),
                _f(_p50(ps["unet"]), "{:.1f}", 1e3),
                f"{_f(_p50(ps['overhead']), '{:.2f}', 1e3)} ({_f(share, '{:.2f}', 100)} %)",
                _f(_p50(st["vae_decoder"]), "{:.1f}", 1e3),
                _f(_p50(st["image_encode"]), "{:.2f}", 1e3),
                f"{_f(_p50(c['unet_gflops']), '{:.1f}')} ({_f(_p50(c['unet_probe_share']), '{:.0f}', 100)} %)",
                _rss(c),
                "ref" if is_ref else _f(par.get("image_psnr_db"), "{:.1f}"),
                "ref" if is_ref else _f(par.get("latent_max_abs"), "{:.2e}"),
            ]) + " |"
        )
    lines += [
        "",
        "Times are medians over the measured rounds (p90 beside the total). *Overhead* is each "
        "contender's wall time minus its timed model calls, tokenizer and image encode, per step; "
        "*share* is overhead / (UNet + overhead) per step. *Speed-up* is the reference's time over "
        "the contender's, paired round by round. Parity is against the reference's output from "
        "the same initial latents. *Peak RSS* is the whole process's (all contenders share it) "
        "during this contender's calls; *Δ own* is the RSS this contender added from before its "
        "load to after its first call.",
    ]
    return "\n".join(lines) + "\n"


def write_chart(report: dict[str, Any], path: str | Path) -> Path:
    """Horizontal stacked bars: p50 seconds per stage, one bar per contender that ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, c in report["contenders"].items() if c["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.5 * max(1, len(names))))
    left = [0.0] * len(names)
    for stage in STAGES:
        vals = [report["contenders"][n]["stages_s"][stage]["p50"] or 0.0 for n in names]
        ax.barh(names, vals, left=left, label=STAGE_LABELS[stage])
        left = [a + b for a, b in zip(left, vals)]
    wl = report["workload"]
    ax.set_xlabel("seconds per image (median over rounds)")
    ax.set_title(f"{wl['name']} {wl['width']}², {wl['steps']} steps: time per stage")
    ax.invert_yaxis()
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    """Write ``report`` atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(report, fh, indent=1, allow_nan=False, default=_json_default)
        fh.write("\n")
    os.replace(tmp, path)
    return path


def _json_default(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


#: The report's required keys (docs/benchmarks.md documents each field).
REPORT_KEYS = ("schema", "created", "machine", "config", "workload", "reference", "probe_gflops", "rounds", "contenders")
WORKLOAD_KEYS = ("name", "requested", "note", "width", "height", "steps", "sampler", "unet_batch", "unet_gflop_per_call")
RUN_KEYS = ("contender", "round", "order", "total_s", "stages_s", "unet_calls", "peak_rss_mb")
CONTENDER_KEYS = ("kind", "status", "reason", "build_s", "first_call_s", "load_rss_mb")
MEASURED_KEYS = ("latency_s", "stages_s", "per_step_s", "overhead_share", "unet_gflops", "unet_probe_share", "peak_rss_mb")


def validate_report(report: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first field that breaks the ``sdrt-bench/1`` schema."""
    from .run import SCHEMA

    def need(obj: dict, keys: tuple[str, ...], where: str) -> None:
        missing = [k for k in keys if k not in obj]
        if missing:
            raise ValueError(f"{where} lacks {missing}")

    need(report, REPORT_KEYS, "report")
    if report["schema"] != SCHEMA:
        raise ValueError(f"schema is {report['schema']!r}, expected {SCHEMA!r}")
    need(report["workload"], WORKLOAD_KEYS, "workload")
    for rnd in report["rounds"]:
        need(rnd, ("round", "warmup", "probe_gflops", "runs"), f"round {rnd.get('round')}")
        for run in rnd["runs"]:
            need(run, RUN_KEYS, f"round {rnd['round']} run")
            need(run["stages_s"], STAGES, f"round {rnd['round']} {run['contender']} stages_s")
    for name, c in report["contenders"].items():
        need(c, CONTENDER_KEYS, f"contender {name}")
        if c["status"] not in ("ok", "absent", "failed"):
            raise ValueError(f"contender {name} has status {c['status']!r}")
        if c["status"] == "ok":
            need(c, MEASURED_KEYS, f"contender {name}")
            need(c["stages_s"], STAGES, f"contender {name} stages_s")
        elif not c["reason"]:
            raise ValueError(f"contender {name} is {c['status']} without a reason")
    json.dumps(report, allow_nan=False)  # must be plain JSON


def main(argv: Optional[list[str]] = None) -> None:
    """``python -m sdrt.benchmarks.report REPORT.json``: re-render REPORT.md and REPORT.png."""
    import sys

    for name in argv if argv is not None else sys.argv[1:]:
        path = Path(name)
        report = json.loads(path.read_text())
        validate_report(report)
        path.with_suffix(".md").write_text(render_markdown(report))
        write_chart(report, path.with_suffix(".png"))
        print(path.with_suffix(".md"))


if __name__ == "__main__":
    main()
