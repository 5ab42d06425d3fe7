"""What the llama backend's prompt cache and its CPU ubatch cost, measured on the real model.

  snapshot   save one sequence's KV to host memory (llama_state_seq_get_data) and put it back
             into an empty sequence (llama_state_seq_set_data): what the prompt cache does
  seq_cp     the alternative: copy the cells to another sequence inside the pool
             (llama_memory_seq_cp) and back
  prefill    what either saves: evaluating those tokens again
  ubatch     prefill at n_ubatch 63 (what the batch uses on the CPU, see batch.py) and 512

    python benchmarks/llama_kv.py                 # SmolLM2 Q4_1, 250/1000/2000 tokens
    python benchmarks/llama_kv.py --gguf other.gguf --tokens 500,4000

Writes ``benchmarks/results/llama_kv.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama import ROOT, default_gguf


def timed(fn, repeat: int) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs."""
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--tokens", default="250,1000,2000")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "llama_kv.json"))
    args = ap.parse_args()

    import llama_cpp as lc

    from dvai_bridge.backends.cpu_cores import physical_cores
    from dvai_bridge.backends.llama_cpp import kv

    lengths = [int(x) for x in args.tokens.split(",")]
    threads = args.threads or physical_cores()
    n_ctx = 2 * max(lengths) + 64
    lc.llama_backend_init()
    mparams = lc.llama_model_default_params()
    model = lc.llama_model_load_from_file((args.gguf or default_gguf()).encode(), mparams)
    vocab = lc.llama_model_get_vocab(model)
    n_vocab = lc.llama_vocab_n_tokens(vocab)
    rows = []
    for ubatch in (63, 512):
        ctx = kv.open_context(
            lc, model, n_ctx=n_ctx, n_seq=2, n_batch=512, n_ubatch=ubatch, threads=threads
        )
        mem = lc.llama_get_memory(ctx)
        batch = kv.TokenBatch(lc, 512)
        for n in lengths:
            tokens = [(7 * i) % (n_vocab - 1) + 1 for i in range(n)]

            def prefill(tokens=tokens, batch=batch, ctx=ctx, mem=mem) -> None:
                lc.llama_memory_clear(mem, True)
                for start in range(0, len(tokens), 512):
                    batch.clear()
                    part = tokens[start : start + 512]
                    batch.add(0, part, start, start + len(part) == len(tokens))
                    assert lc.llama_decode(ctx, batch.ready()) == 0

            row = {
                "tokens": n,
                "ubatch": ubatch,
                "prefill_s": round(timed(prefill, max(1, args.repeat // 2)), 4),
            }
            if ubatch == 63:
                prefill()
                snap = kv.save_sequence(lc, ctx, 0, n)
                assert snap is not None
                row["snapshot_bytes"] = len(snap.data)
                row["save_ms"] = round(
                    1000 * timed(lambda ctx=ctx, n=n: kv.save_sequence(lc, ctx, 0, n), args.repeat),
                    3,
                )

                def restore(ctx=ctx, mem=mem, snap=snap) -> None:
                    lc.llama_memory_seq_rm(mem, 1, -1, -1)
                    assert kv.restore_sequence(lc, ctx, mem, 1, snap)

                row["restore_ms"] = round(1000 * timed(restore, args.repeat), 3)

                def copy_in_pool(mem=mem) -> None:
                    lc.llama_memory_seq_rm(mem, 1, -1, -1)
                    lc.llama_memory_seq_cp(mem, 0, 1, -1, -1)

                row["seq_cp_ms"] = round(1000 * timed(copy_in_pool, args.repeat), 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
        lc.llama_free(ctx)
    lc.llama_model_free(model)
    result = {
        "benchmark": "llama prompt cache and ubatch costs",
        "threads": threads,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
