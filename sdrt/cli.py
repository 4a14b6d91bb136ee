"""The ``sdrt`` command line: a thin layer that maps options to config objects and calls the
library. It can do nothing the Python API cannot."""

from __future__ import annotations

import importlib
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import click

from sdrt import __version__
from sdrt.errors import SdrtError, ToleranceError

SAMPLER_NAMES = ("euler", "euler_a", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "lcm")


def _size(text: Optional[str], option: str) -> Optional[tuple[int, int]]:
    """'WIDTHxHEIGHT' -> (height, width), the order diffusers' SDXL conditioning uses."""
    if text is None:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected WIDTHxHEIGHT, got {text!r}", param_hint=option) from None
    return (h, w)


def _crop(text: str) -> tuple[int, int]:
    try:
        top, left = (int(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected TOP,LEFT, got {text!r}", param_hint="--crop-top-left") from None
    return (top, left)


# Commands whose modules import heavier packages load only when invoked.
LAZY_COMMANDS = {
    "build": ("sdrt.cli_build", "build_cmd"),
    "bench": ("sdrt.cli_bench", "bench"),
}


class _Group(click.Group):
    """Turns sdrt's typed errors into one line on stderr and their exit code, and loads the
    commands in LAZY_COMMANDS on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        if name in LAZY_COMMANDS and name not in self.commands:
            module, attr = LAZY_COMMANDS[name]
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SdrtError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    click.echo(f"warning: {message}", err=True)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="sdrt")
def cli() -> None:
    """sdrt: export Stable Diffusion checkpoints to ONNX / TensorRT and generate images fast."""
    warnings.showwarning = _show_warning


def _progress(quiet: bool):  # noqa: ANN202
    return None if quiet else (lambda msg: click.echo(msg, err=True))


@cli.command("export")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Artifact directory (default: engines/<model>-<fingerprint>).")
@click.option("--max-size", type=int, default=None, help="Largest width/height the artifact accepts (default 2x native).")
@click.option("--max-batch", type=int, default=8, show_default=True, help="Most images per request.")
@click.option("--opset", type=int, default=17, show_default=True)
@click.option("--allow-pickle", is_flag=True, help="Load .bin/.ckpt pickle weights (runs code from the file!).")
@click.option("--fp16-unet", is_flag=True,
              help="Store the UNet's weights in fp16 (halves export memory; I/O stays fp32).")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def export_cmd(model_dir: Path, out_dir: Optional[Path], max_size: Optional[int], max_batch: int,
               opset: int, allow_pickle: bool, fp16_unet: bool, quiet: bool) -> None:
    """Export a diffusers Stable Diffusion (1.x, 2.x, XL, LCM) directory to an ONNX artifact."""
    from sdrt.export.artifact import ExportOptions, export_artifact

    options = ExportOptions(opset=opset, max_size=max_size, max_batch=max_batch, allow_pickle=allow_pickle,
                            fp16=("unet",) if fp16_unet else ())
    result = export_artifact(model_dir, out_dir, options=options, progress=_progress(quiet))
    click.echo(str(result.artifact.path))


@cli.command("generate")
@click.argument("prompt")
@click.option("--artifact", type=click.Path(path_type=Path), default=None,
              help="Artifact directory (default: the shipped shapes64 model).")
@click.option("--backend", default="ort-cpu", show_default=True,
              help="ort-cpu, ort-cuda, ort-trt, trt or torch.")
@click.option("--steps", type=int, default=25, show_default=True)
@click.option("--guidance", type=float, default=7.5, show_default=True, help="Classifier-free guidance scale; <= 1 turns it off.")
@click.option("--seed", type=int, default=None, help="Same seed, same image (default: random, printed).")
@click.option("--sampler", default="dpmpp_2m", show_default=True, help=", ".join(SAMPLER_NAMES))
@click.option("--width", type=int, default=None, help="Default: the model's native size.")
@click.option("--height", type=int, default=None)
@click.option("--negative", default="", help="Negative prompt.")
@click.option("--num-images", type=int, default=1, show_default=True)
@click.option("--init-latents", type=click.Path(path_type=Path), default=None,
              help="Unit-variance noise .npy of shape (N, C, H/f, W/f), as diffusers' latents=.")
@click.option("--output", type=click.Path(path_type=Path), default=Path("sdrt.png"), show_default=True,
              help="PNG path; several images get -0, -1, ... suffixes.")
@click.option("--original-size", metavar="WxH", default=None, help="SDXL micro-conditioning (default: the image size).")
@click.option("--crop-top-left", metavar="TOP,LEFT", default="0,0", show_default=True, help="SDXL micro-conditioning.")
@click.option("--target-size", metavar="WxH", default=None, help="SDXL micro-conditioning (default: the image size).")
@click.option("--threads", type=int, default=None, help="CPU threads per model call (ort-*, torch).")
@click.option("--engine-dir", type=click.Path(path_type=Path), default=None,
              help="trt: engines built by `sdrt build` (default ARTIFACT/trt).")
@click.option("--cuda-graphs/--no-cuda-graphs", default=True, show_default=True,
              help="trt: capture and replay one CUDA graph per shape.")
@click.option("--quiet", is_flag=True)
def generate_cmd(prompt: str, artifact: Optional[Path], backend: str, steps: int, guidance: float,
                 seed: Optional[int], sampler: str, width: Optional[int], height: Optional[int],
                 negative: str, num_images: int, init_latents: Optional[Path], output: Path,
                 original_size: Optional[str], crop_top_left: str, target_size: Optional[str],
                 threads: Optional[int], engine_dir: Optional[Path], cuda_graphs: bool, quiet: bool) -> None:
    """Generate images for PROMPT and write PNGs (prints their paths)."""
    from sdrt.runtime.generate import GenerateConfig, generate_to_files, load_init_latents
    from sdrt.runtime.request import GenerationRequest

    request = GenerationRequest(
        prompt=prompt, negative_prompt=negative, steps=steps, guidance=guidance, sampler=sampler,
        seed=seed, width=width, height=height, num_images=num_images,
        init_latents=load_init_latents(init_latents) if init_latents is not None else None,
        original_size=_size(original_size, "--original-size"), crop_top_left=_crop(crop_top_left),
        target_size=_size(target_size, "--target-size"),
    )
    if artifact is None:
        from sdrt.shipped import shipped_artifact

        artifact = shipped_artifact(progress=_progress(quiet))
    options: dict[str, Any] = {"threads": threads} if threads else {}
    if backend == "trt":
        options.update(cuda_graphs=cuda_graphs, **({"engine_dir": engine_dir} if engine_dir else {}))
    elif engine_dir is not None or not cuda_graphs:
        raise click.UsageError("--engine-dir and --no-cuda-graphs apply to --backend trt only")
    config = GenerateConfig(request=request, artifact=artifact, output=output, backend=backend,
                            backend_options=options)
    result, paths = generate_to_files(config)
    if not quiet:
        t = result.timings
        click.echo(
            f"seed {result.request.seed}, {result.request.width}x{result.request.height}, "
            f"{t['total']:.2f} s (text {t['text_encoder']:.2f}, unet {t['unet']:.2f}, "
            f"vae {t['vae_decoder']:.2f})",
            err=True,
        )
    for p in paths:
        click.echo(str(p))


@cli.command("verify")
@click.option("--artifact", type=click.Path(path_type=Path), required=True)
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="The diffusers directory the artifact was exported from.")
@click.option("--atol", type=float, default=1e-3, show_default=True, help="Max-abs tolerance per component.")
@click.option("--min-psnr", type=float, default=40.0, show_default=True, help="Pipeline image PSNR floor (dB).")
@click.option("--sampler", default="ddim", show_default=True, help="A deterministic sampler.")
@click.option("--steps", type=int, default=10, show_default=True)
@click.option("--trt-ops", is_flag=True, help="Check every ONNX op against TensorRT's ONNX parser support list instead.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON report.")
def verify_cmd(artifact: Path, model_dir: Optional[Path], atol: float, min_psnr: float, sampler: str,
               steps: int, trt_ops: bool, as_json: bool) -> None:
    """Compare an artifact with its source model (exit 3 when a tolerance is exceeded)."""
    if trt_ops:
        from sdrt.cli_build import trt_ops_report

        ok = trt_ops_report(artifact, as_json=as_json)
        if not ok:
            raise ToleranceError("some ONNX ops are not supported by TensorRT's ONNX parser (listed above)")
        return
    if model_dir is None:
        raise click.UsageError("--model MODEL_DIR is required (unless --trt-ops)")
    from sdrt.export.verify import verify_artifact

    report = verify_artifact(artifact, model_dir, atol=atol, min_psnr=min_psnr, sampler=sampler, steps=steps,
                             progress=None if as_json else (lambda m: click.echo(m)))
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    if not report.passed:
        raise ToleranceError(
            f"verification failed: component max-abs above {atol} or pipeline PSNR below {min_psnr} dB"
        )
    if not as_json:
        click.echo("verify: passed")


@cli.command("info")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def info_cmd(artifact: Path, as_json: bool) -> None:
    """Describe an artifact (components, I/O, shape limits) and this machine's backends."""
    from sdrt.runtime.info import describe

    d = describe(artifact)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    m = d["manifest"]
    click.echo(f"{artifact}: {m['model_name']} ({m['family']}, {m['prediction_type']}), format v{m['format_version']}")
    lim = m["limits"]
    click.echo(f"  sizes {lim['min_size']}..{lim['max_size']} in steps of {lim['size_multiple']}, "
               f"native {m['default_size']}, batch <= {lim['max_batch']}")
    for name, spec in m["components"].items():
        ins = ", ".join(f"{t['name']}{tuple(t['shape'])}:{t['dtype']}" for t in spec["inputs"])
        outs = ", ".join(f"{t['name']}{tuple(t['shape'])}" for t in spec["outputs"])
        click.echo(f"  {name}: {spec['file']}  {ins} -> {outs}")
    click.echo(f"  backends here: {', '.join(d['backends_available'])}")


def main() -> None:
    cli(prog_name="sdrt")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
