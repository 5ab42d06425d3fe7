"""The mlx-lm ``config.json`` of an imported llama GGUF, from its metadata (and ``rope_freqs``)."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from ....errors import ModelLoadFailed
from ...gguf_header import GGUFHeader


def md_value(md: dict[str, Any], key: str, default: Any = None, *, required: bool = False) -> Any:
    value = md.get(f"llama.{key}")
    if isinstance(value, list):  # per-layer arrays: only uniform ones are supported
        if len(set(value)) != 1:
            raise ModelLoadFailed(f"per-layer llama.{key} values are not supported")
        value = value[0]
    if value is None:
        if required:
            raise ModelLoadFailed(f"GGUF metadata lacks llama.{key}")
        return default
    return value


def _f32(value: Any) -> float:
    """A float32 metadata value as its shortest decimal (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(value)))


def _llama3_rope(factors: np.ndarray, base: float, dim: int, md: dict[str, Any]) -> dict | None:
    """Recover HF's llama3 rope_scaling from llama.cpp's rope_freqs tensor (Llama 3.1+)."""
    factors = factors.astype(np.float64)
    if np.allclose(factors, 1.0):
        return None
    factor = float(factors.max())
    orig = int(md_value(md, "rope.scaling.original_context_length", 8192))
    wavelen = 2 * np.pi * base ** (np.arange(0, dim, 2) / dim)
    low, high = 1.0, 4.0
    mid = (factors > 1 + 1e-4) & (factors < factor - 1e-4)
    if mid.sum() >= 2:  # smooth = (orig / wavelen - low) / (high - low), linear in orig / wavelen
        smooth = (1 / factors[mid] - 1 / factor) / (1 - 1 / factor)
        slope, icpt = np.polyfit(orig / wavelen[mid], smooth, 1)
        low, high = -icpt / slope, (1 - icpt) / slope
    smooth = (orig / wavelen - low) / (high - low)
    expect = np.where(
        wavelen < orig / high,
        1.0,
        np.where(wavelen > orig / low, factor, 1 / ((1 - smooth) / factor + smooth)),
    )
    if not np.allclose(expect, factors, rtol=1e-3, atol=1e-4):
        raise ModelLoadFailed("unsupported rope_freqs tensor (not llama3-style rope scaling)")
    scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": float(low)}
    return scaling | {"high_freq_factor": float(high), "original_max_position_embeddings": orig}


def model_config(md: dict[str, Any], header: GGUFHeader, weights: dict, path: pathlib.Path) -> dict:
    hidden = int(md_value(md, "embedding_length", required=True))
    heads = int(md_value(md, "attention.head_count", required=True))
    kv_heads = int(md_value(md, "attention.head_count_kv", heads))
    head_dim = int(md_value(md, "attention.key_length", hidden // heads))
    if int(md_value(md, "attention.value_length", head_dim)) != head_dim:
        raise ModelLoadFailed(f"{path.name}: different key and value head sizes are not supported")
    if int(md_value(md, "rope.dimension_count", head_dim)) != head_dim:
        raise ModelLoadFailed(f"{path.name}: partial rotary embeddings are not supported")
    base = _f32(md_value(md, "rope.freq_base", 10000.0))
    embed = header.tensors.get("token_embd.weight")
    vocab = embed.shape[0] if embed else int(md_value(md, "vocab_size", 0))
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(md_value(md, "feed_forward_length", required=True)),
        "num_hidden_layers": int(md_value(md, "block_count", required=True)),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": _f32(md_value(md, "attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": base,
        "rope_traditional": False,
        "max_position_embeddings": int(md_value(md, "context_length", 4096)),
        "vocab_size": vocab,
        "tie_word_embeddings": "lm_head.weight" not in weights,
        "attention_bias": any(k.endswith("self_attn.q_proj.bias") for k in weights),
        "mlp_bias": any(k.endswith("mlp.up_proj.bias") for k in weights),
        "hidden_act": "silu",
    }
    scaling = str(md_value(md, "rope.scaling.type", "none"))
    factor = _f32(
        md_value(md, "rope.scaling.factor", 0) or md_value(md, "rope.scale_linear", 0) or 0
    )
    if scaling == "linear" or (scaling == "none" and factor not in (0.0, 1.0)):
        config["rope_scaling"] = {"type": "linear", "factor": factor}
    elif scaling != "none":
        raise ModelLoadFailed(f"{path.name}: unsupported rope scaling {scaling!r}")
    if "rope_freqs.weight" in header.tensors:
        t = header.tensors["rope_freqs.weight"]
        factors = np.fromfile(path, dtype=np.float32, count=int(np.prod(t.shape)), offset=t.offset)
        if t.type_name != "F32" or factors.size != head_dim // 2:
            raise ModelLoadFailed(f"{path.name}: unsupported rope_freqs tensor")
        if (llama3 := _llama3_rope(factors, base, head_dim, md)) is not None:
            config["rope_scaling"] = llama3
    for key in ("bos", "eos"):
        if (tid := md.get(f"tokenizer.ggml.{key}_token_id")) is not None:
            config[f"{key}_token_id"] = int(tid)
    return config
