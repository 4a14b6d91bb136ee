"""Runtime CLIP tokenizer: exact parity with transformers, truncation, errors, no torch import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from sdrt.clip_vocab import clip_bpe_dir, save_clip_tokenizer
from sdrt.errors import ArtifactError, SdrtError
from sdrt.runtime.tokenizer import ClipTokenizer, PromptTruncatedWarning

ASTRONAUT = "a photo of an astronaut riding a horse"
ASTRONAUT_IDS = [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 49407]
BOS, EOS = 49406, 49407
PADS = {"sd1": ("<|endoftext|>", 49407), "sd2": ("!", 0)}

PROMPTS = [
    ASTRONAUT,
    "A PHOTO OF AN ASTRONAUT RIDING A HORSE",
    "A Photo Of An Astronaut, Riding A Horse.",
    "don't stop believin' -- it's what we're told, y'all'll see; I'd've I'm",
    "DON'T Won't SHE'S",
    "  multiple   spaces\tand\ttabs\nand\n\nnewlines  ",
    "",
    " ",
    "!",
    "wow!! amazing!!! really?! (yes) [no] {maybe}",
    "hello!world !leading trailing!",
    "1234567890 3.14159 1,000,000 2nd 21st 1990s 4k 8k uhd 16:9",
    "café naïve résumé Ωmega façade Zürich São Paulo",
    "e\u0301 (combining accent, NFC) vs \u00e9",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "Привет мир, γειά σου κόσμε, مرحبا بالعالم, שלום עולם",
    "emoji 😀🐴🚀 👩‍🚀 ❤️ 🇯🇵 👍🏽",
    "masterpiece, best quality, ((ultra-detailed)), (illustration:1.2), [bad hands]",
    "portrait of a cat, by greg rutkowski, trending on artstation, 8k, octane render",
    "a_b-c/d\\e|f@g#h$i%j^k&l*m+n=o~p`q",
    "<|endoftext|> inside a prompt",
    "<|ENDOFTEXT|> upper-cased special token <|StartOfText|>",
    "<|startoftext|><|endoftext|>",
    "email me at someone@example.com or visit https://example.org/path?q=1",
    "ＦＵＬＬＷＩＤＴＨ text and ﬁ ligature",
    "tab\tseparated\r\nwindows line",
    "\u00a0non-breaking\u2003em space\u200bzero width",
    "it's 5 o'clock somewhere... ¯\\_(ツ)_/¯",
    "a very long prompt " + " ".join(f"word{i}" for i in range(60)),
    " ".join(["horse"] * 80),
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "Ω≈ç√∫˜µ≤≥÷ åß∂ƒ©˙∆˚¬…æ œ∑´®†¥¨ˆøπ“‘ «»",
]


@pytest.fixture(scope="module", params=sorted(PADS))
def tok_dir(request, tmp_path_factory) -> tuple[str, Path]:
    pad, _ = PADS[request.param]
    d = tmp_path_factory.mktemp(f"tok_{request.param}")
    save_clip_tokenizer(d, pad_token=pad)
    return request.param, d


@pytest.fixture(scope="module")
def sd1_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tok_sd1_plain")
    save_clip_tokenizer(d)
    return d


def _copy_dir(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


# ----------------------------------------------------------------------------- shipped data
def test_shipped_vocab_is_clip_bpe():
    d = clip_bpe_dir()
    vocab = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 49408
    assert sorted(vocab.values()) == list(range(49408))
    assert vocab["!"] == 0 and vocab["!</w>"] == 256
    assert vocab["<|startoftext|>"] == BOS and vocab["<|endoftext|>"] == EOS
    lines = (d / "merges.txt").read_text(encoding="utf-8").split("\n")
    assert lines[0] == "#version: 0.2"
    merges = [ln for ln in lines[1:] if ln]
    assert len(merges) == 49152 - 256 - 2
    assert merges[0] == "i n"
    # merge k (0-based) creates token id 512 + k
    for k in (0, 1, 1000, len(merges) - 1):
        a, b = merges[k].split(" ")
        assert vocab[a + b] == 512 + k


# ----------------------------------------------------------------------------- runtime ids
def test_astronaut_ids(tok_dir):
    name, d = tok_dir
    tok = ClipTokenizer.from_dir(d)
    pad_id = PADS[name][1]
    assert tok.max_length == 77 and tok.pad_token_id == pad_id
    assert tok.bos_token_id == BOS and tok.eos_token_id == EOS
    ids = tok([ASTRONAUT])
    assert ids.dtype == np.int64 and ids.shape == (1, 77)
    assert ids[0, : len(ASTRONAUT_IDS)].tolist() == ASTRONAUT_IDS
    assert (ids[0, len(ASTRONAUT_IDS) :] == pad_id).all()


def test_parity_with_transformers(tok_dir):
    transformers = pytest.importorskip("transformers")
    _, d = tok_dir
    hf = transformers.CLIPTokenizer.from_pretrained(str(d))
    tok = ClipTokenizer.from_dir(d)
    expected = hf(PROMPTS, padding="max_length", max_length=77, truncation=True).input_ids
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)
        got = tok(PROMPTS)
    assert got.shape == (len(PROMPTS), 77)
    for prompt, exp, row in zip(PROMPTS, expected, got.tolist()):
        assert row == exp, f"ids differ for {prompt!r}"
    # one at a time gives the same rows as the batch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)
        for prompt, row in zip(PROMPTS, got):
            assert (tok([prompt])[0] == row).all()


SPECIAL_PROMPTS = [
    "wow!! <|ENDOFTEXT|> hi <|endoftext|> <|StartOfText|> x!",
    "<|startoftext|>a!b<|endoftext|>",
    ASTRONAUT,
]


def test_parity_with_transformers_saved_dir(tok_dir, tmp_path):
    # transformers 5's save_pretrained (and so diffusers' pipe.save_pretrained) writes only
    # tokenizer.json + tokenizer_config.json; the runtime reads that layout too.
    transformers = pytest.importorskip("transformers")
    _, d = tok_dir
    transformers.CLIPTokenizer.from_pretrained(str(d)).save_pretrained(str(tmp_path / "saved"))
    assert not (tmp_path / "saved" / "vocab.json").exists()
    hf = transformers.CLIPTokenizer.from_pretrained(str(tmp_path / "saved"))
    tok = ClipTokenizer.from_dir(tmp_path / "saved")
    prompts = SPECIAL_PROMPTS + PROMPTS
    expected = hf(prompts, padding="max_length", max_length=77, truncation=True).input_ids
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)
        assert tok(prompts).tolist() == expected


@pytest.mark.parametrize("flags", [(True, True, False), (False, True, True), (True, False, True)])
@pytest.mark.parametrize("pad", ["!", "<|endoftext|>"])
def test_parity_with_added_tokens_decoder_config(tmp_path, pad, flags):
    # Newer tokenizer_config.json files describe the special tokens in added_tokens_decoder,
    # whose "normalized" flags decide whether e.g. "<|ENDOFTEXT|>" in a prompt is special.
    transformers = pytest.importorskip("transformers")
    d = tmp_path / "tok"
    save_clip_tokenizer(d, pad_token=pad)
    cfg = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))

    def added(content: str, normalized: bool) -> dict:
        return {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False,
                "single_word": False, "special": True}

    cfg["added_tokens_decoder"] = {"49406": added("<|startoftext|>", flags[0]), "49407": added("<|endoftext|>", flags[1])}
    if pad == "!":
        cfg["added_tokens_decoder"]["0"] = added("!", flags[2])
    for key in ("bos_token", "eos_token", "unk_token"):
        cfg[key] = cfg[key]["content"]
    (d / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    hf = transformers.CLIPTokenizer.from_pretrained(str(d))
    expected = hf(SPECIAL_PROMPTS, padding="max_length", max_length=77, truncation=True).input_ids
    assert ClipTokenizer.from_dir(d)(SPECIAL_PROMPTS).tolist() == expected


def test_sd2_pad_token_is_special_inside_prompts(tmp_path):
    # transformers registers SD 2.x's "!" pad token as a special token, so "!!" in a prompt
    # becomes two id-0 tokens instead of the BPE token "!!</w>"; the runtime must agree.
    save_clip_tokenizer(tmp_path / "sd2", pad_token="!")
    save_clip_tokenizer(tmp_path / "sd1")
    sd2 = ClipTokenizer.from_dir(tmp_path / "sd2")
    sd1 = ClipTokenizer.from_dir(tmp_path / "sd1")
    assert sd2.encode("wow!!") == [2781, 0, 0]
    assert sd1.encode("wow!!") == [2781, 748]


# ----------------------------------------------------------------------------- truncation
def test_truncation_warns_and_keeps_eos(sd1_dir):
    tok = ClipTokenizer.from_dir(sd1_dir)
    long_prompt = " ".join(["horse"] * 80) + " and a small red barn"  # 85 tokens
    n_tokens = len(tok.encode(long_prompt))
    assert n_tokens == 85
    with pytest.warns(PromptTruncatedWarning) as rec:
        ids = tok([ASTRONAUT, long_prompt])
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert "truncated to 77 tokens" in msg
    assert f"{n_tokens - 75} tokens dropped" in msg
    assert "small red barn" in msg
    assert ids.shape == (2, 77)
    assert ids[1, 0] == BOS and ids[1, -1] == EOS
    assert (ids[1, 1:-1] == 4558).all()  # "horse</w>"
    assert ids[0, : len(ASTRONAUT_IDS)].tolist() == ASTRONAUT_IDS


def test_exactly_75_tokens_does_not_warn(sd1_dir):
    tok = ClipTokenizer.from_dir(sd1_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptTruncatedWarning)
        ids = tok([" ".join(["horse"] * 75)])
    assert ids[0, 0] == BOS and ids[0, -1] == EOS and (ids[0, 1:-1] == 4558).all()
    with pytest.warns(PromptTruncatedWarning, match="1 tokens dropped"):
        tok([" ".join(["horse"] * 76)])


def test_truncation_parity_with_transformers(sd1_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.CLIPTokenizer.from_pretrained(str(sd1_dir))
    tok = ClipTokenizer.from_dir(sd1_dir)
    prompt = ", ".join(f"detail number {i}" for i in range(40))
    with pytest.warns(PromptTruncatedWarning):
        got = tok([prompt])
    exp = hf([prompt], padding="max_length", max_length=77, truncation=True).input_ids
    assert got.tolist() == exp


def test_empty_batch_and_types(sd1_dir):
    tok = ClipTokenizer.from_dir(sd1_dir)
    assert tok([]).shape == (0, 77)
    assert tok([""]).tolist()[0][:3] == [BOS, EOS, EOS]
    with pytest.raises(TypeError):
        tok([None])  # type: ignore[list-item]


def test_concurrent_calls_are_consistent(sd1_dir):
    tok = ClipTokenizer.from_dir(sd1_dir)
    short = [p for p in PROMPTS if len(tok.encode(p)) <= 75]
    expected = tok(short)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            rng = np.random.default_rng(seed)
            for _ in range(30):
                idx = rng.permutation(len(short))[:5]
                got = tok([short[i] for i in idx])
                assert (got == expected[idx]).all()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


# ----------------------------------------------------------------------------- errors
def test_missing_vocab_raises_artifact_error(sd1_dir, tmp_path):
    d = _copy_dir(sd1_dir, tmp_path / "tok")
    (d / "vocab.json").unlink()
    with pytest.raises(ArtifactError, match="vocab.json") as ei:
        ClipTokenizer.from_dir(d)
    assert "re-export" in str(ei.value)
    assert isinstance(ei.value, SdrtError)


def test_missing_merges_raises_artifact_error(sd1_dir, tmp_path):
    d = _copy_dir(sd1_dir, tmp_path / "tok")
    (d / "merges.txt").unlink()
    with pytest.raises(ArtifactError, match="merges.txt"):
        ClipTokenizer.from_dir(d)


def test_missing_dir_raises_artifact_error(tmp_path):
    with pytest.raises(ArtifactError, match="re-export"):
        ClipTokenizer.from_dir(tmp_path / "nope")


@pytest.mark.parametrize(
    "corrupt",
    ["three_fields", "binary", "truncated", "unknown_symbol", "empty"],
)
def test_corrupt_merges_raises_artifact_error(sd1_dir, tmp_path, corrupt):
    d = _copy_dir(sd1_dir, tmp_path / "tok")
    lines = (d / "merges.txt").read_text(encoding="utf-8").split("\n")
    if corrupt == "three_fields":
        lines[10] = "a b c"
        (d / "merges.txt").write_text("\n".join(lines), encoding="utf-8")
    elif corrupt == "binary":
        (d / "merges.txt").write_bytes(b"#version: 0.2\n\xff\xfe\x00garbage\n")
    elif corrupt == "truncated":
        (d / "merges.txt").write_text("\n".join(lines[: len(lines) // 2]), encoding="utf-8")
    elif corrupt == "unknown_symbol":
        lines[5] = "zzzzqqq xxxyyy"
        (d / "merges.txt").write_text("\n".join(lines), encoding="utf-8")
    elif corrupt == "empty":
        (d / "merges.txt").write_text("", encoding="utf-8")
    with pytest.raises(ArtifactError, match="merges.txt") as ei:
        ClipTokenizer.from_dir(d)
    assert "re-export" in str(ei.value)


@pytest.mark.parametrize("content", ["{not json", "[1, 2, 3]", '{"a": "b"}'])
def test_corrupt_vocab_raises_artifact_error(sd1_dir, tmp_path, content):
    d = _copy_dir(sd1_dir, tmp_path / "tok")
    (d / "vocab.json").write_text(content, encoding="utf-8")
    with pytest.raises(ArtifactError, match="vocab.json"):
        ClipTokenizer.from_dir(d)


@pytest.mark.parametrize(
    "content",
    ["{not json", '{"model": {"type": "WordPiece", "vocab": {}}}', '{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}'],
)
def test_corrupt_tokenizer_json_raises_artifact_error(sd1_dir, tmp_path, content):
    d = _copy_dir(sd1_dir, tmp_path / "tok")
    (d / "tokenizer.json").write_text(content, encoding="utf-8")
    with pytest.raises(ArtifactError, match="tokenizer.json"):
        ClipTokenizer.from_dir(d)


def test_corrupt_config_raises_artifact_error(sd1_dir, tmp_path):
    d = _copy_dir(sd1_dir, tmp_path / "tok")
    (d / "tokenizer_config.json").write_text("{oops", encoding="utf-8")
    with pytest.raises(ArtifactError, match="tokenizer_config.json"):
        ClipTokenizer.from_dir(d)


def test_missing_both_configs_raises_artifact_error(sd1_dir, tmp_path):
    d = _copy_dir(sd1_dir, tmp_path / "tok")
    (d / "tokenizer_config.json").unlink()
    (d / "special_tokens_map.json").unlink()
    with pytest.raises(ArtifactError, match="pad token"):
        ClipTokenizer.from_dir(d)


def test_special_tokens_map_alone_is_enough(tmp_path):
    save_clip_tokenizer(tmp_path / "sd2", pad_token="!")
    (tmp_path / "sd2" / "tokenizer_config.json").unlink()
    tok = ClipTokenizer.from_dir(tmp_path / "sd2")
    assert tok.pad_token_id == 0 and tok.max_length == 77


# ----------------------------------------------------------------------------- save_clip_tokenizer
def test_saved_dir_loads_with_transformers(tok_dir):
    transformers = pytest.importorskip("transformers")
    name, d = tok_dir
    pad, pad_id = PADS[name]
    for cls in (transformers.CLIPTokenizer, transformers.AutoTokenizer):
        hf = cls.from_pretrained(str(d))
        assert hf.pad_token == pad and hf.pad_token_id == pad_id
        assert hf.model_max_length == 77
        assert hf(ASTRONAUT).input_ids == ASTRONAUT_IDS
    assert sorted(p.name for p in d.iterdir()) == [
        "merges.txt",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.json",
    ]


def test_saved_dir_loads_in_diffusers_pipeline(tmp_path):
    pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    save_clip_tokenizer(tmp_path / "tok", pad_token="!")
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, norm_num_groups=8, attention_head_dim=2,
    )
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8,), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
    )
    text_encoder = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=77,
        )
    )
    pipe = diffusers.StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder,
        tokenizer=transformers.CLIPTokenizer.from_pretrained(str(tmp_path / "tok")),
        scheduler=diffusers.DDIMScheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(tmp_path / "pipe")
    # Replace whatever save_pretrained wrote with exactly our folder.
    for f in (tmp_path / "pipe" / "tokenizer").iterdir():
        f.unlink()
    save_clip_tokenizer(tmp_path / "pipe" / "tokenizer", pad_token="!")
    loaded = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    ids = loaded.tokenizer(
        [ASTRONAUT], padding="max_length", max_length=loaded.tokenizer.model_max_length, truncation=True
    ).input_ids
    runtime_ids = ClipTokenizer.from_dir(tmp_path / "pipe" / "tokenizer")([ASTRONAUT])
    assert ids == runtime_ids.tolist()
    assert ids[0][: len(ASTRONAUT_IDS)] == ASTRONAUT_IDS and ids[0][-1] == 0


def test_save_clip_tokenizer_rejects_unknown_pad(tmp_path):
    with pytest.raises(ValueError):
        save_clip_tokenizer(tmp_path / "x", pad_token="<pad>")


# ----------------------------------------------------------------------------- import hygiene
def test_runtime_tokenizer_imports_without_torch_or_transformers(sd1_dir):
    code = textwrap.dedent(
        f"""
        import sys

        class Blocker:
            blocked = ("torch", "transformers", "diffusers")

            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in self.blocked:
                    raise ImportError(f"blocked import of {{name}}")
                return None

        sys.meta_path.insert(0, Blocker())
        import sdrt.runtime.tokenizer as rt

        tok = rt.ClipTokenizer.from_dir({str(sd1_dir)!r})
        ids = tok([{ASTRONAUT!r}])
        assert ids[0, :{len(ASTRONAUT_IDS)}].tolist() == {ASTRONAUT_IDS!r}, ids
        loaded = [m for m in sys.modules if m.split(".")[0] in Blocker.blocked]
        assert not loaded, loaded
        print("ok")
        """
    )
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().endswith("ok")
