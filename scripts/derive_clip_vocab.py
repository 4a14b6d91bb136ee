#!/usr/bin/env python3
"""Derive the CLIP BPE tokenizer files (vocab.json + merges.txt) offline.

OpenAI CLIP's tokenizer -- the one every Stable Diffusion text encoder uses, and the one
shipped as ``openai/clip-vit-large-patch14``'s ``vocab.json``/``merges.txt`` -- is fully
determined by ``bpe_simple_vocab_16e6.txt.gz``, which the ``open_clip_torch`` wheel on PyPI
ships as ``open_clip/bpe_simple_vocab_16e6.txt.gz``. This script rebuilds the vocabulary
exactly as CLIP's ``simple_tokenizer.SimpleTokenizer`` does:

* merges = lines[1 : 49152 - 256 - 2 + 1] of the text file (the first 48,894 merges);
* vocab  = the 256 byte-to-unicode symbols, the same 256 with ``</w>`` appended, one entry
  per merge (the concatenation of its two halves), then ``<|startoftext|>`` and
  ``<|endoftext|>`` -- ids 0..49407;

and writes them in the Hugging Face layout: ``vocab.json`` as a single-line JSON object
with sorted keys (non-ASCII characters written as-is), ``merges.txt`` as
``#version: 0.2`` followed by one merge per line.

Usage::

    python scripts/derive_clip_vocab.py [PATH/TO/bpe_simple_vocab_16e6.txt.gz] [--out DIR]

Without a path the ``open_clip_torch`` wheel is fetched with
``pip download --no-deps open_clip_torch`` into a temporary folder and the file is read
from it with :mod:`zipfile`. ``--out`` defaults to ``sdrt/data/clip_bpe`` in this checkout.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

VOCAB_SIZE = 49408
N_MERGES = 49152 - 256 - 2  # 48,894
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
WHEEL_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "sdrt" / "data" / "clip_bpe"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode character table (256 entries)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def read_bpe_text(gz_path: Path | None) -> str:
    """Text of bpe_simple_vocab_16e6.txt, from the .gz at ``gz_path`` or from the PyPI wheel."""
    if gz_path is not None:
        return gzip.decompress(Path(gz_path).read_bytes()).decode("utf-8")
    with tempfile.TemporaryDirectory(prefix="open_clip_wheel_") as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "open_clip_torch", "-d", tmp],
            check=True,
        )
        wheels = sorted(Path(tmp).glob("open_clip_torch-*.whl"))
        if not wheels:
            raise SystemExit(f"pip download left no open_clip_torch wheel in {tmp}")
        with zipfile.ZipFile(wheels[-1]) as zf:
            print(f"reading {WHEEL_MEMBER} from {wheels[-1].name}", file=sys.stderr)
            return gzip.decompress(zf.read(WHEEL_MEMBER)).decode("utf-8")


def derive(bpe_text: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab token -> id, merges in rank order), exactly as CLIP's SimpleTokenizer builds them."""
    lines = bpe_text.split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
        raise SystemExit(f"unexpected BPE file: {len(merges)} merges, expected {N_MERGES} pairs")
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += ["".join(m) for m in merges]
    tokens += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE or len(tokens) != VOCAB_SIZE:
        raise SystemExit(f"vocab has {len(vocab)} unique tokens of {len(tokens)}, expected {VOCAB_SIZE}")
    return vocab, merges  # type: ignore[return-value]


def write(out_dir: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    # Same serialisation as openai/clip-vit-large-patch14's vocab.json: one line, sorted keys.
    (out_dir / "vocab.json").write_text(
        json.dumps(vocab, sort_keys=True, ensure_ascii=False), encoding="utf-8"
    )
    with open(out_dir / "merges.txt", "w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bpe_gz", nargs="?", type=Path, help="path of bpe_simple_vocab_16e6.txt.gz")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    vocab, merges = derive(read_bpe_text(args.bpe_gz))
    write(args.out, vocab, merges)
    print(f"wrote {args.out / 'vocab.json'} ({len(vocab)} tokens) and "
          f"{args.out / 'merges.txt'} ({len(merges)} merges)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
