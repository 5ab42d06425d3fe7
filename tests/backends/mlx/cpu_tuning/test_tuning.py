"""dvai_bridge.backends.mlx.cpu_tuning: CPU weight forms and in-process BLAS swap (tiny models)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")
pytest.importorskip("mlx_lm")

from mlx.utils import tree_flatten, tree_map

from dvai_bridge.backends.mlx.cpu_tuning import blas, elf, governor, weights


class Tiny(nn.Module):
    def __init__(self, vocab=256, dim=64, hidden=128):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.RMSNorm(dim)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=True)

    def __call__(self, tokens):
        h = self.norm(self.embed(tokens))
        h = h + self.down(nn.silu(self.up(h)))
        return self.embed.as_linear(h)


def stock_quantized(seed=0):
    """A 4-bit model with fp16 scales/biases/norms, as a stock checkpoint load gives."""
    mx.random.seed(seed)
    model = Tiny()
    model.update(tree_map(lambda p: p + 0.1 * mx.random.normal(p.shape), model.parameters()))
    nn.quantize(model, group_size=32, bits=4)
    model.update(
        tree_map(lambda p: p.astype(mx.float16) if p.dtype == mx.float32 else p, model.parameters())
    )
    mx.eval(model.parameters())
    return model


def reference_logits(tokens):
    """The quantized model's output computed with fp32 scales (the exact quantized function)."""
    model = stock_quantized()
    model.update(
        tree_map(lambda p: p.astype(mx.float32) if p.dtype == mx.float16 else p, model.parameters())
    )
    return model(tokens)


def float_dtypes(model):
    return {
        p.dtype for _, p in tree_flatten(model.parameters()) if mx.issubdtype(p.dtype, mx.floating)
    }


TOKENS = mx.array([[1, 5, 17, 200, 3, 99, 42]])


@pytest.fixture
def fake_blas(monkeypatch):
    monkeypatch.setitem(blas._state, "result", "fake-blas")


def test_dequantize_matches_quantized(fake_blas):
    model = stock_quantized()
    form = weights.prepare_model_for_cpu(model, memory_budget_bytes=1 << 30)
    assert "dequantized float32" in form
    assert not any(
        isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules()
    )
    assert isinstance(model.up, nn.Linear) and isinstance(model.embed, nn.Embedding)
    assert model.down.bias.dtype == mx.float32
    assert float_dtypes(model) == {mx.float32}
    ref = reference_logits(TOKENS)
    out = model(TOKENS)
    assert out.dtype == mx.float32
    assert mx.allclose(out, ref, rtol=1e-4, atol=1e-4).item()


def test_small_budget_keeps_quantized_with_fp32_scales(fake_blas):
    model = stock_quantized()
    form = weights.prepare_model_for_cpu(model, memory_budget_bytes=1000)
    assert "quantized 4-bit" in form and "budget" in form
    assert isinstance(model.up, nn.QuantizedLinear)
    assert isinstance(model.embed, nn.QuantizedEmbedding)
    assert model.up.scales.dtype == mx.float32 and model.up.biases.dtype == mx.float32
    assert model.up.weight.dtype == mx.uint32
    assert float_dtypes(model) == {mx.float32}
    assert mx.allclose(model(TOKENS), reference_logits(TOKENS), rtol=1e-5, atol=1e-5).item()


def test_without_fast_blas_keeps_quantized(monkeypatch):
    monkeypatch.setitem(blas._state, "result", None)
    model = stock_quantized()
    form = weights.prepare_model_for_cpu(model, memory_budget_bytes=1 << 40)
    assert "no fast BLAS" in form
    assert isinstance(model.down, nn.QuantizedLinear)
    assert float_dtypes(model) == {mx.float32}


def test_unquantized_half_model_becomes_fp32(fake_blas):
    model = Tiny()
    model.set_dtype(mx.bfloat16)
    assert "float32 weights" in weights.prepare_model_for_cpu(model)
    assert float_dtypes(model) == {mx.float32}


def test_default_budget_is_sane():
    budget = weights.default_memory_budget()
    phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < budget <= phys // 2


SUBPROCESS = textwrap.dedent("""
    import ctypes, json, sys
    if sys.argv[1] == "after":
        import mlx.core as mx
        mx.eval(mx.ones((8, 8)) @ mx.ones((8, 8)))  # binds cblas_sgemm to the bundled BLAS
    from dvai_bridge.backends.mlx.cpu_tuning import blas, elf
    first = blas.enable_fast_blas() if sys.argv[1] != "none" else None
    second = blas.enable_fast_blas() if sys.argv[1] != "none" else None
    import mlx.core as mx, numpy as np
    mx.set_default_device(mx.cpu)
    a = mx.random.normal((64, 576), key=mx.random.key(0))
    b = mx.random.normal((576, 1536), key=mx.random.key(1))
    c = np.array(a @ b)
    err = float(np.abs(c - np.array(a).astype(np.float64) @ np.array(b)).max())

    class DlInfo(ctypes.Structure):
        _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p),
                    ("sname", ctypes.c_char_p), ("saddr", ctypes.c_void_p)]

    maps = elf.read_maps()
    lib = [m[3] for m in maps if "libmlx.so" in m[3]][0]
    base = min(m[0] for m in maps if m[3] == lib and m[2] == 0)
    slot = ctypes.c_uint64.from_address(base + elf.plt_slots(lib, "cblas_")["cblas_sgemm"])
    info = DlInfo()
    ctypes.CDLL(None).dladdr(ctypes.c_void_p(slot.value), ctypes.byref(info))
    print(json.dumps({"first": first, "same": first == second, "err": err,
                      "active": blas.fast_blas_active(), "bound_to": info.fname.decode(),
                      "symbol": info.sname.decode()}))
""")


def run_blas_subprocess(order, cache_dir):
    env = dict(os.environ, DVAI_BRIDGE_CACHE=str(cache_dir))
    env.pop("DVAI_BRIDGE_BLAS", None)
    p = subprocess.run(
        [sys.executable, "-c", SUBPROCESS, order],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


HAVE_WHEEL = importlib.util.find_spec("ngsolve_openblas") is not None
linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="BLAS swap is Linux-only"
)


@linux_only
@pytest.mark.parametrize("order", ["before", "after"])
def test_enable_fast_blas_in_subprocess(order, tmp_path):
    """Called before mlx is imported, or after it already ran a matmul: both must take."""
    r = run_blas_subprocess(order, tmp_path)
    if r["first"] is None and not HAVE_WHEEL:
        pytest.skip("no optimized BLAS on this machine")
    assert r["first"] is not None
    assert os.path.exists(r["first"].split(" (")[0])
    assert r["same"] and r["active"] == r["first"]  # idempotent
    assert r["symbol"] == "cblas_sgemm"
    assert os.path.realpath(r["bound_to"]) == os.path.realpath(r["first"].split(" (")[0])
    assert r["err"] < 1e-3


@linux_only
def test_without_enable_mlx_uses_bundled_blas(tmp_path):
    r = run_blas_subprocess("none", tmp_path)
    assert r["symbol"] == "cblas_sgemm" and "openblas" not in r["bound_to"]
    assert r["err"] < 1e-3


def test_enable_fast_blas_disabled_by_env():
    code = (
        "from dvai_bridge.backends.mlx.cpu_tuning import blas; "
        "print(blas.enable_fast_blas(), blas.enable_fast_blas())"
    )
    env = dict(os.environ, DVAI_BRIDGE_BLAS="none")
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["None", "None"]


def test_plt_slots_finds_cblas_sgemm():
    maps = [m[3] for m in elf.read_maps() if os.path.basename(m[3]).startswith("libmlx.so")]
    if not maps:
        pytest.skip("libmlx.so not mapped (non-Linux build)")
    assert "cblas_sgemm" in elf.plt_slots(maps[0], "cblas_")


@pytest.mark.parametrize(
    ("foreign", "physical", "threads"),
    [
        (0.0, 2, 2),
        (0.25, 2, 2),
        (0.35, 2, 1),
        (1.0, 2, 1),
        (1.9, 2, 1),
        (3.0, 2, 1),
        (0.1, 8, 8),
        (2.5, 8, 5),
        (7.5, 8, 1),
        (0.0, 1, 1),
        (0.9, 1, 1),
    ],
)
def test_blas_threads_follow_what_other_processes_leave_free(foreign, physical, threads):
    assert governor.blas_threads_for(foreign, physical) == threads


def test_the_governor_waits_for_two_agreeing_readings_and_respects_the_environment(monkeypatch):
    monkeypatch.setenv("DVAI_BRIDGE_BLAS_THREADS", "1")
    assert governor.BlasThreadGovernor.create() is None  # the user's choice stands
    monkeypatch.delenv("DVAI_BRIDGE_BLAS_THREADS")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)

    applied = []
    monkeypatch.setattr(governor, "set_blas_threads", lambda n: applied.append(n) or True)
    gov = governor.BlasThreadGovernor(threads=1, period=0.0)
    gov.physical = 2
    readings = iter([(1000, 0), (1000, 0), (1000, 0), (1000, 0)])  # nobody else busy
    monkeypatch.setattr(governor, "_busy_jiffies", lambda: next(readings))
    gov._last = (gov._last[0] - 1.0, 1000, 0)
    gov.tick()
    assert applied == [] and gov.threads == 1  # one reading is not enough
    gov.tick()
    assert applied == [2] and gov.threads == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tune_allocator_sets_glibc_thresholds():
    from dvai_bridge.backends.mlx.cpu_tuning.allocator import tune_allocator

    assert tune_allocator() is True


def test_apply_is_the_one_door_and_reports_what_it_did(fake_blas, monkeypatch):
    """cpu_tuning.apply: the weights' form, the allocator, the kernels (none here: the tiny
    model's module has no swiglu or attention to replace) and the governor, ticked safely."""
    from dvai_bridge.backends.mlx import cpu_tuning

    monkeypatch.setenv("DVAI_BRIDGE_BLAS_THREADS", "1")  # fixed by the user: no governor
    model = stock_quantized()
    tuning = cpu_tuning.apply(model)
    assert "dequantized float32" in tuning.form
    assert tuning.allocator is sys.platform.startswith("linux")
    assert tuning.kernels is False and tuning.governor is None
    tuning.tick()  # nothing to govern: a no-op
    assert mx.allclose(model(TOKENS), reference_logits(TOKENS), rtol=1e-4, atol=1e-4).item()
