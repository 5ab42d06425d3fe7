"""Load a model split across the group, as mlx-lm's ``sharded_load`` does.

Tensor parallel (the default, ``model.shard(group)``): every rank holds a slice of every
attention and MLP projection, and the slices are summed across the group in each layer. It
needs the model's attention heads and KV heads to divide by the group size.

Pipeline (``model.model.pipeline(group)``): every rank holds a run of whole layers; the last
rank runs the first layers and hands the hidden state on (rank 0 runs the last ones). Each
layer's arithmetic is exactly the one-process arithmetic. mlx-lm gives some architectures a
pipeline (Qwen2/3, DeepSeek, GLM, ...); Llama-architecture models (the embedded SmolLM2, and
every GGUF import) get the same ``PipelineMixin`` here, with mlx-lm's pipeline forward.

``auto`` takes tensor parallel where the model has it and its heads divide, else pipeline.
On the CPU device the weights are put in their fast form (fp32 through BLAS) before they are
sharded, so each rank keeps only its slice of the fp32 weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from ....errors import BridgeError, ConfigurationInvalid, ModelLoadFailed
from ....progress import ProgressEvent, ProgressHub
from ..device import select_device
from ..options import GROUP_TIMEOUT_S
from .group import GroupInfo
from .mirror import GroupBackend

log = logging.getLogger(__name__)

SHARD_MODES = ("auto", "tensor", "pipeline")


def tensor_parallel_problem(model: Any, size: int) -> str | None:
    """Why ``model`` cannot be tensor-parallel over ``size`` ranks (None: it can)."""
    if not hasattr(model, "shard"):
        return f"mlx-lm has no tensor parallelism for {type(model).__module__}"
    args = getattr(model, "args", None)
    for name in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
        n = getattr(args, name, None)
        if isinstance(n, int) and n % size:
            return f"its {name} ({n}) does not divide by {size} ranks"
    return None


def pipeline_problem(model: Any) -> str | None:
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "pipeline"):
        return None
    from mlx_lm.models import llama

    if type(model) is llama.Model:
        if any(layer.use_sliding for layer in model.model.layers):
            return "its sliding-window layers are not pipelined here"
        return None
    return f"mlx-lm has no pipeline for {type(model).__module__}"


def choose_mode(model: Any, size: int, wanted: str) -> str:
    if wanted not in SHARD_MODES:
        raise ConfigurationInvalid(f"shard must be one of {', '.join(SHARD_MODES)}.", param="shard")
    tensor, pipeline = tensor_parallel_problem(model, size), pipeline_problem(model)
    if wanted == "tensor" and tensor:
        raise ConfigurationInvalid(
            f"Cannot shard the model tensor-parallel: {tensor}.", param="shard"
        )
    if wanted == "pipeline" and pipeline:
        raise ConfigurationInvalid(f"Cannot pipeline the model: {pipeline}.", param="shard")
    if wanted != "auto":
        return wanted
    if tensor is None:
        return "tensor"
    if pipeline is None:
        log.info("shard auto: pipeline, as tensor parallel is not possible (%s)", tensor)
        return "pipeline"
    raise ConfigurationInvalid(
        f"Cannot split this model across {size} ranks: {tensor}; {pipeline}.", param="shard"
    )


def _pipeline_llama(model: Any) -> None:
    """Give an mlx-lm Llama model mlx-lm's ``PipelineMixin`` and pipeline forward (after
    ``Qwen2Model``'s), in place."""
    from mlx_lm.models import llama
    from mlx_lm.models.pipeline import PipelineMixin

    model.model.__class__ = _PipelinedLlamaModel.make(llama, PipelineMixin)
    model.model.pipeline_rank, model.model.pipeline_size = 0, 1
    model.model.start_idx, model.model.end_idx = 0, None
    model.__class__ = _PipelinedLlama.make(llama)


class _PipelinedLlamaModel:
    _cls: Any = None

    @classmethod
    def make(cls, llama: Any, mixin: Any) -> Any:
        if cls._cls is None:
            import mlx.core as mx

            def __call__(self, inputs, cache=None, input_embeddings=None):
                h = (
                    input_embeddings
                    if input_embeddings is not None
                    else (self.embed_tokens(inputs))
                )
                rank, size = self.pipeline_rank, self.pipeline_size
                layers = self.pipeline_layers
                if cache is None:
                    cache = [None] * len(layers)
                mask = llama.create_attention_mask(h, cache[0])
                if rank < size - 1:  # receive from the rank that runs the layers before ours
                    h = mx.distributed.recv_like(h, rank + 1)
                for layer, c in zip(layers, cache, strict=True):
                    h = layer(h, mask, cache=c)
                if rank != 0:
                    h = mx.distributed.send(h, (rank - 1) % size)
                    if cache[-1] is not None:
                        cache[-1].keys = mx.depends(cache[-1].keys, h)
                if size > 1:  # every rank gets rank 0's output, kept in the graph
                    h = mx.distributed.all_gather(h)[: h.shape[0]]
                return self.norm(h)

            cls._cls = type(
                "PipelinedLlamaModel", (mixin, llama.LlamaModel), {"__call__": __call__}
            )
        return cls._cls


class _PipelinedLlama:
    _cls: Any = None

    @classmethod
    def make(cls, llama: Any) -> Any:
        if cls._cls is None:
            cls._cls = type(
                "PipelinedLlama",
                (llama.Model,),
                {"layers": property(lambda self: self.model.pipeline_layers)},
            )
        return cls._cls


def load_sharded(
    model_path: str | None,
    *,
    context_size: int | None,
    progress: ProgressHub,
    group: Any,
    info: GroupInfo,
    shard: str = "auto",
    stall_timeout: float = GROUP_TIMEOUT_S,
) -> GroupBackend:
    """A ``GroupBackend`` over this rank's part of the model."""
    import mlx.core as mx
    from mlx_lm.utils import load_model, load_tokenizer

    from ..backend import resolve_model

    device = select_device()
    folder, model_id = resolve_model(model_path, progress)
    progress.emit(
        ProgressEvent(
            "load",
            message=(f"Loading {model_id} on MLX ({device.kind}), rank {info.rank} of {info.size}"),
        )
    )
    try:
        model, config = load_model(Path(folder), lazy=True, strict=False)
        mode = choose_mode(model, info.size, shard)
        if mode == "pipeline":
            if not hasattr(model.model, "pipeline"):
                _pipeline_llama(model)
            model.model.pipeline(group)
        tuning = None
        if device.is_cpu:  # fp32 through BLAS before slicing: each rank keeps its slice
            from .. import cpu_tuning

            tuning = cpu_tuning.apply(model)
        if mode == "tensor":
            model.shard(group)
        mx.eval(model.parameters())
        tokenizer = load_tokenizer(
            Path(folder), {"trust_remote_code": True}, eos_token_ids=config.get("eos_token_id")
        )
        # Every rank has loaded before any serves (mlx-lm's sharded_load does the same).
        mx.eval(mx.distributed.all_sum(mx.array(1.0), group=group, stream=mx.cpu))
    except BridgeError:
        raise
    except Exception as exc:
        raise ModelLoadFailed(f"MLX could not load {model_id} sharded: {exc}") from exc
    cfg = json.loads((Path(folder) / "config.json").read_text())
    native = int(cfg.get("max_position_embeddings") or 4096)
    total = int(cfg.get("num_hidden_layers") or len(model.layers))
    info = dataclasses.replace(info, shard=mode)
    backend = GroupBackend(
        model,
        tokenizer,
        model_id=model_id,
        context_length=min(context_size or native, native),
        device=device,
        group=group,
        info=info,
        total_layers=total,
        stall_timeout=stall_timeout,
    )
    backend.cpu_tuning = tuning
    log.info(
        "rank %d of %d (%s): %s parallel, %d of %d layers here",
        info.rank,
        info.size,
        info.backend,
        mode,
        len(model.layers),
        total,
    )
    return backend
