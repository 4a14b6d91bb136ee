"""Stage 2: train the shapes64 text encoder (CLIPTextModel) + UNet2DConditionModel on cached
VAE latents, and export the diffusers model dir.

    .venv/bin/python training/train_unet.py                 # train / resume (training/runs/unet/ckpt.pt)
    .venv/bin/python training/train_unet.py --export        # write sdrt/models/shapes64 from the EMA weights

Needs stage 1 (training/train_vae.py) finished: training/runs/vae/final.

Recipe (all seeded): a fixed set of procedurally generated training images (held-out triples
excluded) encoded once by the frozen VAE (posterior mean and std cached, a fresh latent sample
drawn every step); captions tokenized by the real CLIP BPE tokenizer padded to 77 like the
pipeline does.  Epsilon prediction on SD's scaled_linear schedule, Min-SNR-5 loss weighting,
offset noise 0.1, 10% caption dropout (for classifier-free guidance), AdamW with warm-up and a
cosine decay over a wall-clock budget, EMA 0.999.  The text encoder is first warmed up for a few
hundred steps with linear heads reading colour / shape / background / position from its pooled
output (the heads are thrown away) and keeps that auxiliary loss at weight 0.1 afterwards.
Checkpoints every 100 steps; an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from common import (MODEL_DIR, RUNS, SCHEDULER_CONFIG, TEXT_CONFIG, UNET_CONFIG, Log,
                    save_atomic, setup_threads, to_tensor, to_uint8)
import shapes

sys.path.insert(0, str(MODEL_DIR.parent.parent.parent))

RUN = RUNS / "unet"
VAE_DIR = RUNS / "vae" / "final"
TOK_DIR = RUNS / "tokenizer"


def tokenizer():
    from transformers import CLIPTokenizer
    if not (TOK_DIR / "vocab.json").exists():
        from sdrt.clip_vocab import save_clip_tokenizer
        save_clip_tokenizer(TOK_DIR, pad_token="<|endoftext|>", model_max_length=77)
    return CLIPTokenizer.from_pretrained(TOK_DIR)


def tokenize(tok, texts):
    return tok(texts, padding="max_length", max_length=77, truncation=True,
               return_tensors="pt").input_ids


def build_models():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    te = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    unet = UNet2DConditionModel(**UNET_CONFIG)
    return te, unet


ATTR_KEYS = [("colour", shapes.SHAPE_COLOURS), ("shape", shapes.SHAPES),
             ("background", shapes.BACKGROUNDS), ("position", shapes.POSITIONS)]


class AuxHeads(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.heads = torch.nn.ModuleList([torch.nn.Linear(dim, len(v)) for _, v in ATTR_KEYS])

    def forward(self, pooled, labels):
        return sum(F.cross_entropy(h(pooled), labels[:, i]) for i, h in enumerate(self.heads))


def build_cache(log, n, seed, tok):
    path = RUN / f"cache_{n}_{seed}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    from diffusers import AutoencoderKL
    t0 = time.time()
    vae = AutoencoderKL.from_pretrained(VAE_DIR).eval()
    imgs, caps, attrs = shapes.make_dataset(n, seed=seed)
    means, stds = [], []
    with torch.no_grad():
        for i in range(0, n, 100):
            d = vae.encode(to_tensor(imgs[i:i + 100])).latent_dist
            means.append(d.mean)
            stds.append(d.std)
    labels = torch.tensor([[vals.index(a[k]) for k, vals in ATTR_KEYS] for a in attrs])
    cache = dict(mean=torch.cat(means), std=torch.cat(stds), ids=tokenize(tok, caps),
                 labels=labels, captions=caps, scaling_factor=vae.config.scaling_factor)
    save_atomic(cache, path)
    log(f"cached {n} latents in {time.time() - t0:.0f}s")
    return cache


@torch.no_grad()
def sample(te, unet, vae, tok, prompts, seed=0, steps=25, guidance=7.5):
    """Plain DDIM + classifier-free guidance loop (the pipeline's math), for monitoring."""
    from diffusers import DDIMScheduler
    sched = DDIMScheduler(**SCHEDULER_CONFIG)
    sched.set_timesteps(steps)
    ids = tokenize(tok, list(prompts) + [""] * len(prompts))
    h = te(ids).last_hidden_state
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(prompts), 4, 16, 16, generator=g)
    for t in sched.timesteps:
        e = unet(torch.cat([x, x]), t, h).sample
        ec, eu = e.chunk(2)
        x = sched.step(eu + guidance * (ec - eu), t, x).prev_sample
    return to_uint8(vae.decode(x / vae.config.scaling_factor).sample)


def quick_eval(te, unet, vae, tok, log, step):
    items = shapes.eval_prompts()[::5] + shapes.eval_prompts()[3::5]
    imgs = sample(te, unet, vae, tok, [it["prompt"] for it in items], seed=step)
    acc = dict(background=0, shape_colour=0, shape=0)
    for im, it in zip(imgs, items):
        j = shapes.judge(im, it)
        for k in acc:
            acc[k] += j[k]
    log(f"quick eval (EMA, {len(items)} held-out prompts, 25 DDIM steps, cfg 7.5) step {step}: "
        + " ".join(f"{k} {v}/{len(items)}" for k, v in acc.items()))
    return acc


def export(log):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer
    ck = torch.load(RUN / "ckpt.pt", map_location="cpu", weights_only=False)
    te, unet = build_models()
    te.load_state_dict(ck["ema_te"])
    unet.load_state_dict(ck["ema_unet"])
    vae = AutoencoderKL.from_pretrained(VAE_DIR)
    tokenizer()
    tok = CLIPTokenizer.from_pretrained(TOK_DIR)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                   scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
                                   safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    if MODEL_DIR.exists():
        shutil.rmtree(MODEL_DIR)
    pipe.save_pretrained(MODEL_DIR, safe_serialization=True)
    # SD's own tokenizer layout (vocab.json + merges.txt), the real CLIP BPE files
    from sdrt.clip_vocab import save_clip_tokenizer
    shutil.rmtree(MODEL_DIR / "tokenizer")
    save_clip_tokenizer(MODEL_DIR / "tokenizer", pad_token="<|endoftext|>", model_max_length=77)
    info = dict(step=ck["step"], train_minutes=round(ck["elapsed"] / 60, 1))
    (MODEL_DIR / "training_info.json").write_text(json.dumps(info, indent=1) + "\n")
    size = sum(p.stat().st_size for p in MODEL_DIR.rglob("*") if p.is_file())
    log(f"exported EMA weights of step {ck['step']} to {MODEL_DIR} ({size / 1e6:.1f} MB)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-min", type=float, default=75.0,
                    help="wall-clock training minutes the LR schedule decays over")
    ap.add_argument("--max-steps", type=int, default=100000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=8e-4)
    ap.add_argument("--n-images", type=int, default=16000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=600)
    ap.add_argument("--te-warmup", type=int, default=200)
    ap.add_argument("--export", action="store_true")
    args = ap.parse_args()
    setup_threads()
    log = Log(RUN / "log.txt")
    if args.export:
        export(log)
        return
    from diffusers import AutoencoderKL, DDPMScheduler
    torch.manual_seed(args.seed)
    tok = tokenizer()
    cache = build_cache(log, args.n_images, args.seed, tok)
    sf = cache["scaling_factor"]
    vae = AutoencoderKL.from_pretrained(VAE_DIR).eval()
    te, unet = build_models()
    aux = AuxHeads(TEXT_CONFIG["hidden_size"])
    params = list(te.parameters()) + list(unet.parameters()) + list(aux.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    ema_te, ema_unet = build_models()
    ema_te.load_state_dict(te.state_dict())
    ema_unet.load_state_dict(unet.state_dict())
    step, elapsed = 0, 0.0
    ckpt_path = RUN / "ckpt.pt"
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        te.load_state_dict(ck["te"])
        unet.load_state_dict(ck["unet"])
        aux.load_state_dict(ck["aux"])
        ema_te.load_state_dict(ck["ema_te"])
        ema_unet.load_state_dict(ck["ema_unet"])
        opt.load_state_dict(ck["opt"])
        step, elapsed = ck["step"], ck["elapsed"]
        log(f"resumed at step {step} ({elapsed / 60:.1f} min trained)")
    else:
        log(f"text encoder {sum(p.numel() for p in te.parameters()) / 1e6:.2f}M params, "
            f"UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M params")
        # warm-up of the text encoder alone on the attribute heads
        t0 = time.time()
        topt = torch.optim.AdamW(list(te.parameters()) + list(aux.parameters()), lr=2e-3)
        g = torch.Generator().manual_seed(args.seed)
        for i in range(args.te_warmup):
            idx = torch.randint(0, len(cache["ids"]), (32,), generator=g)
            out = te(cache["ids"][idx])
            l = aux(out.pooler_output, cache["labels"][idx])
            topt.zero_grad()
            l.backward()
            topt.step()
        log(f"text-encoder warm-up: aux loss {l.item():.4f} after {args.te_warmup} steps, {time.time() - t0:.0f}s")
        ema_te.load_state_dict(te.state_dict())
    ema_params = list(ema_te.parameters()) + list(ema_unet.parameters())
    live_params = list(te.parameters()) + list(unet.parameters())
    ddpm = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items()
                            if k not in ("set_alpha_to_one", "timestep_spacing")})
    ac = ddpm.alphas_cumprod
    snr = ac / (1 - ac)
    mse_w = torch.clamp(snr, max=5.0) / snr
    empty_ids = tokenize(tok, [""])[0]
    g = torch.Generator().manual_seed(args.seed * 7919 + step)
    N = len(cache["ids"])
    budget = args.budget_min * 60
    last = time.time()
    run_loss = None
    while step < args.max_steps:
        prog = min(1.0, elapsed / budget)
        lr = args.lr * min(1.0, (step + 1) / 200) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * prog)))
        for pg in opt.param_groups:
            pg["lr"] = lr
        idx = torch.randint(0, N, (args.batch,), generator=g)
        z = cache["mean"][idx] + cache["std"][idx] * torch.randn(cache["mean"][idx].shape, generator=g)
        z = z * sf
        ids = cache["ids"][idx].clone()
        drop = torch.rand(args.batch, generator=g) < 0.1
        ids[drop] = empty_ids
        noise = torch.randn(z.shape, generator=g) + 0.1 * torch.randn(z.shape[0], z.shape[1], 1, 1, generator=g)
        t = torch.randint(0, 1000, (args.batch,), generator=g)
        zt = ddpm.add_noise(z, noise, t)
        out = te(ids)
        pred = unet(zt, t, out.last_hidden_state).sample
        dl = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        dl = (dl * mse_w[t]).mean()
        keep = ~drop
        al = aux(out.pooler_output[keep], cache["labels"][idx][keep]) if keep.any() else 0.0
        loss = dl + 0.1 * al
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_mul_(ema_params, decay)
            torch._foreach_add_(ema_params, live_params, alpha=1 - decay)
        now = time.time()
        elapsed += now - last
        last = now
        run_loss = dl.item() if run_loss is None else 0.98 * run_loss + 0.02 * dl.item()
        if step % 50 == 0:
            log(f"step {step} diff-loss {run_loss:.4f} aux {float(al):.3f} lr {lr:.2e} "
                f"{elapsed / max(step, 1):.2f}s/step elapsed {elapsed / 60:.1f}min")
        if step % 100 == 0:
            save_atomic(dict(te=te.state_dict(), unet=unet.state_dict(), aux=aux.state_dict(),
                             ema_te=ema_te.state_dict(), ema_unet=ema_unet.state_dict(),
                             opt=opt.state_dict(), step=step, elapsed=elapsed,
                             args=vars(args)), ckpt_path)
        if args.eval_every and step % args.eval_every == 0:
            t0 = time.time()
            quick_eval(ema_te.eval(), ema_unet.eval(), vae, tok, log, step)
            ema_te.train()
            ema_unet.train()
            last += time.time() - t0  # eval time is not training time
        if elapsed >= budget:
            break
    save_atomic(dict(te=te.state_dict(), unet=unet.state_dict(), aux=aux.state_dict(),
                     ema_te=ema_te.state_dict(), ema_unet=ema_unet.state_dict(),
                     opt=opt.state_dict(), step=step, elapsed=elapsed, args=vars(args)), ckpt_path)
    log(f"UNet training stopped at step {step}, {elapsed / 60:.1f} min of training")


if __name__ == "__main__":
    main()
