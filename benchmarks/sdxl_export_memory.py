"""Peak memory and time of exporting the full-size SDXL UNet (2.6 B parameters) to ONNX.

Not a test (it takes minutes and most of the machine's memory). The UNet is built from SDXL
base 1.0's published config values (``sdrt.export.tiny.SDXL_BASE_UNET``) with random weights,
directly in the export dtype (on the meta device, then materialised), so a float16 export never
holds a float32 copy. It then goes through sdrt's own export path: ``wrappers.UNet`` (float32
I/O, casts inside), ``wrappers.unet_spec`` and ``onnx_export.export_component`` (TorchScript
exporter, graph clean-up, ONE external data file, shape inference, ``check_model``).

``--path streaming`` instead runs :func:`export_streaming`, a variant of ``export_component``
that never loads the weights back into Python: the exporter's per-tensor external files are
streamed into the ONE ``.data`` file and only the graph proto is loaded and cleaned. It is here
to measure what that change to ``onnx_export.py`` would save; the two paths write equivalent
artifacts (same graph I/O, one external data file, onnx checks).

A watchdog thread samples this process's RSS every 0.2 s (that is the "peak RSS" reported,
alongside ``ru_maxrss``) and aborts the export, rather than letting the kernel's OOM killer
pick a process on a shared machine, when RSS passes ``--rss-limit-gb``.

    .venv/bin/python benchmarks/sdxl_export_memory.py --dtype fp16 --out /tmp/sdxl-unet \\
        --json docs/sdxl_export_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path


class RssWatch:
    """Samples RSS of this process; aborts the process past ``limit`` bytes."""

    def __init__(self, limit: int, interval: float = 0.2):
        import psutil

        self.proc = psutil.Process()
        self.limit = limit
        self.interval = interval
        self.peak = 0
        self.phase = "start"
        self.phase_peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self.proc.memory_info().rss
            self.peak = max(self.peak, rss)
            self.phase_peaks[self.phase] = max(self.phase_peaks.get(self.phase, 0), rss)
            if rss > self.limit:
                sys.stderr.write(
                    f"RSS {rss / 2**30:.1f} GiB passed the limit {self.limit / 2**30:.1f} GiB during "
                    f"'{self.phase}': aborting\n"
                )
                sys.stderr.flush()
                os._exit(3)
            time.sleep(self.interval)

    def __enter__(self) -> "RssWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _tensors(graph):  # noqa: ANN001, ANN202
    """Every TensorProto of ``graph``: initializers and Constant-node attributes, recursively."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for g in attr.graphs:
                yield from _tensors(g)


def export_streaming(module, spec, sample_feeds, out_path: Path, watch: RssWatch, *, opset: int = 17) -> Path:  # noqa: ANN001
    """export_component without loading the weights back: trace to a temp dir (the TorchScript
    exporter writes one external file per large tensor), load only the graph, clean it up, and
    stream every external tensor into ONE ``<out>.data`` (4 KiB-aligned), then run the same
    shape inference and ``check_model`` on the paths."""
    import warnings

    import onnx
    import onnx_graphsurgeon as gs
    import torch
    from onnx.external_data_helper import uses_external_data

    args = tuple(torch.from_numpy(sample_feeds[n]) for n in spec.input_names)
    data_name = out_path.name + ".data"
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{spec.name}-raw-") as raw_dir:
        raw_path = Path(raw_dir) / "model.onnx"
        watch.phase = "torch.onnx.export"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, args, str(raw_path), input_names=spec.input_names, output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes(), opset_version=opset, do_constant_folding=True, dynamo=False,
            )
        watch.phase = "graph clean-up"
        graph = gs.import_onnx(onnx.load(str(raw_path), load_external_data=False))
        graph.cleanup().toposort()
        model = gs.export_onnx(graph)
        del graph
        model.producer_name = "sdrt"
        watch.phase = "stream weights"
        with open(out_path.parent / data_name, "wb") as data:
            for tensor in _tensors(model.graph):
                if not uses_external_data(tensor):
                    continue
                info = {e.key: e.value for e in tensor.external_data}
                with open(Path(raw_dir) / info["location"], "rb") as src:
                    src.seek(int(info.get("offset", 0)))
                    remaining = int(info["length"]) if "length" in info else -1
                    data.seek((data.tell() + 4095) // 4096 * 4096)
                    offset, length = data.tell(), 0
                    while remaining != 0:
                        chunk = src.read(1 << 24 if remaining < 0 else min(1 << 24, remaining))
                        if not chunk:
                            break
                        data.write(chunk)
                        length += len(chunk)
                        remaining = -1 if remaining < 0 else remaining - len(chunk)
                del tensor.external_data[:]
                for key, value in (("location", data_name), ("offset", offset), ("length", length)):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, str(value)
                tensor.data_location = onnx.TensorProto.EXTERNAL
        onnx.save_model(model, str(out_path))
        del model
    watch.phase = "onnx checks"
    onnx.shape_inference.infer_shapes_path(str(out_path), str(out_path), strict_mode=True)
    onnx.checker.check_model(str(out_path), full_check=True)
    return out_path


def build_unet(dtype: str, *, tiny: bool):
    """SDXL UNet with random weights, allocated once, directly in ``dtype``."""
    import torch
    from diffusers import UNet2DConditionModel

    from sdrt.export.tiny import SDXL_BASE_UNET

    config = dict(SDXL_BASE_UNET)
    if tiny:  # smoke test of this script
        config.update(
            block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
            transformer_layers_per_block=(1, 2), cross_attention_dim=64, addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32, norm_num_groups=16,
        )
    torch_dtype = {"fp16": torch.float16, "fp32": torch.float32}[dtype]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    unet = unet.to(dtype=torch_dtype).to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in unet.modules():
            # random weights at the scale of each layer's default init: N(0, 1/fan_in)
            for name, p in module.named_parameters(recurse=False):
                if name == "weight" and p.ndim >= 2:
                    fan_in = p[0].numel()
                    p.normal_(0.0, fan_in**-0.5, generator=gen)
                elif name == "weight":  # norm scales
                    p.fill_(1.0)
                else:
                    p.zero_()
    return unet.eval(), config


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16")
    ap.add_argument("--out", type=Path, default=None, help="directory for unet.onnx (default: a temp dir)")
    ap.add_argument("--latent", type=int, default=16, help="latent size traced at (dynamic axes anyway)")
    ap.add_argument("--rss-limit-gb", type=float, default=21.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--path", choices=("project", "streaming"), default="project",
                    help="project: onnx_export.export_component; streaming: export_streaming (proposal)")
    ap.add_argument("--tiny", action="store_true", help="smoke-test on a tiny UNet")
    ap.add_argument("--json", type=Path, default=None, help="write the result here too")
    args = ap.parse_args()

    import numpy as np
    import torch

    from sdrt.export.onnx_export import export_component, random_feeds
    from sdrt.export.wrappers import UNet, unet_spec
    from sdrt.runtime.specs import resolve_dims

    torch.set_num_threads(args.threads)
    result: dict = {"dtype": args.dtype, "path": args.path, "tiny": args.tiny, "torch": torch.__version__}
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="sdxl-unet-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with RssWatch(int(args.rss_limit_gb * 2**30)) as watch:
        watch.phase = "build"
        unet, config = build_unet(args.dtype, tiny=args.tiny)
        result["parameters"] = sum(p.numel() for p in unet.parameters())
        result["build_s"] = round(time.perf_counter() - t0, 1)
        spec = unet_spec(config, max_length=77, projection_dim=config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"])
        f = 8
        dims = resolve_dims(batch=1, height=args.latent * f, width=args.latent * f, cfg=False, vae_scale_factor=f)
        feeds = random_feeds(spec, dims, np.random.default_rng(0), int_high=1)
        watch.phase = "export"
        t1 = time.perf_counter()
        module = UNet(unet, conditions=spec.input_names[3:]).eval()
        if args.path == "project":
            path = export_component(module, spec, feeds, out_dir / spec.file)
        else:
            path = export_streaming(module, spec, feeds, out_dir / spec.file, watch)
        result["export_s"] = round(time.perf_counter() - t1, 1)
        watch.phase = "done"
    result["total_s"] = round(time.perf_counter() - t0, 1)
    result["peak_rss_gib"] = round(watch.peak / 2**30, 2)
    result["phase_peak_rss_gib"] = {k: round(v / 2**30, 2) for k, v in watch.phase_peaks.items()}
    result["ru_maxrss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    result["files_mb"] = {p.name: round(p.stat().st_size / 2**20, 1) for p in sorted(out_dir.iterdir())}
    result["onnx"] = str(path)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
