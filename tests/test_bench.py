"""The benchmark harness: statistics, schedule, probe, RSS, report schema and rendering, the
CLI, and one real race on the tiny model. No test asserts a speed."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest

from sdrt.benchmarks.contenders import MEASURED_STAGES, STAGES, Contender, OrtLevers, Sample, Unavailable
from sdrt.benchmarks.harness import (
    PeakRss,
    StageClock,
    interleaved_schedule,
    paired_ratios,
    probe_gflops,
    rss_bytes,
    summarize,
)
from sdrt.runtime.request import GenerationRequest



# -- statistics --------------------------------------------------------------------
def test_summarize_percentiles_and_extremes():
    s = summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert s == {"n": 5, "p50": 3.0, "p90": pytest.approx(4.6), "mean": 3.0, "min": 1.0, "max": 5.0}


def test_summarize_empty_sample_is_explicit():
    assert summarize([]) == {"n": 0, "p50": None, "p90": None, "mean": None, "min": None, "max": None}


def test_paired_ratios_pair_by_round():
    # Round 2 is slow for both: pairing keeps the ratio at 2 instead of mixing rounds.
    s = paired_ratios([2.0, 8.0, 2.2], [1.0, 4.0, 1.1])
    assert s["n"] == 3 and s["p50"] == pytest.approx(2.0) and s["min"] == pytest.approx(2.0)


def test_paired_ratios_need_one_value_per_round():
    with pytest.raises(ValueError, match="one value per round"):
        paired_ratios([1.0, 2.0], [1.0])


# -- schedule ----------------------------------------------------------------------
def test_schedule_interleaves_and_reverses_every_other_round():
    sched = interleaved_schedule(["A", "B", "C"], rounds=2, warmup=1)
    assert sched == [
        (-1, "A"), (-1, "B"), (-1, "C"),
        (0, "C"), (0, "B"), (0, "A"),
        (1, "A"), (1, "B"), (1, "C"),
    ]


def test_schedule_every_round_runs_every_contender_once():
    sched = interleaved_schedule(["A", "B"], rounds=5, warmup=0)
    for r in range(5):
        assert sorted(n for rr, n in sched if rr == r) == ["A", "B"]


@pytest.mark.parametrize("kwargs, match", [
    ({"rounds": 0}, "rounds >= 1"),
    ({"rounds": 2, "warmup": -1}, "warmup >= 0"),
])
def test_schedule_rejects_bad_counts(kwargs, match):
    with pytest.raises(ValueError, match=match):
        interleaved_schedule(["A"], **kwargs)


def test_schedule_rejects_duplicate_names():
    with pytest.raises(ValueError, match="unique"):
        interleaved_schedule(["A", "A"], rounds=1)


# -- probe, memory, stage clock ------------------------------------------------------
def test_probe_reports_a_positive_rate():
    g = probe_gflops(n=128, repeats=2)
    assert np.isfinite(g) and g > 0


def test_peak_rss_sees_an_allocation_inside_the_block():
    before = rss_bytes()
    with PeakRss() as peak:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    assert peak.peak >= before + 32 * 2**20
    del block


def test_stage_clock_accumulates_calls_and_time():
    clock = StageClock()
    f = clock.wrap("unet", lambda x: x + 1)
    assert [f(1), f(2)] == [2, 3]
    assert clock.calls == {"unet": 2} and clock.seconds["unet"] >= 0
    clock.reset()
    assert clock.calls == {} and clock.seconds == {}


# -- run_benchmark with stand-in contenders ----------------------------------------------
class FakeContender(Contender):
    """Returns fixed images; stages are set so the derived overhead is known."""

    def __init__(self, name, kind="sdrt", *, unet=0.004, offset=0.0, fail=None, log=None):
        super().__init__(name)
        self.kind, self.unet, self.offset, self.fail, self.log = kind, unet, offset, fail, log

    def load(self):
        if self.fail:
            raise self.fail
        return 0.01

    def generate(self, req, init_latents):
        if self.log is not None:
            self.log.append(self.name)
        time.sleep(self.unet)  # the "model call"
        stages = {s: 0.0 for s in MEASURED_STAGES}
        stages["unet"] = self.unet
        b, c, h, w = init_latents.shape
        images = np.full((b, h * 8, w * 8, 3), 0.5 + self.offset, np.float32)
        return Sample(images, init_latents + self.offset, stages, req.steps)


@pytest.fixture(scope="module")
def tiny_workload(tiny_model_dirs, tiny_artifacts):
    from sdrt.benchmarks.workloads import Workload

    return Workload("tiny", "tiny", tiny_model_dirs["sd1"], tiny_artifacts["sd1"], 1.5, False, "test note", 32)


def _fake_report(tiny_workload, log=None):
    from sdrt.benchmarks.run import BenchConfig, run_benchmark

    contenders = [
        FakeContender("diffusers", "reference", unet=0.006, log=log),
        FakeContender("sdrt-ort-cpu", unet=0.002, offset=0.01, log=log),
        FakeContender("optimum-ort", "peer", fail=Unavailable("not installed here")),
        FakeContender("broken", fail=RuntimeError("boom")),
    ]
    cfg = BenchConfig(workload="tiny", steps=2, rounds=3, warmup=1, probe_n=64)
    return run_benchmark(cfg, contenders=contenders, workload=tiny_workload)


def test_report_schema_statuses_and_derived_figures(tiny_workload):
    from sdrt.benchmarks.report import validate_report

    log: list[str] = []
    report = _fake_report(tiny_workload, log)
    validate_report(report)
    cs = report["contenders"]
    assert cs["optimum-ort"]["status"] == "absent" and cs["optimum-ort"]["reason"] == "not installed here"
    assert cs["broken"]["status"] == "failed" and "boom" in cs["broken"]["reason"]
    # first call each, then 1 warm-up + 3 measured rounds, interleaved with reversal
    assert log == ["diffusers", "sdrt-ort-cpu"] + ["diffusers", "sdrt-ort-cpu", "sdrt-ort-cpu", "diffusers"] * 2
    assert [r["round"] for r in report["rounds"]] == [-1, 0, 1, 2]
    assert report["probe_gflops"]["n"] == 3
    sd = cs["sdrt-ort-cpu"]
    assert sd["latency_s"]["n"] == 3
    assert set(sd["stages_s"]) == set(STAGES)
    assert sd["per_step_s"]["unet"]["p50"] == pytest.approx(0.001)  # 0.002 s over 2 steps
    assert sd["speedup_vs_reference"]["total"]["n"] == 3
    assert sd["parity"]["latent_max_abs"] == pytest.approx(0.01, rel=1e-4)
    assert sd["parity"]["image_psnr_db"] == pytest.approx(40.0, abs=1e-3)  # MSE = 1e-4
    assert cs["diffusers"]["parity"] is None
    assert report["workload"]["unet_gflop_per_call"] > 0


def test_report_renders_markdown_chart_and_json(tiny_workload, tmp_path):
    from sdrt.benchmarks.report import render_markdown, write_chart, write_json

    report = _fake_report(tiny_workload)
    md = render_markdown(report)
    assert "| sdrt-ort-cpu |" in md and "| diffusers (reference) |" in md
    assert "absent: not installed here" in md and "failed: RuntimeError: boom" in md
    assert "test note" in md and "GFLOP/s" in md
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert len({len(re.findall(r"(?<!\\)\|", ln)) for ln in rows}) == 1  # every row has the header's columns
    png = write_chart(report, tmp_path / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = json.loads(write_json(report, tmp_path / "r.json").read_text())
    assert back["schema"] == "sdrt-bench/1" and back["contenders"].keys() == report["contenders"].keys()


def test_validate_report_names_the_missing_field():
    from sdrt.benchmarks.report import validate_report

    with pytest.raises(ValueError, match="lacks"):
        validate_report({"schema": "sdrt-bench/1"})


# -- real contenders on the tiny model -------------------------------------------------------
def test_tiny_race_has_parity_with_the_reference(tiny_workload):
    from sdrt.benchmarks.contenders import DiffusersContender, SdrtContender
    from sdrt.benchmarks.report import validate_report
    from sdrt.benchmarks.run import BenchConfig, run_benchmark

    wl = tiny_workload
    contenders = [
        DiffusersContender(wl.model_dir, "euler", threads=1),
        SdrtContender(wl.artifact_dir, "ort-cpu", threads=1),
    ]
    cfg = BenchConfig(workload="tiny", steps=2, rounds=2, warmup=0, probe_n=64, threads=1)
    report = run_benchmark(cfg, contenders=contenders, workload=wl)
    validate_report(report)
    sd = report["contenders"]["sdrt-ort-cpu"]
    assert sd["status"] == "ok"
    assert sd["parity"]["image_psnr_db"] is None or sd["parity"]["image_psnr_db"] > 40
    assert sd["parity"]["latent_max_abs"] < 1e-3
    ref = report["contenders"]["diffusers"]
    assert ref["stages_s"]["unet"]["p50"] > 0 and ref["stages_s"]["text_encoder"]["p50"] > 0
    assert ref["stages_s"]["vae_decoder"]["p50"] > 0
    assert {r["unet_calls"] for r in ref_runs(report, "diffusers")} == {2}


def test_tiny_sdxl_workload_races_the_sdxl_pipeline(tmp_path):
    """The tiny-sdxl workload: built and exported by prepare_workload, raced against diffusers'
    StableDiffusionXLPipeline with parity; both text encoders counted; FLOPs counted."""
    pytest.importorskip("diffusers")
    from sdrt.benchmarks.contenders import DiffusersContender
    from sdrt.benchmarks.report import validate_report
    from sdrt.benchmarks.run import BenchConfig, run_benchmark
    from sdrt.benchmarks.workloads import prepare_workload

    wl = prepare_workload("tiny-sdxl", tmp_path)
    assert (wl.name, wl.requested) == ("tiny-sdxl", "tiny-sdxl")
    ref = DiffusersContender(wl.model_dir, "euler", threads=1)
    ref.load()
    assert type(ref.pipe).__name__ == "StableDiffusionXLPipeline"
    req = GenerationRequest("a cat", steps=1, sampler="euler", seed=0, width=32, height=32)
    ref.generate(req, np.zeros((1, 4, 4, 4), np.float32))
    assert ref.state.clock.calls["text_encoder"] == 2  # text_encoder and text_encoder_2
    ref.close()

    cfg = BenchConfig(workload="tiny-sdxl", steps=2, rounds=1, warmup=0, probe_n=64, threads=1,
                      optimum=False, root=tmp_path)
    report = run_benchmark(cfg, workload=wl)
    validate_report(report)
    assert report["workload"]["unet_batch"] == 2 and report["workload"]["unet_gflop_per_call"] > 0
    sd = report["contenders"]["sdrt-ort-cpu"]
    assert sd["status"] == "ok" and report["contenders"]["diffusers"]["status"] == "ok"
    assert sd["parity"]["image_psnr_db"] is None or sd["parity"]["image_psnr_db"] >= 40
    assert report["contenders"]["diffusers"]["stages_s"]["text_encoder"]["p50"] > 0


def test_full_size_sdxl_workload_points_to_tiny_sdxl(tmp_path):
    from sdrt.benchmarks.workloads import prepare_workload
    from sdrt.errors import ConfigError

    with pytest.raises(ConfigError, match="tiny-sdxl"):
        prepare_workload("sdxl", tmp_path)


def ref_runs(report, name):
    return [run for rnd in report["rounds"] for run in rnd["runs"] if run["contender"] == name]


def test_ort_levers_keep_the_output(tiny_artifacts):
    from sdrt.benchmarks.contenders import SdrtContender

    from sdrt.runtime.manifest import Artifact

    m = Artifact.open(tiny_artifacts["sd1"]).manifest
    req = GenerationRequest("a cat", steps=2, sampler="euler", seed=1).resolved(m)
    lat = m.default_size // m.vae_scale_factor
    init = np.random.default_rng(0).standard_normal((1, m.latent_channels, lat, lat), dtype=np.float32)
    outs = []
    for levers in (None, OrtLevers(io_binding=True, enable_mem_pattern=False, enable_cpu_mem_arena=False,
                                   graph_optimization_level="ORT_ENABLE_BASIC", intra_op_spinning=False)):
        c = SdrtContender(tiny_artifacts["sd1"], "ort-cpu", threads=1, levers=levers)
        c.load()
        outs.append(c.generate(req, init).latents)
        c.close()
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-4)
    assert "io_binding=True" in SdrtContender(tiny_artifacts["sd1"], levers=OrtLevers(io_binding=True)).name
    assert OrtLevers(intra_op_spinning=False).label() == "intra_op_spinning=False"
    assert OrtLevers().label() == "defaults"


# -- CLI ---------------------------------------------------------------------------
def test_cli_writes_json_markdown_and_chart(monkeypatch, tmp_path):
    from click.testing import CliRunner

    import sdrt.benchmarks.run as run_mod
    from sdrt.cli_bench import bench

    seen = {}

    def fake_run(cfg, progress=None):
        seen["cfg"] = cfg
        return _static_report()

    monkeypatch.setattr(run_mod, "run_benchmark", fake_run)
    out = tmp_path / "out.json"
    result = CliRunner().invoke(bench, ["--quick", "--json", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.workload, cfg.steps, cfg.rounds, cfg.reference, cfg.backends) == ("shipped", 4, 3, True, ("ort-cpu",))
    assert json.loads(out.read_text())["schema"] == "sdrt-bench/1"
    assert out.with_suffix(".md").read_text().startswith("### ")
    assert out.with_suffix(".png").stat().st_size > 0


def test_cli_lever_and_backend_options_map_to_the_config(monkeypatch):
    from click.testing import CliRunner

    import sdrt.benchmarks.run as run_mod
    from sdrt.cli_bench import bench

    seen = {}
    monkeypatch.setattr(run_mod, "run_benchmark", lambda cfg, progress=None: seen.setdefault("cfg", cfg) and _static_report())
    result = CliRunner().invoke(bench, ["--workload", "sd15", "--size", "256", "--steps", "3", "--rounds", "2",
                                        "--backends", "ort-cpu,torch", "--lever", "io_binding", "--no-optimum", "--quiet"])
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.workload, cfg.size, cfg.steps, cfg.rounds, cfg.optimum) == ("sd15", 256, 3, 2, False)
    assert cfg.backends == ("ort-cpu", "torch") and cfg.levers == (OrtLevers(io_binding=True),)


def _static_report():
    """A minimal valid report (one measured contender), independent of any model."""
    stats = summarize([1.0, 1.1])
    stage = {s: summarize([0.1, 0.1]) for s in STAGES}
    run = {"contender": "sdrt-ort-cpu", "round": 0, "order": 0, "total_s": 1.0,
           "stages_s": {s: 0.1 for s in STAGES}, "unet_calls": 4, "peak_rss_mb": 100.0}
    return {
        "schema": "sdrt-bench/1", "created": "2026-01-01T00:00:00+00:00",
        "machine": {"threads": 2, "cpu_count": 2, "processor": "x", "platform": "y", "loadavg_at_start": None},
        "config": {"rounds": 1, "warmup": 0, "probe_n": 64},
        "workload": {"name": "tiny", "requested": "shipped", "note": "n", "width": 32, "height": 32, "steps": 4,
                     "sampler": "euler", "guidance": 7.5, "unet_batch": 2, "unet_gflop_per_call": 0.4,
                     "export_s": 0.0, "export_cached": True},
        "reference": None, "probe_gflops": stats,
        "rounds": [{"round": 0, "warmup": False, "probe_gflops": 100.0, "runs": [run]}],
        "contenders": {"sdrt-ort-cpu": {
            "kind": "sdrt", "status": "ok", "reason": None, "build_s": 1.0, "first_call_s": 1.0, "load_rss_mb": 5.0,
            "latency_s": stats, "stages_s": stage, "per_step_s": {"unet": stats, "overhead": stats},
            "overhead_share": stats, "unet_gflops": stats, "unet_probe_share": stats, "peak_rss_mb": 100.0}},
    }
