"""Benchmark mechanics with no model in them: statistics, the interleaved schedule, the
machine-speed probe and peak-RSS sampling. Everything here is unit-tested without timing asserts.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np

T = TypeVar("T")


# -- statistics ---------------------------------------------------------------
def summarize(values: Iterable[float]) -> dict[str, float | int | None]:
    """n, p50, p90, mean, min, max of ``values`` (linear-interpolated percentiles, as numpy's
    default). An empty sample gives ``n = 0`` and ``None`` everywhere else."""
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    if v.size == 0:
        return {"n": 0, "p50": None, "p90": None, "mean": None, "min": None, "max": None}
    return {
        "n": int(v.size),
        "p50": float(np.percentile(v, 50)),
        "p90": float(np.percentile(v, 90)),
        "mean": float(v.mean()),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def paired_ratios(reference: Sequence[float], contender: Sequence[float]) -> dict[str, float | int | None]:
    """Speed-up of ``contender`` over ``reference`` round by round (``ref_i / cand_i``), summarized.

    Pairing by round cancels most of the machine's drift: both were timed within the same
    round, minutes apart at most. The spread (min..max) shows how much the drift remains.
    """
    if len(reference) != len(contender):
        raise ValueError(f"paired_ratios needs one value per round each, got {len(reference)} and {len(contender)}")
    return summarize(r / c for r, c in zip(reference, contender) if c > 0)


# -- the schedule --------------------------------------------------------------
def interleaved_schedule(names: Sequence[str], rounds: int, warmup: int = 1) -> list[tuple[int, str]]:
    """(round, contender) in run order: ``warmup`` rounds (numbered < 0) then ``rounds`` rounds.

    Every round runs every contender once; odd rounds run them in reverse (A B, B A, A B, ...),
    so a contender is not always the one that runs right after another (caches, thermals,
    a neighbour's job starting) and a steady drift in machine speed affects all alike.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")
    if len(set(names)) != len(names):
        raise ValueError(f"contender names must be unique, got {list(names)}")
    out: list[tuple[int, str]] = []
    for r in range(-warmup, rounds):
        order = list(names) if (r + warmup) % 2 == 0 else list(reversed(names))
        out.extend((r, n) for n in order)
    return out


# -- machine-speed probe ---------------------------------------------------------
def probe_gflops(n: int = 1024, repeats: int = 5) -> float:
    """GFLOP/s of the best of ``repeats`` fp32 ``n x n`` matmuls (2 n^3 FLOP each) on numpy's BLAS.

    Run once per round: it is the machine's momentary dense-fp32 ceiling, against which a slow
    round (a neighbour's job, frequency drops) becomes visible, and the denominator of each
    contender's UNet GFLOP/s share.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # first call pays BLAS thread start-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best / 1e9


# -- memory ---------------------------------------------------------------------
def rss_bytes() -> int:
    """Resident set size of this process now."""
    import psutil

    return int(psutil.Process(os.getpid()).memory_info().rss)


class PeakRss:
    """Highest RSS of this process while the ``with`` block runs, sampled every ``interval`` s.

    All contenders share one process, so this is the process's peak during one contender's
    calls: it includes the other contenders' loaded weights. Compare it with ``rss_bytes()``
    before loading (the report gives both the peak and the load delta).
    """

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        import psutil

        proc = psutil.Process(os.getpid())
        while not self._stop.is_set():
            self.peak = max(self.peak, int(proc.memory_info().rss))
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRss":
        self.peak = rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="sdrt-bench-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and its wall time in seconds."""
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


class StageClock:
    """Accumulates seconds per stage name. ``wrap(name, fn)`` times every call of ``fn``.

    Used to time third-party pipelines the same way for every contender: the UNet's
    ``forward`` (or ONNX Runtime's ``session.run``), the text encoder, the VAE decode.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def wrap(self, name: str, fn: Callable[..., T]) -> Callable[..., T]:
        def timed_call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t
                self.calls[name] = self.calls.get(name, 0) + 1

        timed_call.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed_call
