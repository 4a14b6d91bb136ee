"""``sdrt bench``: maps options to a ``BenchConfig`` and calls ``run_benchmark``; writes the
JSON report, a markdown table and a per-stage PNG chart."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from sdrt.errors import ConfigError

#: ``--quick`` settings: a short run that still has rounds to pair.
QUICK = {"steps": 4, "rounds": 3, "warmup": 1}
#: ``--levers`` presets: ONNX Runtime CPU settings raced as extra sdrt contenders.
LEVER_PRESETS = ("io_binding", "no_mem_pattern", "no_arena", "basic_opt", "extended_opt", "parallel", "no_spin")


def lever_preset(name: str):  # noqa: ANN201
    from sdrt.benchmarks.contenders import OrtLevers

    presets = {
        "io_binding": OrtLevers(io_binding=True),
        "no_mem_pattern": OrtLevers(enable_mem_pattern=False),
        "no_arena": OrtLevers(enable_cpu_mem_arena=False),
        "basic_opt": OrtLevers(graph_optimization_level="ORT_ENABLE_BASIC"),
        "extended_opt": OrtLevers(graph_optimization_level="ORT_ENABLE_EXTENDED"),
        "parallel": OrtLevers(execution_mode="ORT_PARALLEL", inter_op_num_threads=2),
        "no_spin": OrtLevers(intra_op_spinning=False),
    }
    if name not in presets:
        raise ConfigError(f"unknown lever {name!r}; choose from {list(presets)}")
    return presets[name]


@click.command("bench")
@click.option("--workload", type=click.Choice(["shipped", "tiny", "tiny-sdxl", "sd15", "sdxl"]), default="shipped",
              show_default=True, help="shipped small model (tiny fixture if absent), tiny SD1 fixture, tiny SDXL "
              "fixture, or SD1.5 architecture with random weights (full-size sdxl is refused).")
@click.option("--size", type=int, default=None, help="Image side in pixels (default: the model's native size).")
@click.option("--steps", type=int, default=None, help="Sampling steps (default 8; 4 with --quick).")
@click.option("--rounds", type=int, default=None, help="Measured interleaved rounds (default 5; 3 with --quick).")
@click.option("--warmup", type=int, default=None, help="Unrecorded rounds after each first call (default 1).")
@click.option("--backends", default="ort-cpu", show_default=True, help="Comma-separated sdrt backends to race.")
@click.option("--no-reference", is_flag=True, help="Skip the diffusers PyTorch reference (no ratios, no parity).")
@click.option("--no-optimum", is_flag=True, help="Skip Optimum's ONNX Runtime pipeline.")
@click.option("--lever", "levers", multiple=True, type=click.Choice(LEVER_PRESETS),
              help="Also race sdrt-ort-cpu with this ONNX Runtime setting (repeatable).")
@click.option("--threads", type=int, default=None, help="Threads for every contender (default: all CPUs).")
@click.option("--sampler", default="euler", show_default=True, help="A deterministic sampler: euler, ddim, dpmpp_2m.")
@click.option("--quick", is_flag=True, help="Short run: 4 steps, 1 warm-up + 3 rounds.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the JSON report here.")
@click.option("--markdown", "md_path", type=click.Path(path_type=Path), default=None,
              help="Write the markdown table here (default: next to --json, else stdout only).")
@click.option("--chart", "chart_path", type=click.Path(path_type=Path), default=None,
              help="Write the per-stage PNG chart here (default: next to --json).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Where workload models/artifacts are built once (default: engines/bench).")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def bench(workload: str, size: Optional[int], steps: Optional[int], rounds: Optional[int], warmup: Optional[int],
           backends: str, no_reference: bool, no_optimum: bool, levers: tuple[str, ...], threads: Optional[int],
           sampler: str, quick: bool, json_path: Optional[Path], md_path: Optional[Path],
           chart_path: Optional[Path], cache_dir: Optional[Path], quiet: bool) -> None:
    """Benchmark sdrt against the diffusers reference (and Optimum), per stage, with parity."""
    from sdrt.benchmarks.report import render_markdown, write_chart, write_json
    from sdrt.benchmarks.run import BenchConfig, run_benchmark

    base = QUICK if quick else {"steps": 8, "rounds": 5, "warmup": 1}
    cfg = BenchConfig(
        workload=workload,
        size=size,
        steps=steps if steps is not None else base["steps"],
        rounds=rounds if rounds is not None else base["rounds"],
        warmup=warmup if warmup is not None else base["warmup"],
        backends=tuple(b.strip() for b in backends.split(",") if b.strip()),
        reference=not no_reference,
        optimum=not no_optimum,
        levers=tuple(lever_preset(lv) for lv in levers),
        threads=threads,
        sampler=sampler,
        root=cache_dir,
    )
    say = None if quiet else (lambda msg: click.echo(msg, err=True))
    report = run_benchmark(cfg, progress=say)
    md = render_markdown(report)
    if json_path is not None:
        write_json(report, json_path)
        md_path = md_path or json_path.with_suffix(".md")
        chart_path = chart_path or json_path.with_suffix(".png")
    if md_path is not None:
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(md)
    if chart_path is not None:
        write_chart(report, chart_path)
    click.echo(md)


if __name__ == "__main__":  # `python -m sdrt.cli_bench ...` until `sdrt bench` is registered
    bench()
