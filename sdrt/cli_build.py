"""``sdrt build`` (TensorRT engines) and the ``sdrt verify --trt-ops`` report.

The command maps options to a :class:`~sdrt.export.trt_build.BuildConfig` and calls
:func:`~sdrt.export.trt_build.build_engines`: everything it does, the Python API does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import click

from sdrt.errors import ConfigError
from sdrt.export.trt_build import (
    BuildConfig,
    ShapeBucket,
    parse_size,
    build_engines,
    default_dynamic_bucket,
    parse_bucket,
)
from sdrt.runtime.manifest import Artifact


def config_from_options(
    artifact: Artifact,
    *,
    fp16: bool = True,
    vae_fp32: bool = False,
    static: Optional[str] = None,
    batch: int = 1,
    dynamic: bool = False,
    min_size: Optional[str] = None,
    opt_size: Optional[str] = None,
    max_size: Optional[str] = None,
    min_batch: Optional[int] = None,
    opt_batch: Optional[int] = None,
    max_batch: Optional[int] = None,
    buckets: Sequence[str] = (),
    opt_level: Optional[int] = None,
    timing_cache: bool = True,
    refit: bool = False,
    engine_dir: Optional[Path] = None,
    components: Sequence[str] = (),
    force: bool = False,
) -> BuildConfig:
    """The :class:`BuildConfig` that ``sdrt build``'s options describe (sizes are WIDTHxHEIGHT)."""
    if static and dynamic:
        raise ConfigError("--static and --dynamic exclude each other; pick one (or use --bucket for several)")
    ranges = (min_size, opt_size, max_size, min_batch, opt_batch, max_batch)
    if not dynamic and any(v is not None for v in ranges):
        raise ConfigError("--min/--opt/--max-size and -batch need --dynamic")
    chosen: list[ShapeBucket] = []
    if static:
        w, h = parse_size(static)
        chosen.append(ShapeBucket.static(batch=batch, height=h, width=w))
    elif dynamic or not buckets:
        d = default_dynamic_bucket(artifact.manifest.limits, artifact.manifest.default_size)
        sizes = [parse_size(s) if s else (d.width[i], d.height[i]) for i, s in enumerate((min_size, opt_size, max_size))]
        bs = [b if b is not None else d.batch[i] for i, b in enumerate((min_batch, opt_batch, max_batch))]
        chosen.append(
            ShapeBucket(
                batch=(bs[0], bs[1], bs[2]),
                height=(sizes[0][1], sizes[1][1], sizes[2][1]),
                width=(sizes[0][0], sizes[1][0], sizes[2][0]),
            )
        )
    chosen += [parse_bucket(b) for b in buckets]
    return BuildConfig(
        buckets=tuple(chosen),
        fp16=fp16,
        vae_fp32=vae_fp32,
        optimization_level=opt_level,
        refit=refit,
        timing_cache=timing_cache,
        engine_dir=engine_dir,
        components=tuple(components) or None,
        force=force,
    )


@click.command("build")
@click.argument("artifact_dir", type=click.Path(path_type=Path))
@click.option("--fp16/--fp32", default=True, show_default=True, help="Engine precision (TensorRT BuilderFlag.FP16).")
@click.option("--vae-fp32", is_flag=True, help="Keep the VAE decoder in fp32 even with --fp16.")
@click.option("--static", metavar="WIDTHxHEIGHT", default=None, help="One static profile of this size (with --batch).")
@click.option("--batch", type=int, default=1, show_default=True, help="Images per request for --static.")
@click.option("--dynamic", is_flag=True, help="One dynamic profile (the default when no --static/--bucket).")
@click.option("--min-size", metavar="WxH", default=None, help="--dynamic: smallest size (default: half the native size).")
@click.option("--opt-size", metavar="WxH", default=None, help="--dynamic: size to tune for (default: native).")
@click.option("--max-size", metavar="WxH", default=None, help="--dynamic: largest size (default: the artifact's max).")
@click.option("--min-batch", type=int, default=None, help="--dynamic: fewest images (default 1).")
@click.option("--opt-batch", type=int, default=None, help="--dynamic: images to tune for (default 1).")
@click.option("--max-batch", type=int, default=None, help="--dynamic: most images (default min(4, artifact max)).")
@click.option("--bucket", "buckets", multiple=True, metavar="SPEC",
              help="Extra profile: WxH@B (static) or MINWxMINH-OPTWxOPTH-MAXWxMAXH@MINB-OPTB-MAXB. Repeatable.")
@click.option("--opt-level", type=click.IntRange(0, 5), default=None, help="Builder optimization level (TensorRT default 3).")
@click.option("--timing-cache/--no-timing-cache", default=True, show_default=True,
              help="Load and extend <engine dir>/timing.cache.")
@click.option("--refit", is_flag=True, help="Build refittable engines (weights can be swapped later).")
@click.option("--engine-dir", type=click.Path(path_type=Path), default=None, help="Default: ARTIFACT_DIR/trt.")
@click.option("--component", "components", multiple=True, help="Only these components (repeatable).")
@click.option("--force", is_flag=True, help="Rebuild even when the stored cache key matches.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def build_cmd(artifact_dir: Path, quiet: bool, **options: object) -> None:
    """Build TensorRT engines (one per component) for an exported artifact."""
    artifact = Artifact.open(artifact_dir)
    config = config_from_options(artifact, **options)  # type: ignore[arg-type]
    say = None if quiet else (lambda msg: click.echo(msg, err=True))
    result = build_engines(artifact, config, progress=say)
    for e in result.engines:
        click.echo(str(e.path))


def trt_ops_report(artifact: Path | str | Artifact, *, as_json: bool = False) -> bool:
    """Print the TensorRT operator check of ``artifact`` (text or JSON); True when nothing is unsupported."""
    from sdrt.export.trt_ops import check_trt_ops

    report = check_trt_ops(artifact)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        for line in report.lines():
            click.echo(line)
    return report.ok
