"""Faster CPU forms of the two exp-heavy ops in mlx-lm models: SwiGLU and attention.

Why: on Linux the ``mlx[cpu]`` wheel evaluates ``exp``/``sigmoid``/``softmax`` one element at
a time, at ~20-26 ns per element on a 2-core EPYC, against ~0.5 ns for a multiply. A prefill
spends a third of its time there (SiLU over every MLP activation, softmax over every attention
score), a 2k-token prefill most of it (the scores grow with the square of the context).

How: ``exp`` is computed the classic way, ``2**n * 2**f`` with ``n`` the nearest integer to
``x*log2(e)`` (found by adding and subtracting 1.5*2**23) and ``2**f`` a degree-7 polynomial
(|f| <= 1/2, relative error ~2e-7, 1-2 ulp). Written with MLX elementwise ops under
``mx.compile``, MLX fuses them into generated C++ loops that the compiler vectorizes: ~3 ns per
element. ``2**n`` is built from its bits (a shift viewed as float32), so the polynomial and the
bits come from one compiled function and the product from another (``view`` cannot be traced
shapeless). Attention is MLX's own fallback algorithm (grouped-query matmuls, masked softmax,
matmul) with that exp, normalisation after the second matmul (an [L, D] divide, not [L, S]),
and a causal prefill split into query blocks that skip the keys they cannot see.

``install(model)`` rebinds ``swiglu`` and ``scaled_dot_product_attention`` in the model's mlx-lm
module (where its layers look them up), on the CPU device only, after checking the kernels
against MLX's on this machine (they need the C++ compiler MLX's ``compile`` uses; without one,
or with ``DVAI_BRIDGE_CPU_KERNELS=0``, nothing changes). Arrays that are not float32, attention
sinks, quantized KV caches and small arrays (fewer than ``MIN_ELEMENTS`` exps: a decode step
over a short context) go to the original functions.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from functools import partial
from typing import Any, cast

import mlx.core as mx

log = logging.getLogger(__name__)

_LOG2E = 1.4426950408889634
_ROUND = 12582912.0  # 1.5 * 2**23: x + _ROUND - _ROUND rounds x to the nearest integer
_C = [math.log(2) ** k / math.factorial(k) for k in range(8)]  # 2**f = sum c_k f**k
_QUERY_BLOCK = 128
# Below this many exps MLX's own op is used: a decode step's few thousand exps cost less than
# the extra dispatches (measured: one-token decode ~8% slower with the fast forms everywhere).
MIN_ELEMENTS = 1 << 16
_PATCHED = ("swiglu", "scaled_dot_product_attention")


def _pow2_fraction(f: mx.array) -> mx.array:
    """2**f for |f| <= 1/2 (Estrin's scheme: shallow, so MLX fuses it into one loop)."""
    f2 = f * f
    low = (_C[0] + _C[1] * f) + f2 * (_C[2] + _C[3] * f)
    high = (_C[4] + _C[5] * f) + f2 * (_C[6] + _C[7] * f)
    return low + (f2 * f2) * high


@partial(mx.compile, shapeless=True)
def _exp_parts(x: mx.array | float, shift: mx.array | float) -> tuple[mx.array, mx.array]:
    """exp(x - shift) as (2**f, the bits of 2**n); their product is the value."""
    t = mx.clip(mx.subtract(x, shift) * _LOG2E, -126.0, 127.4)  # one of the two is an array
    n = (t + _ROUND) - _ROUND
    return _pow2_fraction(t - n), mx.left_shift((n + 127.0).astype(mx.int32), 23)


@partial(mx.compile, shapeless=True)
def _times(a: mx.array, b: mx.array) -> mx.array:
    return a * b


@partial(mx.compile, shapeless=True)
def _swiglu_tail(gate: mx.array, x: mx.array, frac: mx.array, pow2: mx.array) -> mx.array:
    return gate / (1.0 + frac * pow2) * x  # silu(g) * x = g * sigmoid(g) * x


def fast_exp(x: mx.array, shift: mx.array | float = 0.0) -> mx.array:
    """exp(x - shift) for float32 arrays; below -87.3 it gives 2**-126 rather than 0, and it
    saturates at 2**127.4 (88.3) rather than overflowing."""
    frac, bits = _exp_parts(x, shift)
    return _times(frac, bits.view(mx.float32))


def swiglu(gate: mx.array, x: mx.array) -> mx.array:
    if gate.dtype != mx.float32 or x.dtype != mx.float32 or gate.size < MIN_ELEMENTS:
        return _original("swiglu")(gate, x)
    frac, bits = _exp_parts(0.0, gate)  # exp(-gate)
    return _swiglu_tail(gate, x, frac, bits.view(mx.float32))


def _softmax_matmul(scores: mx.array, values: mx.array) -> mx.array:
    """softmax(scores) @ values, normalised after the matmul."""
    peak = mx.maximum(mx.max(scores, axis=-1, keepdims=True), -3.0e38)  # a fully masked row
    weights = fast_exp(scores, peak)
    return (weights @ values) / mx.sum(weights, axis=-1, keepdims=True)


def _attend(q: mx.array, keys: mx.array, values: mx.array, mask: Any) -> mx.array:
    """q: [B, Hk, r, L, D] (pre-scaled), keys/values: [B, Hk, 1, S, D]."""
    scores = q @ keys.swapaxes(-1, -2)  # [B, Hk, r, L, S]
    if mask is not None:
        if mask.ndim == 3:  # [B, L, S]
            mask = mx.expand_dims(mask, 1)
        if mask.ndim == 4:  # [B, 1|H, L, S] -> [B, 1|Hk, 1|r, L, S]
            mask = (
                mx.expand_dims(mask, 2)
                if mask.shape[1] == 1
                else mask.reshape(mask.shape[0], *scores.shape[1:3], *mask.shape[2:])
            )
        if mask.dtype == mx.bool_:
            scores = mx.where(mask, scores, -mx.inf)
        else:
            scores = scores + mask.astype(scores.dtype)
    return _softmax_matmul(scores, values)


def scaled_dot_product_attention(
    queries: mx.array,
    keys: mx.array,
    values: mx.array,
    cache: Any,
    scale: float,
    mask: Any,
    sinks: mx.array | None = None,
) -> mx.array:
    b, h, length, d = queries.shape
    hk, s = keys.shape[1], keys.shape[2]
    if (
        sinks is not None
        or hasattr(cache, "bits")
        or queries.dtype != mx.float32
        or keys.dtype != mx.float32
        or values.dtype != mx.float32
        or b * h * length * s < MIN_ELEMENTS
    ):
        return _original("scaled_dot_product_attention")(
            queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks
        )
    q = (queries * scale).reshape(b, hk, h // hk, length, d)
    k, v = mx.expand_dims(keys, 2), mx.expand_dims(values, 2)
    if isinstance(mask, str):  # "causal": query i (of the last L positions) sees keys <= i
        if length == 1:
            out = _attend(q, k, v, None)
        else:
            blocks = []
            for i in range(0, length, _QUERY_BLOCK):
                j = min(length, i + _QUERY_BLOCK)
                end = s - length + j  # the block's last query sees keys [0, end)
                visible = mx.arange(end)[None] <= mx.arange(s - length + i, end)[:, None]
                blocks.append(_attend(q[..., i:j, :], k[..., :end, :], v[..., :end, :], visible))
            out = blocks[0] if len(blocks) == 1 else mx.concatenate(blocks, axis=-2)
    else:
        out = _attend(q, k, v, mask)
    return out.reshape(b, h, length, d)


# --------------------------------------------------------------------------- install

_originals: dict[str, Any] = {}


def _original(name: str) -> Any:
    if name not in _originals:
        if name == "swiglu":
            from mlx_lm.models import activations

            _originals[name] = activations.swiglu
        else:
            from mlx_lm.models import base

            _originals[name] = base.scaled_dot_product_attention
    return _originals[name]


def enabled() -> bool:
    return os.environ.get("DVAI_BRIDGE_CPU_KERNELS", "1").strip().lower() not in (
        "0",
        "false",
        "no",
        "off",
    )


def self_check() -> str | None:
    """None if the kernels run here and agree with MLX's ops; else why not."""
    try:
        x = mx.linspace(-30.0, 30.0, 2049)
        gate = mx.linspace(-12.0, 12.0, MIN_ELEMENTS).reshape(2, -1, 1024)
        up = mx.ones(gate.shape)
        q = mx.sin(mx.arange(2 * 4 * 150 * 16, dtype=mx.float32)).reshape(2, 4, 150, 16)
        kv = mx.cos(mx.arange(2 * 2 * 160 * 16, dtype=mx.float32)).reshape(2, 2, 160, 16)
        checks = [
            ("exp", fast_exp(x), mx.exp(x)),
            ("swiglu", swiglu(gate, up), _original("swiglu")(gate, up)),
            (
                "attention",
                scaled_dot_product_attention(q, kv, kv, None, 0.25, "causal"),
                mx.fast.scaled_dot_product_attention(q, kv, kv, scale=0.25, mask="causal"),
            ),
        ]
        for name, ours, ref in checks:
            scale = cast(float, mx.max(mx.abs(ref)).item())  # a float array's item
            if not mx.allclose(ours, ref, rtol=1e-5, atol=1e-6 * scale).item():
                err = mx.max(mx.abs(ours - ref)).item()
                return f"the fast {name} differs from MLX's by up to {err:.2e}"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def install(model: Any) -> bool:
    """Use the fast kernels for ``model`` (an mlx-lm model on the CPU device). True if used."""
    if not enabled():
        log.info("CPU kernels off (DVAI_BRIDGE_CPU_KERNELS=0)")
        return False
    module = sys.modules.get(type(model).__module__)
    names = [n for n in _PATCHED if module is not None and n in vars(module)]
    if module is None or not names:
        return False
    problem = self_check()
    if problem is not None:
        log.warning("MLX's own exp/attention kept on the CPU: %s", problem)
        return False
    for name in names:
        current = getattr(module, name)
        if current is not globals()[name]:
            _originals.setdefault(name, current)
            setattr(module, name, globals()[name])
    log.info("CPU kernels: fast exp for %s in %s", " and ".join(names), module.__name__)
    return True


def uninstall(model: Any) -> None:
    """Give ``model``'s module back MLX's own functions (tests compare the two)."""
    module = sys.modules.get(type(model).__module__)
    for name in _PATCHED:
        if module is not None and getattr(module, name, None) is globals()[name]:
            setattr(module, name, _original(name))
