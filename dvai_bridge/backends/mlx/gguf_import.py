"""Import a llama-architecture GGUF file as an MLX (mlx-lm) checkpoint folder.

The weights are not dequantized: ``mlx.core.load`` already returns GGUF Q4_0/Q4_1/Q8_0 tensors as
MLX affine-quantized triples (``weight`` uint32, ``scales``, ``biases``; group size 32), which are
bit-exact with llama.cpp's blocks. They are renamed to the Hugging Face llama layout, the rows of
Q and K are un-permuted (llama.cpp's converter interleaves them for its RoPE), and mlx-lm's
per-layer ``quantization`` config records each layer's bits. The tokenizer is rebuilt from the
GGUF vocabulary (see ``gguf_tokenizer``).

    import_gguf(path, out_dir)   -> out_dir, written atomically (temp sibling + rename)
    cached_import(path)          -> a folder under ~/.cache/dvai-bridge/mlx-imports/, reused
                                    while its files match the record written with them

Every import records each file's size and sha256 in ``dvai_import.json`` (``store.imports``);
``cached_import`` checks them before reusing a folder and imports again, with a warning naming
the folder, when they differ (a truncated or overwritten ``model.safetensors``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import pathlib
import shutil
import struct
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from dvai_bridge.backends.mlx.gguf_tokenizer import build_tokenizer_files, eos_token_ids
from dvai_bridge.errors import ModelLoadFailed
from dvai_bridge.store import imports

log = logging.getLogger(__name__)

IMPORTER_VERSION = 2  # 2: dvai_import.json records each file's size and sha256
GROUP_SIZE = 32  # every GGUF type MLX loads quantized uses blocks of 32

# ggml tensor type names, indexed by type id ("-" = retired ids).
_TYPE_NAMES = [
    *("F32", "F16", "Q4_0", "Q4_1", "-", "-", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K"),
    *("Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL"),
    *("IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16"),
    *("-", "-", "-", "TQ1_0", "TQ2_0", "-", "-", "-", "MXFP4"),
]
SUPPORTED_TYPES = frozenset({"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0"})

# GGUF metadata value types: scalars by struct format and numpy dtype (8 = string, 9 = array).
_SCALARS = dict(enumerate(("<B", "<b", "<H", "<h", "<I", "<i", "<f", "<?")))
_SCALARS |= {10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {k: np.dtype(v) for k, v in _SCALARS.items()}

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


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # MLX/numpy order (GGUF stores it reversed)
    type_name: str
    offset: int  # absolute, in the file


@dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]


class _Reader:
    def __init__(self, buf: Any) -> None:
        self.buf, self.pos = buf, 0

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        raw = bytes(self.buf[self.pos : self.pos + n])
        if len(raw) != n:
            raise ValueError("string runs past the end of the file")
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == 8:
            return self.string()
        if kind != 9:
            raise ValueError(f"unknown metadata value type {kind}")
        item, count = self.scalar("<I"), self.scalar("<Q")
        if item in _NUMPY:
            arr = np.frombuffer(self.buf, dtype=_NUMPY[item], count=count, offset=self.pos)
            self.pos += arr.nbytes
            return arr.tolist()
        return [self.value(item) for _ in range(count)]


def read_gguf_header(path: str | os.PathLike) -> GGUFHeader:
    """Metadata and tensor directory of a GGUF file (no tensor data is read)."""
    path = pathlib.Path(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if mm[:4] != b"GGUF":
                raise ModelLoadFailed(f"{path.name} is not a GGUF file (bad magic)")
            r = _Reader(mm)
            r.pos = 4
            version = r.scalar("<I")
            if version not in (2, 3):
                raise ModelLoadFailed(f"{path.name}: unsupported GGUF version {version}")
            n_tensors, n_kv = r.scalar("<Q"), r.scalar("<Q")
            # key before value: dict comprehensions evaluate the key first
            metadata = {r.string(): r.value(r.scalar("<I")) for _ in range(n_kv)}
            infos = []
            for _ in range(n_tensors):
                name = r.string()
                dims = [r.scalar("<Q") for _ in range(r.scalar("<I"))]
                kind, offset = r.scalar("<I"), r.scalar("<Q")
                infos.append((name, tuple(reversed(dims)), _type_name(kind), offset))
            align = int(metadata.get("general.alignment", 32))
            data_start = (r.pos + align - 1) // align * align
            tensors = {n: TensorInfo(n, s, t, data_start + o) for n, s, t, o in infos}
            if any(t.offset > len(mm) for t in tensors.values()):
                raise ModelLoadFailed(f"{path.name}: truncated GGUF file (tensor data missing)")
    except ModelLoadFailed:
        raise
    except (OSError, ValueError, struct.error, MemoryError) as e:
        raise ModelLoadFailed(f"cannot read GGUF file {path}: {e}") from e
    return GGUFHeader(version, metadata, tensors)


def _type_name(kind: int) -> str:
    name = _TYPE_NAMES[kind] if kind < len(_TYPE_NAMES) else "-"
    return f"type{kind}" if name == "-" else name


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


def _md(md: dict[str, Any], key: str, default: Any = None, *, required: bool = False) -> Any:
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
    orig = int(_md(md, "rope.scaling.original_context_length", 8192))
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


def _check(header: GGUFHeader, path: pathlib.Path) -> None:
    md = header.metadata
    arch = md.get("general.architecture")
    if arch != "llama":
        raise ModelLoadFailed(f"{path.name}: unsupported GGUF architecture {arch!r} (only 'llama')")
    if int(_md(md, "expert_count", 0) or 0) > 0:
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
        raw = mx.load(str(path))
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


def _config(md: dict[str, Any], header: GGUFHeader, weights: dict, path: pathlib.Path) -> dict:
    hidden = int(_md(md, "embedding_length", required=True))
    heads = int(_md(md, "attention.head_count", required=True))
    kv_heads = int(_md(md, "attention.head_count_kv", heads))
    head_dim = int(_md(md, "attention.key_length", hidden // heads))
    if int(_md(md, "attention.value_length", head_dim)) != head_dim:
        raise ModelLoadFailed(f"{path.name}: different key and value head sizes are not supported")
    if int(_md(md, "rope.dimension_count", head_dim)) != head_dim:
        raise ModelLoadFailed(f"{path.name}: partial rotary embeddings are not supported")
    base = _f32(_md(md, "rope.freq_base", 10000.0))
    embed = header.tensors.get("token_embd.weight")
    vocab = embed.shape[0] if embed else int(_md(md, "vocab_size", 0))
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(_md(md, "feed_forward_length", required=True)),
        "num_hidden_layers": int(_md(md, "block_count", required=True)),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": _f32(_md(md, "attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": base,
        "rope_traditional": False,
        "max_position_embeddings": int(_md(md, "context_length", 4096)),
        "vocab_size": vocab,
        "tie_word_embeddings": "lm_head.weight" not in weights,
        "attention_bias": any(k.endswith("self_attn.q_proj.bias") for k in weights),
        "mlp_bias": any(k.endswith("mlp.up_proj.bias") for k in weights),
        "hidden_act": "silu",
    }
    scaling = str(_md(md, "rope.scaling.type", "none"))
    factor = _f32(_md(md, "rope.scaling.factor", 0) or _md(md, "rope.scale_linear", 0) or 0)
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


def _write_checkpoint(path: pathlib.Path, dest: pathlib.Path) -> None:
    import mlx.core as mx

    header = read_gguf_header(path)
    _check(header, path)
    md = header.metadata
    files = build_tokenizer_files(md)  # fails fast on an unsupported vocabulary
    heads = int(_md(md, "attention.head_count", required=True))
    weights = _load_weights(path, header, heads, int(_md(md, "attention.head_count_kv", heads)))
    config = _config(md, header, weights, path)
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


def _write_import(gguf_path: str | os.PathLike, tmp: pathlib.Path) -> None:
    path = pathlib.Path(gguf_path)
    if not path.is_file():
        raise ModelLoadFailed(f"GGUF file not found: {path}")
    try:
        _write_checkpoint(path, tmp)
    except ModelLoadFailed:
        raise
    except Exception as e:
        raise ModelLoadFailed(f"cannot import {path.name} into {tmp.parent}: {e!r}") from e


def _set_aside(folder: pathlib.Path) -> None:
    """Move ``folder`` out of the way (a hidden sibling, deleted at once: a leftover if this
    process dies before it is gone)."""
    aside = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(folder, aside)
    except FileNotFoundError:  # another process moved it first
        return
    shutil.rmtree(aside, ignore_errors=True)


def import_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> pathlib.Path:
    """Convert a llama-architecture GGUF into an MLX checkpoint folder loadable by
    ``mlx_lm.load(out_dir)``. Atomic: writes into a temp sibling dir, then renames; an existing
    ``out_dir`` is replaced."""
    out = pathlib.Path(out_dir).absolute()
    with imports.temp_folder(out.parent, out.name) as tmp:
        _write_import(gguf_path, tmp)
        try:
            if out.exists():
                _set_aside(out)
            os.rename(tmp, out)
        except OSError as e:
            raise ModelLoadFailed(f"cannot move the import into {out}: {e}") from e
    return out


def default_cache_root() -> pathlib.Path:
    """``$DVAI_BRIDGE_CACHE/mlx-imports``, else ``~/.cache/dvai-bridge/mlx-imports``."""
    from dvai_bridge.store.locations import mlx_imports_dir

    return mlx_imports_dir()


def cache_key(gguf_path: str | os.PathLike) -> str:
    """Folder name of an import: file name, size, mtime and the importer version."""
    path = pathlib.Path(gguf_path)
    try:
        stat = path.stat()
    except OSError as e:
        raise ModelLoadFailed(f"cannot read GGUF file {path}: {e}") from e
    ident = f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0{IMPORTER_VERSION}"
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.stem)[:80]
    return f"{stem}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def cached_import(
    gguf_path: str | os.PathLike, cache_root: pathlib.Path | None = None
) -> pathlib.Path:
    """Import once and reuse. ``cache_root`` is the folder holding the imports (default
    ``default_cache_root()``). A folder whose files no longer match their record (sizes and a
    sampled sha256; every byte's sha256 up to ``integrity.FULL_CHECK_MAX_BYTES``) is imported
    again, with a warning naming it. Temp folders that crashed or killed imports left are
    deleted first. Concurrent callers may both convert; the first rename wins and the others
    use the winner's folder."""
    root = pathlib.Path(cache_root) if cache_root is not None else default_cache_root()
    name = cache_key(gguf_path)
    out = root / name
    if out.exists():
        damaged = imports.check_import(out, full=None)
        if not damaged:
            return out
        log.warning(
            "The MLX import %s is damaged (%s); importing %s again",
            out,
            damaged,
            pathlib.Path(gguf_path).name,
        )
        _set_aside(out)
    for left in imports.sweep_leftovers(root):
        log.info("Deleted %s, left by an import that did not finish", left)
    with imports.temp_folder(root, name) as tmp:
        _write_import(gguf_path, tmp)
        try:
            os.rename(tmp, out)
        except OSError:
            if imports.check_import(out):
                raise ModelLoadFailed(f"cannot store the import of {gguf_path} in {out}") from None
    return out
