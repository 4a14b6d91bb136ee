"""Procedural captioned shapes: the data set, the caption grammar, the held-out split
and the pixel-level scorer used by the VAE check, the evaluation and the test.

Caption grammar:  ``a {colour} {shape} on a {colour} background`` optionally followed by
``, {position}`` (top left / top right / bottom left / bottom right).  Without a position
suffix the shape is centred.  Sizes vary at random within a range (not in the caption).

Held out from training: twelve whole (shape colour, shape, background) triples, in every
position.  Each held-out triple's pairs (colour+shape, colour+background, shape+background)
and every single word still occur in training, so the evaluation measures composition.
"""
from __future__ import annotations

import itertools
import random

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64

# RGB values the generator paints with; the scorer classifies to the nearest of these.
PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
}
SHAPE_COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
BACKGROUNDS = ["white", "black", "gray", "blue"]
SHAPES = ["circle", "square", "triangle"]
POSITIONS = [None, "top left", "top right", "bottom left", "bottom right"]

# (shape colour, shape, background) never shown in training in any position.
HELD_OUT = [
    ("red", "circle", "gray"),
    ("red", "triangle", "blue"),
    ("green", "square", "white"),
    ("green", "circle", "black"),
    ("blue", "triangle", "gray"),
    ("blue", "square", "black"),
    ("yellow", "square", "blue"),
    ("yellow", "triangle", "black"),
    ("purple", "circle", "white"),
    ("purple", "square", "gray"),
    ("orange", "triangle", "white"),
    ("orange", "circle", "blue"),
]

ALL_TRIPLES = [
    (c, s, b) for c, s, b in itertools.product(SHAPE_COLOURS, SHAPES, BACKGROUNDS) if c != b
]
TRAIN_TRIPLES = [t for t in ALL_TRIPLES if t not in HELD_OUT]


def caption(colour: str, shape: str, background: str, position: str | None) -> str:
    text = f"a {colour} {shape} on a {background} background"
    return text + (f", {position}" if position else "")


def eval_prompts() -> list[dict]:
    """60 held-out prompts: each held-out triple at every position."""
    out = []
    for c, s, b in HELD_OUT:
        for p in POSITIONS:
            out.append(dict(colour=c, shape=s, background=b, position=p,
                            prompt=caption(c, s, b, p)))
    return out


def _centre_and_half(position: str | None, rng: random.Random) -> tuple[float, float, float]:
    if position is None:
        half = rng.uniform(11, 19)
        cx = SIZE / 2 + rng.uniform(-2, 2)
        cy = SIZE / 2 + rng.uniform(-2, 2)
    else:
        half = rng.uniform(7, 11)
        cx = (17 if "left" in position else SIZE - 17) + rng.uniform(-2, 2)
        cy = (17 if "top" in position else SIZE - 17) + rng.uniform(-2, 2)
    return cx, cy, half


def render(colour: str, shape: str, background: str, position: str | None,
           rng: random.Random) -> np.ndarray:
    """uint8 HxWx3 image, drawn at 4x and box-downsampled (anti-aliased edges)."""
    ss = 4
    cx, cy, half = _centre_and_half(position, rng)
    img = Image.new("RGB", (SIZE * ss, SIZE * ss), PALETTE[background])
    d = ImageDraw.Draw(img)
    fill = PALETTE[colour]
    x0, y0, x1, y1 = [(v) * ss for v in (cx - half, cy - half, cx + half, cy + half)]
    if shape == "circle":
        d.ellipse([x0, y0, x1, y1], fill=fill)
    elif shape == "square":
        d.rectangle([x0, y0, x1, y1], fill=fill)
    elif shape == "triangle":
        d.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(shape)
    img = img.resize((SIZE, SIZE), Image.BOX)
    return np.asarray(img, dtype=np.uint8)


def sample(rng: random.Random, triples=None) -> tuple[np.ndarray, str, dict]:
    """One random training example (image, caption, attributes)."""
    triples = TRAIN_TRIPLES if triples is None else triples
    c, s, b = rng.choice(triples)
    p = rng.choice(POSITIONS)
    return render(c, s, b, p, rng), caption(c, s, b, p), dict(colour=c, shape=s, background=b, position=p)


def make_dataset(n: int, seed: int, triples=None):
    rng = random.Random(seed)
    imgs, caps, attrs = [], [], []
    for _ in range(n):
        im, cap, a = sample(rng, triples)
        imgs.append(im)
        caps.append(cap)
        attrs.append(a)
    return np.stack(imgs), caps, attrs


# ----------------------------------------------------------------------------- scoring
_NAMES = list(PALETTE)
_RGB = np.array([PALETTE[k] for k in _NAMES], dtype=np.float32)


def nearest_colour(rgb, allowed=None) -> str:
    names = _NAMES if allowed is None else list(allowed)
    pal = np.array([PALETTE[k] for k in names], dtype=np.float32)
    d = ((pal - np.asarray(rgb, dtype=np.float32)[None]) ** 2).sum(1)
    return names[int(d.argmin())]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """4-connected largest component of a boolean mask (pure numpy/python flood fill)."""
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    best, best_n, cur = 0, 0, 0
    ys, xs = np.nonzero(mask)
    for y0, x0 in zip(ys, xs):
        if labels[y0, x0]:
            continue
        cur += 1
        stack = [(y0, x0)]
        labels[y0, x0] = cur
        n = 0
        while stack:
            y, x = stack.pop()
            n += 1
            for yy, xx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not labels[yy, xx]:
                    labels[yy, xx] = cur
                    stack.append((yy, xx))
        if n > best_n:
            best, best_n = cur, n
    return labels == best if best else np.zeros_like(mask)


def score_image(img: np.ndarray) -> dict:
    """Read background colour, shape colour and shape type from pixels alone.

    background: median of a 3-pixel border frame -> nearest palette colour.
    shape colour: pixels farther than 80 (RGB distance) from that median, largest 4-connected
    component, median of its 1-pixel-eroded interior -> nearest palette colour.
    shape outline: the 50% iso-contour between background and shape colour (each pixel projected
    on the background->shape colour line, > 0.5), largest component; so blurred edges count half.
    shape type: a triangle (apex up) is narrow at the top: width at 25% of the height < 0.6 x
    width at 75%; otherwise fill ratio in the bounding box >= 0.88 is a square, else a circle.
    """
    x = np.asarray(img, dtype=np.float32)[..., :3]
    border = np.concatenate([x[:3].reshape(-1, 3), x[-3:].reshape(-1, 3),
                             x[:, :3].reshape(-1, 3), x[:, -3:].reshape(-1, 3)])
    bg_rgb = np.median(border, axis=0)
    out = dict(background=nearest_colour(bg_rgb), shape_colour=None, shape=None, fill=None,
               area=0)
    dist = np.sqrt(((x - bg_rgb) ** 2).sum(-1))
    mask = _largest_component(dist > 80)
    if mask.sum() < 20:
        return out
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    px = x[inner] if inner.sum() >= 5 else x[mask]
    fg_rgb = np.median(px, axis=0)
    out["shape_colour"] = nearest_colour(fg_rgb)
    axis = fg_rgb - bg_rgb
    proj = ((x - bg_rgb) * axis).sum(-1) / max(float((axis ** 2).sum()), 1e-6)
    shape = _largest_component(proj > 0.5)
    area = int(shape.sum())
    out["area"] = area
    if area < 12:
        return out
    ys, xs = np.nonzero(shape)
    y0, y1 = ys.min(), ys.max()
    bbox = (y1 - y0 + 1) * (xs.max() - xs.min() + 1)
    fill = area / bbox
    widths = shape.sum(1)
    h = y1 - y0
    w25 = widths[int(round(y0 + 0.25 * h))]
    w75 = widths[int(round(y0 + 0.75 * h))]
    taper = float(w25) / max(float(w75), 1.0)
    out["fill"] = round(float(fill), 3)
    out["taper"] = round(taper, 3)
    out["shape"] = "triangle" if taper < 0.6 else ("square" if fill >= 0.88 else "circle")
    return out


def judge(img: np.ndarray, want: dict) -> dict:
    s = score_image(img)
    return dict(read=s,
                background=s["background"] == want["background"],
                shape_colour=s["shape_colour"] == want["colour"],
                shape=s["shape"] == want["shape"])


if __name__ == "__main__":
    # Self-check: the scorer reads the generator's own images (train and held-out) correctly.
    rng = random.Random(0)
    tot = dict(background=0, shape_colour=0, shape=0)
    n = 0
    for triples in (TRAIN_TRIPLES, HELD_OUT):
        for _ in range(600):
            im, cap, a = sample(rng, triples)
            j = judge(im, a)
            n += 1
            for k in tot:
                tot[k] += j[k]
            if not all(j[k] for k in tot):
                print("MISREAD", cap, j["read"])
    print(f"{len(ALL_TRIPLES)} triples, {len(TRAIN_TRIPLES)} train, {len(HELD_OUT)} held out")
    print({k: v / n for k, v in tot.items()})
