"""CLIP prompt tokenizer for the runtime: numpy + the ``tokenizers`` package, no torch/transformers.

:class:`ClipTokenizer` reads a Stable Diffusion ``tokenizer/`` folder (``vocab.json`` +
``merges.txt`` or ``tokenizer.json``, and ``tokenizer_config.json`` and/or
``special_tokens_map.json``) and produces exactly the ids of::

    transformers.CLIPTokenizer.from_pretrained(dir)(
        prompts, padding="max_length", max_length=77, truncation=True).input_ids

It builds the same ``tokenizers.Tokenizer`` as transformers' CLIP tokenizer (byte-level BPE
with ``</w>`` word suffix, NFC + whitespace-collapse + lowercase normalizer, CLIP's split
regex), registers the special tokens the way transformers 5 does (so SD 2.x's ``"!"`` pad
token is matched as a special token inside prompts too, like in transformers/diffusers), and
adds BOS/EOS/padding itself in numpy. No state is changed per call, so one instance can be
shared by concurrent threads.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

from sdrt.errors import ArtifactError

__all__ = ["ClipTokenizer", "PromptTruncatedWarning"]

# transformers' CLIPTokenizer split pattern (transformers 5 adds the two special tokens).
_SPLIT_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)
_DEFAULT_BOS = "<|startoftext|>"
_DEFAULT_EOS = "<|endoftext|>"
_DEFAULT_MAX_LENGTH = 77
# Order in which transformers registers named special tokens (a later one with the same
# content replaces the flags of an earlier one, as in transformers' _post_init).
_SPECIAL_ATTRS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_REEXPORT = "re-export the model (its tokenizer folder is copied from the source pipeline's tokenizer/)"


class PromptTruncatedWarning(UserWarning):
    """A prompt had more tokens than the text encoder takes; the tail was dropped."""


def _byte_symbols() -> set[str]:
    """The 256 printable characters byte-level BPE maps bytes to (GPT-2/CLIP bytes_to_unicode)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = [b for b in range(256) if b not in bs]
    return {chr(b) for b in bs} | {chr(256 + i) for i in range(len(extra))}


def _read_json(path: Path, *, required: bool) -> Any:
    if not path.is_file():
        if required:
            raise ArtifactError(f"tokenizer file {path} is missing: {_REEXPORT}")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"tokenizer file {path} is corrupt ({e}): {_REEXPORT}") from e


def _read_merges(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise ArtifactError(f"tokenizer file {path} is missing: {_REEXPORT}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ArtifactError(f"tokenizer file {path} is corrupt ({e}): {_REEXPORT}") from e
    merges: list[tuple[str, str]] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if lineno == 1 and line.startswith("#version"):
            continue
        line = line.rstrip("\r")
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ArtifactError(
                f"tokenizer file {path} is corrupt (line {lineno} is {line[:60]!r}, expected two "
                f"space-separated symbols): {_REEXPORT}"
            )
        merges.append((parts[0], parts[1]))
    if not merges:
        raise ArtifactError(f"tokenizer file {path} holds no merges: {_REEXPORT}")
    return merges


def _bpe_from_tokenizer_json(tj: Any, path: Path) -> tuple[Any, list[tuple[str, str]]]:
    """(vocab, merges) of a transformers-saved CLIP ``tokenizer.json`` (BPE with ``</w>``)."""
    model = tj.get("model") if isinstance(tj, dict) else None
    if not isinstance(model, dict) or model.get("type", "BPE") != "BPE" or "vocab" not in model:
        raise ArtifactError(f"tokenizer file {path} is corrupt or not a BPE tokenizer: {_REEXPORT}")
    if model.get("end_of_word_suffix") != "</w>":
        raise ArtifactError(
            f"tokenizer file {path} is not a CLIP tokenizer (end_of_word_suffix "
            f"{model.get('end_of_word_suffix')!r}, expected '</w>'): {_REEXPORT}"
        )
    merges: list[tuple[str, str]] = []
    for m in model.get("merges") or []:
        parts = m.split(" ") if isinstance(m, str) else m
        if not isinstance(parts, (list, tuple)) or len(parts) != 2 or not all(isinstance(x, str) and x for x in parts):
            raise ArtifactError(f"tokenizer file {path} is corrupt (merge {m!r}): {_REEXPORT}")
        merges.append((parts[0], parts[1]))
    if not merges:
        raise ArtifactError(f"tokenizer file {path} holds no merges: {_REEXPORT}")
    return model["vocab"], merges


def _token_spec(value: Any, *, default_normalized: bool, where: Path) -> tuple[str, bool] | None:
    """(content, normalized) of a special-token entry: a string or a serialized AddedToken."""
    if value is None:
        return None
    if isinstance(value, str):
        # transformers registers plain-string special tokens with normalized=False.
        return value, False
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"], bool(value.get("normalized", default_normalized))
    raise ArtifactError(f"tokenizer file {where} has an unreadable special token {value!r}: {_REEXPORT}")


class ClipTokenizer:
    """CLIP BPE tokenizer producing padded ``int64`` id arrays for the text encoder."""

    def __init__(
        self,
        vocab: dict[str, int],
        merges: list[tuple[str, str]],
        *,
        bos_token: str = _DEFAULT_BOS,
        eos_token: str = _DEFAULT_EOS,
        unk_token: str = _DEFAULT_EOS,
        pad_token: str = _DEFAULT_EOS,
        max_length: int = _DEFAULT_MAX_LENGTH,
        special_tokens: list[tuple[str, bool]] | None = None,
        source: str = "tokenizer",
    ) -> None:
        """Build from an in-memory vocabulary; most callers want :meth:`from_dir`.

        ``special_tokens`` lists ``(content, normalized)`` pairs registered as special
        (added) tokens in that order; by default bos, eos, unk and pad with normalized=False.
        """
        for name, tok in (("bos", bos_token), ("eos", eos_token), ("unk", unk_token), ("pad", pad_token)):
            if tok not in vocab:
                raise ArtifactError(f"{source}: {name} token {tok!r} is not in the vocabulary: {_REEXPORT}")
        if not isinstance(max_length, int) or max_length < 2:
            raise ArtifactError(f"{source}: model_max_length {max_length!r} is not an int >= 2: {_REEXPORT}")
        try:
            model = BPE(
                vocab=vocab,
                merges=merges,
                dropout=None,
                continuing_subword_prefix="",
                end_of_word_suffix="</w>",
                fuse_unk=False,
                unk_token=unk_token,
            )
        except Exception as e:  # tokenizers raises plain Exception on inconsistent vocab/merges
            raise ArtifactError(
                f"{source}: the vocabulary and merges (vocab.json/merges.txt or tokenizer.json) are "
                f"inconsistent ({e}): {_REEXPORT}"
            ) from e
        tok = Tokenizer(model)
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        if special_tokens is None:
            special_tokens = [(bos_token, False), (eos_token, False), (unk_token, False), (pad_token, False)]
        for content, normalized in special_tokens:
            tok.add_special_tokens(
                [AddedToken(content, single_word=False, lstrip=False, rstrip=False, normalized=normalized, special=True)]
            )
        self._tokenizer = tok
        self.max_length: int = max_length
        self.bos_token_id: int = int(vocab[bos_token])
        self.eos_token_id: int = int(vocab[eos_token])
        self.pad_token_id: int = int(vocab[pad_token])
        self.unk_token_id: int = int(vocab[unk_token])
        self.pad_token: str = pad_token
        self.vocab_size: int = len(vocab)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dir(cls, tokenizer_dir) -> "ClipTokenizer":
        """Load a transformers-style CLIP tokenizer folder (as in SD's ``tokenizer/``).

        Needs ``vocab.json`` and ``merges.txt`` -- or ``tokenizer.json``, which is what
        transformers 5's ``save_pretrained`` writes and which, like transformers, takes
        precedence when present -- plus ``tokenizer_config.json`` and/or
        ``special_tokens_map.json`` (which say the pad token: ``"<|endoftext|>"`` for SD 1.x,
        ``"!"`` for SD 2.x). Missing or corrupt files raise :class:`ArtifactError`.
        """
        d = Path(tokenizer_dir)
        if not d.is_dir():
            raise ArtifactError(f"tokenizer folder {d} is missing: {_REEXPORT}")
        tokenizer_json = _read_json(d / "tokenizer.json", required=False)
        if tokenizer_json is not None:
            # transformers 5's save_pretrained writes only tokenizer.json (+ tokenizer_config.json),
            # and when it is present transformers takes vocab and merges from it.
            vocab, merges = _bpe_from_tokenizer_json(tokenizer_json, d / "tokenizer.json")
            vocab_path, merges_path = d / "tokenizer.json", d / "tokenizer.json"
        else:
            vocab = _read_json(d / "vocab.json", required=True)
            merges = _read_merges(d / "merges.txt")
            vocab_path, merges_path = d / "vocab.json", d / "merges.txt"
        if (
            not isinstance(vocab, dict)
            or not vocab
            or not all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in vocab.items())
        ):
            raise ArtifactError(
                f"tokenizer file {vocab_path} is corrupt (expected a vocabulary of token -> id): {_REEXPORT}"
            )
        if len(set(vocab.values())) != len(vocab):
            raise ArtifactError(f"tokenizer file {vocab_path} is corrupt (duplicate ids): {_REEXPORT}")

        config = _read_json(d / "tokenizer_config.json", required=False)
        special_map = _read_json(d / "special_tokens_map.json", required=False)
        if config is None and special_map is None:
            raise ArtifactError(
                f"tokenizer folder {d} has neither tokenizer_config.json nor special_tokens_map.json "
                f"(they say which pad token the model uses): {_REEXPORT}"
            )
        for name, obj in (("tokenizer_config.json", config), ("special_tokens_map.json", special_map)):
            if obj is not None and not isinstance(obj, dict):
                raise ArtifactError(f"tokenizer file {d / name} is corrupt (expected a JSON object): {_REEXPORT}")
        config = config or {}
        added_tokens_file = _read_json(d / "added_tokens.json", required=False)
        if isinstance(added_tokens_file, dict) and any(t not in vocab for t in added_tokens_file):
            raise ArtifactError(
                f"tokenizer file {d / 'added_tokens.json'} adds tokens beyond the CLIP vocabulary "
                f"(e.g. textual-inversion tokens), which the runtime tokenizer does not support"
            )

        # Resolve the special tokens as transformers 5's from_pretrained does: the config's
        # added_tokens_decoder, if any, describes the added tokens (and special_tokens_map.json is
        # not read); otherwise special_tokens_map.json overrides the config's *_token entries and
        # tokenizer.json's added_tokens give the flags of tokens with the same content.
        cfg_path = d / "tokenizer_config.json"
        entries: dict[str, tuple[str, bool]] = {}
        added_by_content: dict[str, tuple[str, bool]] = {}
        extra: list[tuple[str, bool]] = []

        def add_added(idx: Any, spec: Any, where: Path) -> None:
            parsed = _token_spec(spec, default_normalized=True, where=where)
            try:
                idx = int(idx)
            except (TypeError, ValueError):
                parsed = None
            if parsed is None:
                raise ArtifactError(f"tokenizer file {where} has an unreadable added token {spec!r}: {_REEXPORT}")
            if vocab.get(parsed[0]) != idx:
                raise ArtifactError(
                    f"tokenizer file {where}: added token {parsed[0]!r} has id {idx} but the vocabulary "
                    f"gives {vocab.get(parsed[0])}: {_REEXPORT}"
                )
            added_by_content[parsed[0]] = parsed

        added_decoder = config.get("added_tokens_decoder")
        if isinstance(added_decoder, dict) and added_decoder:
            for idx, spec in added_decoder.items():
                add_added(idx, spec, cfg_path)
            for attr in _SPECIAL_ATTRS:
                spec = _token_spec(config.get(attr), default_normalized=True, where=cfg_path)
                if spec is not None:
                    entries[attr] = spec
        else:
            for attr in _SPECIAL_ATTRS:
                spec = _token_spec(config.get(attr), default_normalized=True, where=cfg_path)
                if spec is not None:
                    entries[attr] = spec
            for attr, value in (special_map or {}).items():
                if attr in _SPECIAL_ATTRS and value:
                    spec = _token_spec(value, default_normalized=False, where=d / "special_tokens_map.json")
                    if spec is not None:
                        entries[attr] = spec
            if tokenizer_json is not None:
                added = tokenizer_json.get("added_tokens") or []
                if not isinstance(added, list):
                    raise ArtifactError(f"tokenizer file {d / 'tokenizer.json'} is corrupt (added_tokens): {_REEXPORT}")
                for spec in added:
                    add_added(spec.get("id") if isinstance(spec, dict) else None, spec, d / "tokenizer.json")
        entries = {attr: added_by_content.get(spec[0], spec) for attr, spec in entries.items()}
        for key in ("additional_special_tokens", "extra_special_tokens"):
            values = (special_map or {}).get(key) or config.get(key) or []
            if isinstance(values, list):
                for v in values:
                    spec = _token_spec(v, default_normalized=False, where=cfg_path)
                    if spec is not None:
                        extra.append(added_by_content.get(spec[0], spec))

        def content(attr: str, default: str) -> str:
            return entries[attr][0] if attr in entries else default

        bos = content("bos_token", _DEFAULT_BOS)
        eos = content("eos_token", _DEFAULT_EOS)
        unk = content("unk_token", _DEFAULT_EOS)
        pad = content("pad_token", _DEFAULT_EOS)
        # CLIPTokenizer's constructor defaults, for entries the files leave out.
        defaults = {"bos_token": (bos, False), "eos_token": (eos, False), "unk_token": (unk, False), "pad_token": (pad, False)}
        specials = list(added_by_content.values())
        specials += [entries.get(a, defaults.get(a)) for a in _SPECIAL_ATTRS if a in entries or a in defaults]
        specials += extra
        for c, _ in specials:
            if c not in vocab:
                raise ArtifactError(f"{d}: special token {c!r} is not in the vocabulary: {_REEXPORT}")

        # Byte-level BPE: each vocab entry that is not a byte symbol (optionally + "</w>") or a
        # special token comes from one merge, so fewer merges than that means a truncated file.
        base = _byte_symbols()
        special_contents = {c for c, _ in specials}
        derived = sum(
            1 for t in vocab if t not in special_contents and t not in base and not (t.endswith("</w>") and t[:-4] in base)
        )
        if len(merges) < derived:
            raise ArtifactError(
                f"tokenizer file {merges_path} looks truncated: {len(merges)} merges for "
                f"{derived} merged tokens in the vocabulary: {_REEXPORT}"
            )

        max_length = config.get("model_max_length", _DEFAULT_MAX_LENGTH)
        if type(max_length) is float and max_length.is_integer():
            max_length = int(max_length)
        if type(max_length) is not int or max_length > 1_000_000:
            # transformers writes 1e30 ("no limit") when unset; CLIP's text encoder takes 77.
            max_length = _DEFAULT_MAX_LENGTH
        return cls(
            vocab,
            merges,
            bos_token=bos,
            eos_token=eos,
            unk_token=unk,
            pad_token=pad,
            max_length=max_length,
            special_tokens=specials,
            source=str(d),
        )

    # ------------------------------------------------------------------ encoding
    def encode(self, prompt: str) -> list[int]:
        """Token ids of one prompt, without BOS/EOS and without truncation."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        return self._tokenizer.encode(prompt, add_special_tokens=False).ids

    def __call__(self, prompts: list[str]) -> np.ndarray:
        """``int64`` ids of shape ``(len(prompts), max_length)``: BOS, tokens, EOS, then pad.

        Prompts with more than ``max_length - 2`` tokens are cut to that many (EOS stays the
        last id) and a :class:`PromptTruncatedWarning` says how many tokens were dropped.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        room = self.max_length - 2
        out = np.full((len(prompts), self.max_length), self.pad_token_id, dtype=np.int64)
        for i, prompt in enumerate(prompts):
            ids = self.encode(prompt)
            if len(ids) > room:
                dropped = ids[room:]
                ids = ids[:room]
                self._warn_truncated(i, len(prompts), dropped)
            n = len(ids)
            out[i, 0] = self.bos_token_id
            out[i, 1 : 1 + n] = ids
            out[i, 1 + n] = self.eos_token_id
        return out

    def decode(self, ids) -> str:
        """Text of token ids (special tokens kept), words separated by single spaces."""
        text = self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)
        return " ".join(text.replace("</w>", " ").split())

    def _warn_truncated(self, index: int, batch: int, dropped: list[int]) -> None:
        tail = self.decode(dropped)
        if len(tail) > 120:
            tail = "..." + tail[-117:]
        which = f"prompt {index} of {batch}" if batch > 1 else "prompt"
        warnings.warn(
            f"{which} truncated to {self.max_length} tokens: {len(dropped)} tokens dropped ({tail!r}); "
            f"the text encoder sees at most {self.max_length - 2} prompt tokens",
            PromptTruncatedWarning,
            stacklevel=3,
        )

    def __repr__(self) -> str:
        return (
            f"ClipTokenizer(vocab_size={self.vocab_size}, max_length={self.max_length}, "
            f"pad_token={self.pad_token!r})"
        )
