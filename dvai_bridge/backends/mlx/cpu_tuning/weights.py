"""The weights' form that is fast on MLX's CPU device: float32 through a real BLAS."""

from __future__ import annotations

import logging
import os
from typing import Any, cast

from .blas import fast_blas_active

log = logging.getLogger(__name__)


def default_memory_budget() -> int:
    """40% of physical RAM, but at most 75% of what is available right now.

    fp32 weights are ~7x a 4-bit checkpoint and are all read for every token, so they must stay
    resident; 40% leaves most RAM for the KV cache (grows with context), the transient
    quantized copy during conversion (~1/7 of the fp32 size), the server and the page cache.
    """
    budget = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.4)
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable:"))
        budget = min(budget, int(avail * 0.75))
    except (OSError, StopIteration):
        pass
    return budget


def prepare_model_for_cpu(model: Any, *, memory_budget_bytes: int | None = None) -> str:
    """Put ``model``'s weights in the form that is fast on MLX's CPU device; returns a summary.

    If a fast BLAS is active (call ``enable_fast_blas`` first; this function changes no
    process-wide state) and the all-fp32 model fits the budget (default
    ``default_memory_budget()``), every QuantizedLinear/QuantizedEmbedding (and MoE
    QuantizedSwitchLinear) becomes a float32 Linear/Embedding (mlx-lm's ``dequantize_model``).
    Otherwise quantized weights stay, with fp32 scales/biases. All fp16/bf16 params become fp32.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_map

    quant = [
        m
        for _, m in model.named_modules()
        if hasattr(m, "bits") and "scales" in m and "weight" in m
    ]
    fp32_bytes = sum(m["weight"].size * 32 // m.bits * 4 for m in quant)
    quant_ids = {id(m["weight"]) for m in quant}
    # tree_flatten returns a list of (key, leaf) pairs unless given a dict `destination`
    for _, p in cast(list[tuple[str, Any]], tree_flatten(model.parameters())):
        if id(p) not in quant_ids:
            fp32_bytes += p.size * (4 if mx.issubdtype(p.dtype, mx.floating) else p.itemsize)
    budget = default_memory_budget() if memory_budget_bytes is None else memory_budget_bytes

    half = (mx.float16, mx.bfloat16)
    model.update(
        tree_map(lambda p: p.astype(mx.float32) if p.dtype in half else p, model.parameters())
    )
    blas, mib = fast_blas_active(), fp32_bytes / 2**20
    if not quant:
        form = f"float32 weights ({mib:.0f} MiB)"
    elif blas and fp32_bytes <= budget:
        from mlx_lm.utils import dequantize_model

        dequantize_model(model)  # scales are fp32 now, so mx.dequantize yields fp32
        form = f"dequantized float32 ({len(quant)} layers, {mib:.0f} MiB), BLAS {blas}"
    else:
        bits = "/".join(str(b) for b in sorted({m.bits for m in quant}))
        why = (
            f"fp32 would need {mib:.0f} MiB > budget {budget / 2**20:.0f} MiB"
            if blas
            else "no fast BLAS"
        )
        form = f"quantized {bits}-bit, float32 scales ({why})"
    mx.eval(model.parameters())
    log.info("CPU weight form: %s", form)
    return form
