"""The fast CPU exp, SwiGLU and attention agree with MLX's own ops (random inputs, every mask
form mlx-lm passes), and fall back to them where they do not apply."""

from __future__ import annotations

import sys
import types

import pytest

mx = pytest.importorskip("mlx.core")

from dvai_bridge.backends.mlx.cpu_tuning import kernels as K


@pytest.fixture
def everywhere(monkeypatch):
    """The fast forms for every size (by default small arrays go to MLX's ops)."""
    monkeypatch.setattr(K, "MIN_ELEMENTS", 0)


def close(ours, ref, rtol=1e-5):
    scale = mx.max(mx.abs(ref)).item()
    return mx.allclose(ours, ref, rtol=rtol, atol=1e-6 * scale).item()


def test_self_check_passes_here():
    assert K.self_check() is None


def test_exp_matches_mlx_over_the_float32_range():
    x = mx.linspace(-87.0, 88.0, 100_001)
    assert close(K.fast_exp(x), mx.exp(x), rtol=1e-6)
    tiny = K.fast_exp(mx.array([-1000.0, -mx.inf]))
    assert mx.all(tiny <= 1.2e-38).item() and mx.all(tiny >= 0).item()


def test_swiglu_matches_mlx(everywhere):
    gate = mx.random.normal((3, 5, 1536), key=mx.random.key(0)) * 6
    up = mx.random.normal((3, 5, 1536), key=mx.random.key(1))
    assert close(K.swiglu(gate, up), K._original("swiglu")(gate, up))


def test_half_precision_goes_to_mlx(everywhere):
    gate = mx.random.normal((2, 8)).astype(mx.float16)
    assert mx.array_equal(K.swiglu(gate, gate), K._original("swiglu")(gate, gate)).item()


def qkv(b, h, hk, length, s, d=32, seed=0):
    k0, k1, k2 = mx.random.split(mx.random.key(seed), 3)
    return (
        mx.random.normal((b, h, length, d), key=k0),
        mx.random.normal((b, hk, s, d), key=k1),
        mx.random.normal((b, hk, s, d), key=k2),
    )


SHAPES = [
    (1, 9, 3, 300, 700),  # causal prefill over a cached prefix, several query blocks
    (4, 9, 3, 33, 84),  # a batched prefill
    (8, 9, 3, 1, 120),  # batched decode
    (2, 4, 4, 129, 129),
]  # no grouping, one query past a block


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("form", ["causal", "none", "bool_b1", "bool_2d", "additive_bh"])
def test_attention_matches_mlx(shape, form, everywhere):
    b, h, _, length, s = shape
    q, k, v = qkv(*shape)
    u = mx.random.uniform(shape=(b, h, length, s), key=mx.random.key(7)) > 0.3
    mask = {
        "causal": "causal",
        "none": None,
        "bool_b1": u[:, :1],
        "bool_2d": u[0, 0],
        "additive_bh": mx.where(u, 0.0, -mx.inf),
    }[form]
    if form == "causal" and length == 1:
        mask = None  # mlx-lm passes no mask for one query
    ours = K.scaled_dot_product_attention(q, k, v, None, 0.17, mask)
    ref = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.17, mask=mask)
    assert ours.shape == ref.shape
    assert close(ours, ref)


def test_a_fully_masked_row_stays_finite(everywhere):
    q, k, v = qkv(1, 2, 2, 3, 5)
    mask = mx.array([[False] * 5, [True] * 5, [True, False, True, False, True]])
    out = K.scaled_dot_product_attention(q, k, v, None, 1.0, mask)
    assert mx.all(mx.isfinite(out)).item()
    ref = mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0, mask=mask)
    assert close(out[..., 1:, :], ref[..., 1:, :])


def test_small_arrays_go_to_mlx(monkeypatch):
    calls = []
    for name in ("swiglu", "scaled_dot_product_attention"):
        monkeypatch.setitem(K._originals, name, lambda *a, n=name, **kw: calls.append(n) or n)
    small = mx.ones((8, 1, 1536))  # a batched decode step's MLP activations
    assert K.swiglu(small, small) == "swiglu"
    q, k, v = qkv(8, 9, 3, 1, 120)  # its attention over a short context
    assert (
        K.scaled_dot_product_attention(q, k, v, None, 1.0, None) == "scaled_dot_product_attention"
    )
    big = mx.ones((8, 8, 1536))
    assert K.swiglu(big, big).shape == big.shape
    q, k, v = qkv(8, 9, 3, 1, 1000)  # a long context: the fast form
    assert K.scaled_dot_product_attention(q, k, v, None, 1.0, None).shape == q.shape
    assert calls == ["swiglu", "scaled_dot_product_attention"]


def test_sinks_and_quantized_caches_go_to_mlx(monkeypatch, everywhere):
    calls = []
    monkeypatch.setitem(
        K._originals, "scaled_dot_product_attention", lambda *a, **kw: calls.append(kw) or "mlx"
    )
    q, k, v = qkv(1, 2, 2, 4, 4)
    assert K.scaled_dot_product_attention(q, k, v, None, 1.0, None, sinks=mx.zeros(2)) == "mlx"
    quantized = types.SimpleNamespace(bits=4)
    assert K.scaled_dot_product_attention(q, k, v, quantized, 1.0, "causal") == "mlx"
    assert len(calls) == 2


def fake_model(module_name: str):
    module = types.ModuleType(module_name)
    module.swiglu = K._original("swiglu")
    module.scaled_dot_product_attention = K._original("scaled_dot_product_attention")
    cls = type("Model", (), {"__module__": module_name})
    sys.modules[module_name] = module
    return module, cls()


def test_install_rebinds_the_models_module_and_uninstall_restores_it(monkeypatch):
    module, model = fake_model("dvai_fake_model_a")
    try:
        assert K.install(model) and K.install(model)  # idempotent
        assert module.swiglu is K.swiglu
        assert module.scaled_dot_product_attention is K.scaled_dot_product_attention
        K.uninstall(model)
        assert module.swiglu is K._original("swiglu")
    finally:
        del sys.modules["dvai_fake_model_a"]


@pytest.mark.parametrize("why", ["env", "self_check"])
def test_install_keeps_mlx_ops_when_off_or_failing(monkeypatch, why):
    if why == "env":
        monkeypatch.setenv("DVAI_BRIDGE_CPU_KERNELS", "0")
    else:
        monkeypatch.setattr(K, "self_check", lambda: "no compiler")
    module, model = fake_model("dvai_fake_model_b")
    try:
        assert not K.install(model)
        assert module.swiglu is K._original("swiglu")
    finally:
        del sys.modules["dvai_fake_model_b"]
