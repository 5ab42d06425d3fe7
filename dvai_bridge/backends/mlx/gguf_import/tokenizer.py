"""Rebuild a Hugging Face ``tokenizers`` tokenizer from the metadata of a GGUF file.

llama.cpp keeps the whole vocabulary in the GGUF header (``tokenizer.ggml.*``). This module turns it
back into ``tokenizer.json`` + ``tokenizer_config.json`` so that ``mlx_lm`` (through
``transformers``) tokenizes exactly like llama.cpp does:

* ``gpt2`` vocabularies are byte-level BPE; the pre-tokenizer is llama.cpp's list of split regexes
  for ``tokenizer.ggml.pre`` (each one an isolated ``Split``, applied in order, like llama.cpp's
  ``unicode_regex_split``), then the GPT-2 byte mapping.
* ``llama`` vocabularies are SentencePiece BPE: a byte-fallback BPE whose merges are ranked by the
  piece scores (the way ``transformers`` converts a ``tokenizer.model``), with ``▁`` for spaces and
  a ``▁`` prefix on every text fragment (llama.cpp's ``add_space_prefix``).

Control, unknown and user-defined tokens become added tokens, matched before the model runs, like
llama.cpp's special-token partition.
"""

from __future__ import annotations

import json
from typing import Any

from dvai_bridge.errors import ModelLoadFailed

# llama.cpp token types (tokenizer.ggml.token_type)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

_GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_RE = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_RE = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DEFAULT_RES = [r"[\p{P}\$\+<=>\^~\|]+", _GPT2_RE, r"\p{N}+", r"[0-9][0-9][0-9]"]

# tokenizer.ggml.pre -> (regexes applied in order, ignore_merges, default add_bos).
# Mirrors llm_tokenizer_bpe in llama.cpp's llama-vocab.cpp for the pre-tokenizers seen on
# llama-architecture models.
_BPE_PRE: dict[str, tuple[list[str], bool, bool]] = {}
for _names, _spec in (
    (("default", ""), (_DEFAULT_RES, False, False)),
    (("gpt-2", "phi-2", "mpt", "olmo", "jais", "exaone4", "a.x-4.0"), ([_GPT2_RE], False, False)),
    (
        ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"),
        ([r"\p{N}", _GPT2_RE], False, False),
    ),
    (
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0"),
        ([_LLAMA3_RE], True, True),
    ),
    (("dbrx", "smaug-bpe"), ([_LLAMA3_RE], False, False)),
    (("qwen2", "deepseek-r1-qwen", "stablelm2"), ([_QWEN2_RE], False, False)),
):
    for _name in _names:
        _BPE_PRE[_name] = _spec

# Texts llama.cpp treats as end-of-generation, and forces to control type, wherever they occur
# in a vocabulary (llama-vocab.cpp).
_EOG_TEXTS = frozenset(
    (
        "<|eot_id|>",
        "<|im_end|>",
        "<|end|>",
        "<|return|>",
        "<|call|>",
        "<|flush|>",
        "<|calls|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "</s>",
        "<|eom_id|>",
        "<EOT>",
        "_<EOT>",
        "[EOT]",
        "[EOS]",
        "<|end_of_text|>",
        "<end_of_utterance>",
        "<eos>",
        "<turn|>",
        "<|tool_response>",
        "<｜end▁of▁sentence｜>",
        "[e~[",
    )
)


def _get(md: dict[str, Any], key: str, default: Any = None) -> Any:
    value = md.get(key, default)
    return default if value is None else value


def _token_id(md: dict[str, Any], name: str, n_vocab: int) -> int | None:
    value = md.get(f"tokenizer.ggml.{name}_token_id")
    if value is None:
        return None
    value = int(value)
    return value if 0 <= value < n_vocab else None


def _added_tokens(tokens: list[str], types: list[int]) -> list[Any]:
    from tokenizers import AddedToken

    added = []
    for text, kind in zip(tokens, types, strict=False):
        if kind in (_CONTROL, _UNKNOWN) or (kind != _USER_DEFINED and text in _EOG_TEXTS):
            added.append(AddedToken(text, special=True, normalized=False))
        elif kind == _USER_DEFINED:
            added.append(AddedToken(text, special=False, normalized=False))
    return added


def _bpe_tokenizer(md: dict[str, Any], tokens: list[str]) -> tuple[Any, bool]:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    pre = str(_get(md, "tokenizer.ggml.pre", "default"))
    if pre not in _BPE_PRE:
        raise ModelLoadFailed(
            f"unsupported GGUF pre-tokenizer {pre!r} (tokenizer.ggml.pre); supported: "
            + ", ".join(sorted(k for k in _BPE_PRE if k))
        )
    regexes, ignore_merges, add_bos_default = _BPE_PRE[pre]
    merges = []
    for line in _get(md, "tokenizer.ggml.merges", []):
        pos = line.find(" ", 1)  # like llama.cpp: a merge's left part may start with a space
        if pos > 0:
            merges.append((line[:pos], line[pos + 1 :]))
    if not merges:
        raise ModelLoadFailed("byte-level BPE GGUF vocabulary without tokenizer.ggml.merges")
    vocab = {text: i for i, text in enumerate(tokens)}
    model = models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges, fuse_unk=False)
    tok = Tokenizer(model)
    splits: list[pre_tokenizers.PreTokenizer]
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
    splits.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(splits)
    tok.decoder = decoders.ByteLevel()
    return tok, add_bos_default


def _spm_tokenizer(md: dict[str, Any], tokens: list[str], types: list[int]) -> tuple[Any, bool]:
    from tokenizers import Tokenizer, decoders, models, normalizers

    scores = list(_get(md, "tokenizer.ggml.scores", []))
    if len(scores) != len(tokens):
        raise ModelLoadFailed("SentencePiece GGUF vocabulary without per-token scores")
    vocab = {text: i for i, text in enumerate(tokens)}
    # Merges ranked like transformers' SentencePiece->BPE conversion (generate_merges with
    # scores): every split of a piece into two pieces, best piece score first.
    merges = []
    for piece, score in zip(tokens, scores, strict=True):
        local = [
            (piece[:i], piece[i:], score)
            for i in range(1, len(piece))
            if piece[:i] in vocab and piece[i:] in vocab
        ]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    unk = _token_id(md, "unknown", len(tokens))
    model = models.BPE(
        vocab=vocab,
        merges=[(a, b) for a, b, _ in merges],
        unk_token=tokens[unk] if unk is not None else None,
        fuse_unk=True,
        byte_fallback=_BYTE in types,
    )
    tok = Tokenizer(model)
    prefix = bool(_get(md, "tokenizer.ggml.add_space_prefix", True))
    steps = [normalizers.Replace(" ", "\u2581")]
    tok.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), *steps] if prefix else steps
    )
    dec = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    # mlx-lm picks its SentencePiece streaming detokenizer from exactly these decoder shapes
    tok.decoder = decoders.Sequence(
        [*dec, decoders.Strip(content=" ", left=1, right=0)] if prefix else dec
    )
    return tok, True


def build_tokenizer_files(md: dict[str, Any]) -> dict[str, str]:
    """The tokenizer files of an HF/mlx-lm checkpoint, as ``{file name: text}``.

    Raises ``ModelLoadFailed`` for vocabularies it cannot reproduce exactly.
    """
    from tokenizers import processors

    kind = str(_get(md, "tokenizer.ggml.model", ""))
    tokens = [str(t) for t in _get(md, "tokenizer.ggml.tokens", [])]
    if not tokens:
        raise ModelLoadFailed("GGUF file has no tokenizer vocabulary (tokenizer.ggml.tokens)")
    types = [int(t) for t in _get(md, "tokenizer.ggml.token_type", [_NORMAL] * len(tokens))]
    if kind == "gpt2":
        tok, add_bos = _bpe_tokenizer(md, tokens)
    elif kind == "llama":
        tok, add_bos = _spm_tokenizer(md, tokens, types)
    else:
        raise ModelLoadFailed(
            f"unsupported GGUF tokenizer model {kind!r} (tokenizer.ggml.model); "
            "supported: 'gpt2' (byte-level BPE), 'llama' (SentencePiece BPE)"
        )
    tok.add_tokens(_added_tokens(tokens, types))

    n = len(tokens)
    ids = {name: _token_id(md, name, n) for name in ("bos", "eos", "unknown", "padding")}
    bos_id, eos_id = ids["bos"], ids["eos"]
    add_bos = bool(_get(md, "tokenizer.ggml.add_bos_token", add_bos)) and bos_id is not None
    add_eos = bool(_get(md, "tokenizer.ggml.add_eos_token", False)) and eos_id is not None
    bos = tokens[bos_id] if add_bos and bos_id is not None else None
    eos = tokens[eos_id] if add_eos and eos_id is not None else None

    def seq(var: str, type_id: int) -> str:
        parts = [bos] if bos else []
        parts.append(var)
        parts += [eos] if eos else []
        return " ".join(f"{p}:{type_id}" for p in parts)

    if bos or eos:
        special = [(bos, ids["bos"])] if bos else []
        special += [(eos, ids["eos"])] if eos and eos != bos else []
        tok.post_processor = processors.TemplateProcessing(
            single=seq("$A", 0), pair=f"{seq('$A', 0)} {seq('$B', 1)}", special_tokens=special
        )

    def text(name: str) -> str | None:
        i = ids[name]
        return tokens[i] if i is not None else None

    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": int(_get(md, "llama.context_length", 0)) or 1 << 30,
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": False,
        "bos_token": text("bos"),
        "eos_token": text("eos"),
        "unk_token": text("unknown"),
        "pad_token": text("padding"),
    }
    template = md.get("tokenizer.chat_template")
    if template:
        config["chat_template"] = str(template)
    special_map = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    special_map = {k: v for k, v in special_map.items() if v is not None}
    config = {k: v for k, v in config.items() if v is not None}
    return {
        "tokenizer.json": tok.to_str(),
        "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False),
        "special_tokens_map.json": json.dumps(special_map, indent=2, ensure_ascii=False),
    }


def eos_token_ids(md: dict[str, Any]) -> list[int]:
    """End-of-generation ids, like llama.cpp's EOG set: eos, eot, eom and end-of-turn texts."""
    tokens = [str(t) for t in _get(md, "tokenizer.ggml.tokens", [])]
    n = len(tokens)
    out = [i for i in (_token_id(md, k, n) for k in ("eos", "eot", "eom")) if i is not None]
    out += [i for i, t in enumerate(tokens) if t in _EOG_TEXTS]
    return list(dict.fromkeys(out))
