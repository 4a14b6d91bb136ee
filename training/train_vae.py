"""Stage 1: train the shapes64 AutoencoderKL (64x64x3 <-> 16x16x4), then check its
reconstruction per colour.

    .venv/bin/python training/train_vae.py            # train (resumes from training/runs/vae/ckpt.pt)
    .venv/bin/python training/train_vae.py --check    # only the per-colour reconstruction check

Schedule: most steps on random 32x32 crops (the VAE is fully convolutional, no mid attention,
so crops are 4x cheaper per sample), the last steps at the full 64x64 so the GroupNorm
statistics match whole images.  Loss: L1 + MSE with foreground (shape) pixels weighted x5
+ 1e-6 * KL (summed over the latent).  Seeded; checkpoints every 100 steps.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time

import numpy as np
import torch

from common import RUNS, VAE_CONFIG, Log, save_atomic, setup_threads, to_tensor, to_uint8
import shapes

RUN = RUNS / "vae"


def fg_weight(x: torch.Tensor) -> torch.Tensor:
    """1 on background (colour of the corner pixel), 5 where the pixel differs from it."""
    bg = x[:, :, :1, :1]
    diff = (x - bg).abs().sum(1, keepdim=True) > 0.1
    return 1.0 + 4.0 * diff.float()


def random_crop(x: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    out = torch.empty(n, x.shape[1], size, size)
    offs = torch.randint(0, x.shape[-1] - size + 1, (n, 2), generator=g)
    for i in range(n):
        oy, ox = offs[i].tolist()
        out[i] = x[i, :, oy:oy + size, ox:ox + size]
    return out


def build_vae():
    from diffusers import AutoencoderKL
    return AutoencoderKL(**VAE_CONFIG)


@torch.no_grad()
def check(vae, log, n_per=240, seed=123) -> dict:
    """Reconstruct images of every triple (held-out ones too) and score them per colour."""
    vae.eval()
    rng = random.Random(seed)
    stats = {}
    err = {}
    for triples, split in ((shapes.TRAIN_TRIPLES, "train"), (shapes.HELD_OUT, "heldout")):
        imgs, attrs = [], []
        for _ in range(n_per):
            im, _, a = shapes.sample(rng, triples)
            imgs.append(im)
            attrs.append(a)
        imgs = np.stack(imgs)
        recs = []
        for i in range(0, len(imgs), 48):
            x = to_tensor(imgs[i:i + 48])
            recs.append(to_uint8(vae.decode(vae.encode(x).latent_dist.mode()).sample))
        recs = np.concatenate(recs)
        for im, rec, a in zip(imgs, recs, attrs):
            j = shapes.judge(rec, a)
            for role, key in (("shape", "colour"), ("background", "background")):
                s = stats.setdefault(f"{role}:{a[key]}", [0, 0])
                s[0] += j["shape_colour" if role == "shape" else "background"]
                s[1] += 1
            s = stats.setdefault(f"type:{a['shape']}", [0, 0])
            s[0] += j["shape"]
            s[1] += 1
            # mean absolute RGB error on the shape's own pixels
            m = np.abs(im.astype(np.float32) - np.array(shapes.PALETTE[a["background"]])).sum(-1) > 30
            if m.sum():
                e = np.abs(rec[m].astype(np.float32) - im[m].astype(np.float32)).mean()
                err.setdefault(a["colour"], []).append(float(e))
    res = {k: round(v[0] / v[1], 3) for k, v in sorted(stats.items())}
    res_err = {k: round(float(np.mean(v)), 1) for k, v in sorted(err.items())}
    log("VAE per-colour reconstruction accuracy (scorer on reconstructions):", json.dumps(res))
    log("VAE mean |RGB error| on shape pixels, 0-255:", json.dumps(res_err))
    vae.train()
    return dict(accuracy=res, shape_pixel_abs_err=res_err)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--crop-steps", type=int, default=2400)
    ap.add_argument("--full-steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n-images", type=int, default=12000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    setup_threads()
    torch.manual_seed(args.seed)
    log = Log(RUN / "log.txt")
    vae = build_vae()
    ckpt_path = RUN / "ckpt.pt"
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    step, elapsed = 0, 0.0
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        vae.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, elapsed = ck["step"], ck["elapsed"]
        log(f"resumed at step {step} ({elapsed / 60:.1f} min trained)")
    if args.check:
        res = check(vae, log)
        (RUN / "check.json").write_text(json.dumps(res, indent=1))
        return
    log(f"VAE params {sum(p.numel() for p in vae.parameters()) / 1e6:.3f}M; config {VAE_CONFIG}")
    t0 = time.time()
    imgs, _, _ = shapes.make_dataset(args.n_images, seed=args.seed)
    data = to_tensor(imgs)
    log(f"dataset {len(data)} images in {time.time() - t0:.1f}s")
    total = args.crop_steps + args.full_steps
    g = torch.Generator().manual_seed(args.seed * 1000 + step)
    last = time.time()
    run_loss = None
    while step < total:
        warm = min(1.0, (step + 1) / 100)
        prog = step / total
        lr = args.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))
        for pg in opt.param_groups:
            pg["lr"] = lr
        idx = torch.randint(0, len(data), (args.batch,), generator=g)
        x = data[idx]
        if step < args.crop_steps:
            x = random_crop(x, 32, g)
        post = vae.encode(x).latent_dist
        z = post.sample(generator=g)
        y = vae.decode(z).sample
        w = fg_weight(x)
        rec = (w * ((y - x).abs() + (y - x) ** 2)).mean()
        kl = post.kl().mean()
        loss = rec + 1e-6 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        now = time.time()
        elapsed += now - last
        last = now
        run_loss = loss.item() if run_loss is None else 0.95 * run_loss + 0.05 * loss.item()
        if step % 50 == 0:
            log(f"step {step}/{total} loss {run_loss:.4f} rec {rec.item():.4f} kl {kl.item():.0f} "
                f"lr {lr:.2e} {elapsed / step:.2f}s/step elapsed {elapsed / 60:.1f}min")
        if step % 100 == 0 or step == total:
            save_atomic(dict(model=vae.state_dict(), opt=opt.state_dict(), step=step,
                             elapsed=elapsed), ckpt_path)
        if step % 600 == 0 and step < total:
            check(vae, log, n_per=60)
    log(f"VAE training done: {step} steps, {elapsed / 60:.1f} min of training")
    # scaling factor = 1 / std of the encoded latents of a fixed sample set
    vae.eval()
    with torch.no_grad():
        zs = torch.cat([vae.encode(data[i:i + 64]).latent_dist.sample() for i in range(0, 2048, 64)])
    sf = float(1.0 / zs.flatten().std())
    log(f"latent mean {zs.mean():.3f} std {zs.std():.3f} -> scaling_factor {sf:.4f}")
    res = check(vae, log)
    res["scaling_factor"] = sf
    res["steps"] = step
    res["train_minutes"] = round(elapsed / 60, 1)
    (RUN / "check.json").write_text(json.dumps(res, indent=1))
    vae.register_to_config(scaling_factor=sf)
    vae.save_pretrained(RUN / "final", safe_serialization=True)
    log(f"saved {RUN / 'final'}")


if __name__ == "__main__":
    main()
