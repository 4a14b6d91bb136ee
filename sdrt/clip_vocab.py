"""The real CLIP BPE vocabulary, shipped with sdrt, and a writer for SD-style tokenizer folders.

``sdrt/data/clip_bpe/{vocab.json,merges.txt}`` are derived offline from open_clip's
``bpe_simple_vocab_16e6.txt.gz`` by ``scripts/derive_clip_vocab.py`` and are identical in
content to ``openai/clip-vit-large-patch14``'s tokenizer files.

Used by fixture and training code (to build tokenizer folders without a model hub); the
runtime never imports this module. Nothing here imports transformers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

__all__ = ["clip_bpe_dir", "save_clip_tokenizer", "SD1_PAD_TOKEN", "SD2_PAD_TOKEN"]

SD1_PAD_TOKEN = "<|endoftext|>"  # SD 1.x (openai/clip-vit-large-patch14)
SD2_PAD_TOKEN = "!"  # SD 2.x (laion/CLIP-ViT-H-14 via open_clip, id 0)

_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"


def clip_bpe_dir() -> Path:
    """Folder holding the packaged CLIP ``vocab.json`` and ``merges.txt``."""
    return Path(__file__).resolve().parent / "data" / "clip_bpe"


def _added_token(content: str) -> dict:
    # The same serialisation SD's tokenizer folders use for bos/eos/unk.
    return {
        "content": content,
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    }


def save_clip_tokenizer(
    dst_dir,
    *,
    pad_token: str = SD1_PAD_TOKEN,
    model_max_length: int = 77,
) -> None:
    """Write a transformers-loadable CLIP tokenizer folder, laid out like SD's ``tokenizer/``.

    Writes ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` and
    ``special_tokens_map.json`` into ``dst_dir`` (created if needed). Stable Diffusion 1.x
    pads with ``"<|endoftext|>"`` (the default), SD 2.x with ``"!"``. The folder loads with
    ``transformers.CLIPTokenizer.from_pretrained(dst_dir)``, with diffusers pipelines'
    ``from_pretrained`` (as their ``tokenizer`` subfolder) and with
    :meth:`sdrt.runtime.tokenizer.ClipTokenizer.from_dir`.
    """
    src = clip_bpe_dir()
    for name in ("vocab.json", "merges.txt"):
        if not (src / name).is_file():
            raise FileNotFoundError(
                f"{src / name} is missing: regenerate it with `python scripts/derive_clip_vocab.py`"
            )
    if not isinstance(pad_token, str) or not pad_token:
        raise ValueError(f"pad_token must be a non-empty string, got {pad_token!r}")
    vocab = json.loads((src / "vocab.json").read_text(encoding="utf-8"))
    if pad_token not in vocab:
        raise ValueError(f"pad_token {pad_token!r} is not in the CLIP vocabulary")
    if not isinstance(model_max_length, int) or model_max_length < 2:
        raise ValueError(f"model_max_length must be an int >= 2, got {model_max_length!r}")

    dst = Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(src / name, dst / name)

    special_tokens_map = {
        "bos_token": _added_token(_BOS),
        "eos_token": _added_token(_EOS),
        "pad_token": pad_token,
        "unk_token": _added_token(_EOS),
    }
    tokenizer_config = {
        "add_prefix_space": False,
        "bos_token": {"__type": "AddedToken", **_added_token(_BOS)},
        "do_lower_case": True,
        "eos_token": {"__type": "AddedToken", **_added_token(_EOS)},
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": pad_token,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": {"__type": "AddedToken", **_added_token(_EOS)},
    }
    (dst / "special_tokens_map.json").write_text(
        json.dumps(special_tokens_map, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    (dst / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
