"""Can a backend generate on this machine? Asked of a child process, so a crash is an answer.

A native build that was compiled for another CPU, or whose kernels are broken on this one
(llama.cpp's AMX kernels segfault on some Intel Xeons), kills the process that calls it. The
probe runs a real prefill of a 96-token prompt and one decoded token in a child process, and
reports how it ended. Results are cached per build, model and CPU under
``~/.cache/dvai-bridge/probes``, so only the first start after a (re)install pays (~1-2 s).

    python -m dvai_bridge.backends.probe llama [MODEL.gguf]   # exit 0 when it decodes
    python -m dvai_bridge.backends.probe mlx
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import platform
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

from ..store.locations import bridge_cache_dir

log = logging.getLogger(__name__)

PROMPT = "Hello world, this is a longer prompt with many tokens. " * 8  # ~96 tokens
TIMEOUT_S = 180.0
MODULES = {"llama": "llama_cpp", "mlx": "mlx"}


@dataclass(frozen=True)
class ProbeResult:
    backend: str
    ok: bool
    detail: str  # what it ran (ok) or how it failed


def _cpu_identity() -> str:
    """Model name and feature flags: a cached answer is only valid on the same kind of CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    keep = [
        line
        for line in text.splitlines()
        if line.startswith(("model name", "flags", "Features", "CPU part"))
    ]
    return "\n".join(sorted(set(keep)))


def installed(backend: str) -> bool:
    return importlib.util.find_spec(MODULES[backend]) is not None


def _build_identity(backend: str) -> str:
    """The installed native build: its package files' sizes and times."""
    spec = importlib.util.find_spec(MODULES[backend])
    if spec is None or not spec.submodule_search_locations:
        return "absent"
    root = Path(next(iter(spec.submodule_search_locations)))
    parts = []
    for path in sorted(root.rglob("*")):
        if path.suffix in (".so", ".dylib", ".dll") or ".so." in path.name:
            st = path.stat()
            parts.append(f"{path.relative_to(root)}:{st.st_size}:{int(st.st_mtime)}")
    return "\n".join(parts)


def _model_identity(model: Path | None) -> str:
    if model is None:
        return "-"
    st = model.stat()
    return f"{model.resolve()}:{st.st_size}:{int(st.st_mtime)}"


def _cache_file(backend: str, model: Path | None) -> Path:
    key = hashlib.sha256(
        "\n--\n".join(
            [
                backend,
                sys.executable,
                _build_identity(backend),
                _model_identity(model),
                _cpu_identity(),
            ]
        ).encode()
    ).hexdigest()[:24]
    return bridge_cache_dir() / "probes" / f"{backend}-{key}.json"


def probe(backend: str, model: Path | None = None, *, use_cache: bool = True) -> ProbeResult:
    """Whether ``backend`` generates here (llama: with ``model``, default the embedded GGUF)."""
    if backend == "llama" and model is None:
        from ..store.resolve import embedded_default_gguf

        model = embedded_default_gguf()
    if not installed(backend):
        return ProbeResult(backend, False, f"{MODULES[backend]} is not installed")
    cache = _cache_file(backend, model)
    if use_cache:
        try:
            return ProbeResult(**json.loads(cache.read_text()))
        except (OSError, ValueError, TypeError):
            pass
    result = _run_child(
        backend, [sys.executable, "-m", __name__, backend, *([str(model)] if model else [])]
    )
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(result)))
        tmp.replace(cache)
    except OSError as exc:
        log.warning("could not cache the %s probe's result: %s", backend, exc)
    return result


def _run_child(backend: str, cmd: list[str]) -> ProbeResult:
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        return ProbeResult(backend, False, f"no token within {TIMEOUT_S:.0f} s")
    if done.returncode == 0:
        return ProbeResult(backend, True, done.stdout.strip().splitlines()[-1])
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        how = f"the process died with {name}"
    else:
        how = f"exit code {done.returncode}"
    tail = (done.stderr.strip().splitlines() or [""])[-1][:300]
    return ProbeResult(
        backend, False, f"{how} while decoding a test prompt" + (f" ({tail})" if tail else "")
    )


# -- the child ----------------------------------------------------------------------------
def _child_llama(model: str) -> str:
    import llama_cpp

    llm = llama_cpp.Llama(model, n_ctx=256, n_batch=128, verbose=False)
    tokens = llm.tokenize(PROMPT.encode())
    llm.eval(tokens)
    token = llm.sample(temp=0.0)
    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    flags = " ".join(
        p.split("=")[0].split(":")[-1].strip() for p in info.split("|") if p.strip().endswith("= 1")
    )
    return (
        f"llama-cpp-python {llama_cpp.__version__}: decoded {len(tokens)} prompt tokens and "
        f"token {token}; CPU features in use: {flags or 'none'}"
    )


def _child_mlx() -> str:
    from .mlx.device import select_device

    device = select_device()
    import mlx.core as mx

    a = mx.random.normal((256, 256))
    value = cast(float, mx.sum(a @ a.T).item())  # a float32 scalar's item
    version = mx.__version__  # type: ignore[attr-defined]  # runtime-only: not in the stubs
    return f"mlx {version}: device {device.kind}, a 256x256 matmul gave {value:.1f}"


def main(argv: list[str]) -> int:
    backend = argv[0]
    message = _child_llama(argv[1]) if backend == "llama" else _child_mlx()
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
