"""Score the shipped model through sdrt's own runtime at ``sdrt generate``'s defaults.

    .venv/bin/python training/evaluate_runtime.py    # 60 held-out prompts, seed = index

``training/evaluate.py`` scores the diffusers pipeline (50 DDIM steps); this scores what a user
gets from ``sdrt generate`` (the exported artifact on ONNX Runtime CPU, default steps, sampler and
guidance), with the same prompts and pixel scorer.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "training"))
import shapes  # noqa: E402

from sdrt.runtime import GenerationRequest, Pipeline  # noqa: E402
from sdrt.shipped import shipped_artifact  # noqa: E402


def main() -> None:
    items = shapes.eval_prompts()
    with Pipeline.load(shipped_artifact()) as pipe:
        judged = [shapes.judge(pipe(GenerationRequest(it["prompt"], seed=i)).images[0], it)
                  for i, it in enumerate(items)]
    n = len(items)
    req = GenerationRequest("")
    acc = {k: round(sum(j[k] for j in judged) / n, 4) for k in ("background", "shape_colour", "shape")}
    print(json.dumps({"n_prompts": n, "steps": req.steps, "sampler": req.sampler,
                      "guidance": req.guidance, **acc}))


if __name__ == "__main__":
    main()
