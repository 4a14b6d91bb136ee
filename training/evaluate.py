"""Evaluate the shipped shapes64 model on held-out prompts and draw the contact sheet.

    .venv/bin/python training/evaluate.py            # 60 held-out prompts, pipeline defaults
                                                     # (50 steps, guidance 7.5), seeds 0..59

Loads the model with diffusers.StableDiffusionPipeline.from_pretrained (the same dir the
export / runtime path uses), generates one image per prompt (seed = index), and scores each
from pixels alone with training/shapes.py's scorer (background colour, shape colour, shape
type).  Writes docs/shapes64_eval.json and docs/shapes64_contact_sheet.png.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "training"))
import shapes  # noqa: E402


def generate(pipe, prompts, seeds, steps=None, guidance=7.5, batch=12):
    out = []
    kw = {} if steps is None else dict(num_inference_steps=steps)
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i:i + batch]]
        res = pipe(prompt=prompts[i:i + batch], generator=gens, guidance_scale=guidance,
                   output_type="np", **kw)
        out.append((res.images * 255).round().clip(0, 255).astype(np.uint8))
    return np.concatenate(out)


def contact_sheet(imgs, items, judged, path, cols=10, scale=2):
    cell_w, cell_h = 64 * scale + 8, 64 * scale + 40
    rows = (len(imgs) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h + 24), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    d.text((4, 4), "shapes64: held-out prompts (combinations never seen in training), "
           "50 DDIM steps, guidance 7.5, seed = index.  b/c/s = background / colour / shape "
           "read correctly from pixels (+) or not (-)", fill=(0, 0, 0))
    for k, (im, it, j) in enumerate(zip(imgs, items, judged)):
        x, y = (k % cols) * cell_w + 4, (k // cols) * cell_h + 24
        sheet.paste(Image.fromarray(im).resize((64 * scale, 64 * scale), Image.NEAREST), (x, y))
        words = f"{it['colour']} {it['shape']}"
        words2 = f"on {it['background']}" + (f", {it['position']}" if it["position"] else "")
        marks = " ".join(f"{n}{'+' if j[key] else '-'}" for n, key in
                         (("b", "background"), ("c", "shape_colour"), ("s", "shape")))
        d.text((x, y + 64 * scale + 1), words, fill=(0, 0, 0))
        d.text((x, y + 64 * scale + 12), words2, fill=(0, 0, 0))
        ok = all(j[key] for key in ("background", "shape_colour", "shape"))
        d.text((x, y + 64 * scale + 23), marks, fill=(0, 120, 0) if ok else (180, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default=str(ROOT / "sdrt" / "models" / "shapes64"))
    ap.add_argument("--steps", type=int, default=None, help="default: the pipeline's (50)")
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(ROOT / "docs" / "shapes64_eval.json"))
    ap.add_argument("--sheet", default=str(ROOT / "docs" / "shapes64_contact_sheet.png"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from diffusers import StableDiffusionPipeline
    t0 = time.time()
    pipe = StableDiffusionPipeline.from_pretrained(args.model_dir, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    items = shapes.eval_prompts()
    prompts = [it["prompt"] for it in items]
    seeds = [args.seed + i for i in range(len(items))]
    imgs = generate(pipe, prompts, seeds, steps=args.steps, guidance=args.guidance)
    judged = [shapes.judge(im, it) for im, it in zip(imgs, items)]
    n = len(items)
    acc = {k: sum(j[k] for j in judged) / n for k in ("background", "shape_colour", "shape")}
    all3 = sum(all(j[k] for k in acc) for j in judged) / n
    info_path = Path(args.model_dir) / "training_info.json"
    report = dict(
        model_dir=str(Path(args.model_dir).relative_to(ROOT)) if Path(args.model_dir).is_relative_to(ROOT) else args.model_dir,
        training=json.loads(info_path.read_text()) if info_path.exists() else None,
        n_prompts=n,
        steps=args.steps or 50,
        guidance=args.guidance,
        seeds=f"{seeds[0]}..{seeds[-1]} (one per prompt)",
        accuracy=dict(background_colour=round(acc["background"], 4),
                      shape_colour=round(acc["shape_colour"], 4),
                      shape_type=round(acc["shape"], 4),
                      all_three=round(all3, 4)),
        bar=dict(background_colour=0.9, shape_colour=0.9, shape_type=0.7),
        passes_bar=bool(acc["background"] >= 0.9 and acc["shape_colour"] >= 0.9 and acc["shape"] >= 0.7),
        held_out_triples=[list(t) for t in shapes.HELD_OUT],
        scorer="training/shapes.py:score_image (border median -> background; largest "
               "off-background component -> shape colour and fill ratio -> shape type)",
        seconds=round(time.time() - t0, 1),
        prompts=[dict(prompt=it["prompt"], seed=s, read=dict(background=j["read"]["background"],
                      shape_colour=j["read"]["shape_colour"], shape=j["read"]["shape"]),
                      ok=dict(background=bool(j["background"]), shape_colour=bool(j["shape_colour"]),
                              shape=bool(j["shape"])))
                 for it, s, j in zip(items, seeds, judged)],
    )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    contact_sheet(imgs, items, judged, Path(args.sheet))
    print(json.dumps(dict(n_prompts=n, **report["accuracy"], passes_bar=report["passes_bar"],
                          seconds=report["seconds"])))


if __name__ == "__main__":
    main()
