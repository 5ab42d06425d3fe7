"""One llama GGUF written as an mlx-lm checkpoint folder: weights renamed to the Hugging Face
layout (still quantized), ``config.json``, the tokenizer files and the import record."""

from __future__ import annotations

import json
import pathlib
from collections import Counter
from typing import Any, cast

import numpy as np

from ....errors import ModelLoadFailed
from ....store import imports
from ...gguf_header import GGUFHeader, read_gguf_header
from .config import md_value, model_config
from .tokenizer import build_tokenizer_files, eos_token_ids

IMPORTER_VERSION = 2  # 2: dvai_import.json records each file's size and sha256
GROUP_SIZE = 32  # every GGUF type MLX loads quantized uses blocks of 32
SUPPORTED_TYPES = frozenset({"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0"})

# GGUF tensor names -> Hugging Face llama names
_LAYER_NAMES = {f"attn_{x}": f"self_attn.{x}_proj" for x in "qkv"} | {
    "attn_output": "self_attn.o_proj"
}
_LAYER_NAMES |= {f"ffn_{x}": f"mlp.{x}_proj" for x in ("gate", "up", "down")}
_LAYER_NAMES |= {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}


def _hf_name(gguf_name: str) -> str:
    stem, _, suffix = gguf_name.rpartition(".")
    if stem.startswith("blk."):
        _, layer, part = stem.split(".", 2)
        if part in _LAYER_NAMES:
            return f"model.layers.{int(layer)}.{_LAYER_NAMES[part]}.{suffix}"
    elif stem in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[stem]}.{suffix}"
    raise ModelLoadFailed(f"unsupported tensor {gguf_name!r} in a llama GGUF")


def _unpermute(x: Any, n_heads: int) -> Any:
    """Undo llama.cpp's Q/K row interleave: rows (head, half, pair) -> (head, pair, half)."""
    rows = x.shape[0]
    tail = tuple(x.shape[1:])
    return x.reshape(n_heads, rows // n_heads // 2, 2, *tail).swapaxes(1, 2).reshape(rows, *tail)


def _check(header: GGUFHeader, path: pathlib.Path) -> None:
    md = header.metadata
    arch = md.get("general.architecture")
    if arch != "llama":
        raise ModelLoadFailed(f"{path.name}: unsupported GGUF architecture {arch!r} (only 'llama')")
    if int(md_value(md, "expert_count", 0) or 0) > 0:
        raise ModelLoadFailed(f"{path.name}: mixture-of-experts llama GGUFs are not supported")
    bad = Counter(
        t.type_name for t in header.tensors.values() if t.type_name not in SUPPORTED_TYPES
    )
    if bad:
        found = ", ".join(f"{kind} ({n} tensors)" for kind, n in sorted(bad.items()))
        supported = ", ".join(sorted(SUPPORTED_TYPES))
        raise ModelLoadFailed(
            f"{path.name}: unsupported GGUF tensor types {found}; supported: {supported}"
        )


def _load_weights(path: pathlib.Path, header: GGUFHeader, n_heads: int, n_kv: int) -> dict:
    import mlx.core as mx

    try:
        # a .gguf without return_metadata loads as a dict of arrays
        raw = cast(dict[str, mx.array], mx.load(str(path)))
    except Exception as e:  # mlx raises RuntimeError/ValueError with its own wording
        raise ModelLoadFailed(f"cannot load tensors of {path}: {e}") from e
    for t in header.tensors.values():  # mlx converts BF16 to F16 (lossy): read those raw
        if t.type_name == "BF16":
            data = np.fromfile(path, dtype=np.uint16, count=int(np.prod(t.shape)), offset=t.offset)
            raw[t.name] = mx.array(data.reshape(t.shape)).view(mx.bfloat16)
    weights = {}
    for name, arr in raw.items():
        if name == "rope_freqs.weight":
            continue
        hf = _hf_name(name)
        if ".self_attn.q_proj." in hf:
            arr = _unpermute(arr, n_heads)
        elif ".self_attn.k_proj." in hf:
            arr = _unpermute(arr, n_kv)
        weights[hf] = arr
    return weights


def _quantization(weights: dict) -> dict | None:
    """mlx-lm's per-layer quantization config: the commonest setting, plus exceptions."""
    layers: dict[str, Any] = {}
    for name, weight in weights.items():
        module = name.removesuffix(".weight")
        if module == name or module.endswith("norm"):
            continue
        layers[module] = False  # left unquantized (F32/F16/BF16)
        if (scales := weights.get(f"{module}.scales")) is not None:
            in_features = scales.shape[-1] * GROUP_SIZE
            bits = weight.shape[-1] * 32 // in_features  # uint32 columns hold 32 bits each
            layers[module] = {"group_size": GROUP_SIZE, "bits": int(bits)}
    settings = Counter(json.dumps(v, sort_keys=True) for v in layers.values() if v)
    if not settings:
        return None
    default = json.loads(settings.most_common(1)[0][0])
    return default | {m: v for m, v in sorted(layers.items()) if v != default}


def write_checkpoint(path: pathlib.Path, dest: pathlib.Path) -> None:
    import mlx.core as mx

    header = read_gguf_header(path)
    _check(header, path)
    md = header.metadata
    files = build_tokenizer_files(md)  # fails fast on an unsupported vocabulary
    heads = int(md_value(md, "attention.head_count", required=True))
    weights = _load_weights(
        path, header, heads, int(md_value(md, "attention.head_count_kv", heads))
    )
    config = model_config(md, header, weights, path)
    if (quant := _quantization(weights)) is not None:
        config["quantization"] = quant
        config["quantization_config"] = quant
    generation = {"eos_token_id": eos_token_ids(md) or config.get("eos_token_id")}
    if "bos_token_id" in config:
        generation["bos_token_id"] = config["bos_token_id"]
    files["config.json"] = json.dumps(config, indent=2)
    files["generation_config.json"] = json.dumps(generation, indent=2)
    stat = path.stat()
    source = {"source": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    dest.mkdir(parents=True)
    mx.save_safetensors(str(dest / "model.safetensors"), weights, metadata={"format": "mlx"})
    for name, text in files.items():
        (dest / name).write_text(text, encoding="utf-8")
    record = source | {"importer_version": IMPORTER_VERSION, "files": imports.record_files(dest)}
    (dest / imports.META).write_text(json.dumps(record, indent=1), encoding="utf-8")
