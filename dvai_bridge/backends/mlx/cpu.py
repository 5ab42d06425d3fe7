"""Fast weight forms and a real BLAS for MLX's CPU device (Linux).

Why: MLX's CPU quantized matmul never uses BLAS, fp16/bf16 arithmetic on CPU is ~30x slower
than fp32, and the Linux ``mlx[cpu]`` wheel links the netlib *reference* BLAS
(``mlx_cpu.libs/libblas-*.so``). Dequantized fp32 weights multiplied by OpenBLAS are the fastest
form (``benchmarks/cpu_weight_forms.py``).

How ``enable_fast_blas`` swaps the BLAS in-process (no LD_PRELOAD, no re-exec): ``libmlx.so``
imports ``cblas_sgemm`` through its PLT. We load OpenBLAS with ``RTLD_GLOBAL``; glibc searches
the global scope before libmlx's own dependencies, so if mlx is imported *afterwards*, libmlx
binds to OpenBLAS. CPython imports extensions with ``RTLD_NOW``, so if mlx was imported
*before*, the binding is already fixed: then libmlx's ``cblas_*`` slots in its ``.got.plt``
(writable: libmlx is linked with partial RELRO, no BIND_NOW) are rewritten to OpenBLAS's
functions. Either way the ``cblas_sgemm`` slot is read back to verify. So it works before and
after ``import mlx``, even after MLX has already run matmuls.

The ``ngsolve-openblas`` wheel's library NEEDS ``libgfortran.so.5`` (often not installed) and
has RPATH ``$ORIGIN``: we load a wheel-bundled gfortran (``mlx_cpu.libs/libgfortran-*.so.5*``)
by full path, then load OpenBLAS through a symlink in a cache dir that also holds a
``libgfortran.so.5`` symlink to that file; glibc recognises the loaded file by device/inode.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import hashlib
import importlib.util
import logging
import mmap
import os
import struct
import sys
import tempfile
import threading
import time

log = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict = {}  # "done": bool, "result": str | None, "lib": the CDLL in use
_SYSTEM_BLAS = [
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
]
_JUMP_SLOT = {62: 7, 183: 1026}  # e_machine -> R_*_JUMP_SLOT (x86_64, aarch64)


def enable_fast_blas() -> str | None:
    """Make MLX's CPU matmuls use an optimized BLAS, in-process. Idempotent, thread-safe.

    Candidates, in order: ``$DVAI_BRIDGE_BLAS`` (a path; ``none``/``0`` disables), the
    ``ngsolve_openblas`` wheel, a system OpenBLAS. Returns ``"<path> (<config>, N threads)"``,
    or None (not Linux, nothing usable, or the swap could not be verified: MLX then keeps its
    bundled BLAS). Works whether or not mlx was already imported (see module docstring).
    Thread count: ``$DVAI_BRIDGE_BLAS_THREADS``, else ``$OPENBLAS_NUM_THREADS`` if set, else
    ``default_blas_threads()``.
    """
    if not sys.platform.startswith("linux"):
        return None
    with _lock:
        if not _state.get("done"):
            try:
                _state["result"] = _enable()
            except Exception as e:  # never fatal: the bundled BLAS still works
                log.warning("enable_fast_blas failed: %s", e)
                _state["result"] = None
            _state["done"] = True
        return _state["result"]


def fast_blas_active() -> str | None:
    """What ``enable_fast_blas`` returned; None if it was not called or found nothing."""
    return _state.get("result")


def physical_cores() -> int:
    """Physical cores this process may run on."""
    cores = set()
    for cpu in os.sched_getaffinity(0):
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") as f:
                cores.add(f.read().strip())
        except OSError:
            cores.add(str(cpu))
    return len(cores)


def default_blas_threads() -> int:
    """Physical cores available to this process, minus one (at least 1): the starting count.

    MLX calls BLAS from its CPU worker thread while the Python thread builds the next step's
    graph (mlx-lm's async_eval), and OpenBLAS threads spin at barriers: when other processes
    keep cores busy, one descheduled BLAS thread stalls the whole GEMM (on the 2-core test box
    under load, 2 threads decoded up to ~10x slower than 1). ``BlasThreadGovernor`` raises the
    count to every core while the machine is otherwise idle.
    """
    return max(1, physical_cores() - 1)


def blas_threads_fixed() -> bool:
    """The user chose the thread count (environment); nothing may change it."""
    return bool(
        os.environ.get("DVAI_BRIDGE_BLAS_THREADS") or os.environ.get("OPENBLAS_NUM_THREADS")
    )


def set_blas_threads(n: int) -> bool:
    """Set the fast BLAS's thread count now. Call only while no BLAS call is running."""
    lib = _state.get("lib")
    if lib is None or not hasattr(lib, "openblas_set_num_threads"):
        return False
    lib.openblas_set_num_threads(int(n))
    return True


def blas_threads_for(foreign_cores: float, physical: int) -> int:
    """BLAS threads to use when other processes keep ``foreign_cores`` cores busy.

    Measured on 2 cores (SmolLM2, fp32, OpenBLAS): idle, 2 threads decode +30-40% over 1
    (batch 1 and 8); with one core taken by another process, 2 threads lose 40-45%. So: every
    core while the others are (nearly) idle, else only the cores they leave free.
    """
    free = physical - foreign_cores
    if free >= physical - 0.3:
        return physical
    return max(1, min(physical - 1, int(free)))


def _busy_jiffies() -> tuple[int, int]:
    """(all CPUs' busy jiffies, this process's jiffies) from /proc."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle, iowait
    with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()
    return busy, int(own[11]) + int(own[12])  # utime + stime


class BlasThreadGovernor:
    """Every ``period`` seconds, measure how much CPU other processes use and pick the BLAS
    thread count for it (``blas_threads_for``); a change needs the same answer twice in a row
    and is applied between steps, after MLX's queue has drained. Runs on the engine thread."""

    def __init__(self, threads: int, period: float = 1.0) -> None:
        self.threads = threads
        self.period = period
        self.physical = physical_cores()
        self._clk = os.sysconf("SC_CLK_TCK")
        self._last = (time.monotonic(), *_busy_jiffies())
        self._pending: int | None = None

    @classmethod
    def create(cls) -> BlasThreadGovernor | None:
        """A governor if the thread count may change here, else None."""
        if (
            blas_threads_fixed()
            or fast_blas_active() is None
            or not hasattr(_state.get("lib"), "openblas_set_num_threads")
        ):
            return None  # fixed by the user, or no OpenBLAS in use (fast_blas is Linux-only)
        return cls(default_blas_threads())

    def tick(self) -> None:
        now = time.monotonic()
        t0, busy0, own0 = self._last
        if now - t0 < self.period:
            return
        busy, own = _busy_jiffies()
        self._last = (now, busy, own)
        foreign = max(0.0, (busy - busy0) - (own - own0)) / self._clk / (now - t0)
        want = blas_threads_for(foreign, self.physical)
        if want == self.threads:
            self._pending = None
            return
        if self._pending != want:
            self._pending = want
            return
        import mlx.core as mx

        mx.synchronize()  # no BLAS call may be running while OpenBLAS changes its pool
        if set_blas_threads(want):
            log.info(
                "BLAS threads %d -> %d (other processes use %.2f cores)",
                self.threads,
                want,
                foreign,
            )
            self.threads = want
        self._pending = None


def _enable() -> str | None:
    env = os.environ.get("DVAI_BRIDGE_BLAS", "").strip()
    if env.lower() in ("0", "none", "off", "false"):
        return None
    for path in _candidates(env):
        lib = _load(path)  # RTLD_LOCAL until it passes the sanity check
        if lib is None or not _sane(lib, path):
            continue
        lib = _state["lib"] = ctypes.CDLL(lib._name, mode=os.RTLD_GLOBAL | os.RTLD_NOLOAD)
        threads = _set_threads(lib)
        import mlx.core  # noqa: F401  (binds libmlx now if it was not imported yet)

        if not _bind_libmlx(lib):
            log.warning("loaded %s but could not route libmlx's cblas_sgemm to it", path)
            return None
        sgemm = ctypes.cast(lib.cblas_sgemm, ctypes.c_void_p).value
        real = next((m[3] for m in _read_maps() if m[0] <= sgemm < m[1]), path)
        desc = f"{real} ({_config(lib) or 'BLAS'}, {threads or '?'} threads)"
        log.info("MLX CPU BLAS: %s", desc)
        return desc
    return None


def _candidates(env: str) -> list[str]:
    out = [env] if env else []
    spec = importlib.util.find_spec("ngsolve_openblas")  # not imported: it prints on failure
    for loc in (spec.submodule_search_locations or []) if spec else []:
        out += sorted(glob.glob(os.path.join(loc, "libopenblas*.so*")))
    found = ctypes.util.find_library("openblas")
    out += ([found] if found else []) + [p for p in _SYSTEM_BLAS if os.path.exists(p)]
    return list(dict.fromkeys(out))


def _load(path: str) -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(path)
    except OSError as e:
        if "libgfortran.so.5" not in str(e):
            log.debug("cannot load %s: %s", path, e)
            return None
    for gfortran in _bundled_gfortrans():
        try:
            ctypes.CDLL(gfortran)  # by full path; its own RPATH finds its libquadmath
            return ctypes.CDLL(_shim(path, gfortran))
        except OSError as e:
            log.debug("cannot load %s with %s: %s", path, gfortran, e)
    return None


def _bundled_gfortrans() -> list[str]:
    """libgfortran copies shipped in wheels (mlx_cpu.libs first: libmlx already loads it)."""
    spec = importlib.util.find_spec("mlx")
    roots = [os.path.dirname(p) for p in (spec.submodule_search_locations or [])] if spec else []
    found = []
    for root in dict.fromkeys(roots + [p for p in sys.path if p.endswith("-packages")]):
        found += glob.glob(os.path.join(root, "*.libs", "libgfortran*.so.5*"))
    return sorted(dict.fromkeys(found), key=lambda p: "mlx_cpu.libs" not in p)


def _shim(blas: str, gfortran: str) -> str:
    """A symlink to ``blas`` in a dir that also has ``libgfortran.so.5`` -> ``gfortran``.

    For libraries whose RPATH has ``$ORIGIN`` (the wheel's): glibc expands it to the symlink's
    dir (symlinks are not resolved), opens our libgfortran.so.5, sees an already-loaded inode.
    """
    blas, gfortran = os.path.realpath(blas), os.path.realpath(gfortran)
    key = hashlib.sha1(f"{blas}\0{gfortran}".encode()).hexdigest()[:16]
    root = os.environ.get("DVAI_BRIDGE_CACHE") or os.path.expanduser("~/.cache/dvai-bridge")
    shim = os.path.join(root, "blas", key)
    try:
        os.makedirs(shim, exist_ok=True)
    except OSError:  # read-only home: a private temp dir will do
        shim = os.path.join(tempfile.gettempdir(), f"dvai-bridge-{os.getuid()}", "blas", key)
        os.makedirs(shim, exist_ok=True)
    for name, target in ((os.path.basename(blas), blas), ("libgfortran.so.5", gfortran)):
        link = os.path.join(shim, name)
        if not (os.path.islink(link) and os.readlink(link) == target):
            tmp = f"{link}.{os.getpid()}.tmp"
            os.symlink(target, tmp)
            os.replace(tmp, link)  # atomic against concurrent processes
    return os.path.join(shim, os.path.basename(blas))


def _config(lib: ctypes.CDLL) -> str | None:
    fn = getattr(lib, "openblas_get_config", None)
    if fn is None:
        return None
    fn.restype = ctypes.c_char_p
    return fn().decode(errors="replace").strip()


def _sane(lib: ctypes.CDLL, path: str) -> bool:
    """Exports cblas_sgemm with 32-bit ints (LP64) and gets a 2x2 product right."""
    if not hasattr(lib, "cblas_sgemm") or "USE64BITINT" in (_config(lib) or ""):
        log.debug("%s: no LP64 cblas_sgemm", path)
        return False
    f4 = ctypes.c_float * 4
    a, b, c, one, zero = f4(1, 2, 3, 4), f4(5, 6, 7, 8), f4(), ctypes.c_float(1), ctypes.c_float(0)
    lib.cblas_sgemm(101, 111, 111, 2, 2, 2, one, a, 2, b, 2, zero, c, 2)  # row-major, no trans
    return list(c) == [19.0, 22.0, 43.0, 50.0]


def _set_threads(lib: ctypes.CDLL) -> int | None:
    want = os.environ.get("DVAI_BRIDGE_BLAS_THREADS")
    if not want and os.environ.get("OPENBLAS_NUM_THREADS"):
        return int(os.environ["OPENBLAS_NUM_THREADS"])  # OpenBLAS read it when loaded
    if not hasattr(lib, "openblas_set_num_threads"):
        return None
    n = int(want) if want else default_blas_threads()
    lib.openblas_set_num_threads(n)
    return n


def _bind_libmlx(lib: ctypes.CDLL) -> bool:
    """Point libmlx's cblas_* PLT slots at ``lib``; True if cblas_sgemm now goes there."""
    maps, ok = _read_maps(), False
    for path in {m[3] for m in maps if os.path.basename(m[3]).startswith("libmlx.so")}:
        base = min(m[0] for m in maps if m[3] == path and m[2] == 0)
        slots = _plt_slots(path, "cblas_")
        if "cblas_sgemm" not in slots:
            continue
        for name, offset in slots.items():
            target = getattr(lib, name, None)
            addr = ctypes.cast(target, ctypes.c_void_p).value if target is not None else None
            slot = ctypes.c_uint64.from_address(base + offset)
            if addr is None or slot.value == addr:
                continue
            if any(m[0] <= base + offset < m[1] and m[4][1] == "w" for m in maps):
                slot.value = addr  # aligned 8-byte store: atomic for concurrent callers
            else:
                log.debug("%s: GOT slot of %s is read-only", path, name)
        sgemm = ctypes.cast(lib.cblas_sgemm, ctypes.c_void_p).value
        if ctypes.c_uint64.from_address(base + slots["cblas_sgemm"]).value != sgemm:
            return False
        ok = True
    return ok


def _read_maps() -> list[tuple[int, int, int, str, str]]:
    """(start, end, file offset, path, perms) of every file mapping of this process."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/"):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out.append((lo, hi, int(parts[2], 16), parts[5].rstrip("\n"), parts[1]))
    return out


def _plt_slots(path: str, prefix: str) -> dict[str, int]:
    """{symbol: GOT slot offset from load base} of an ELF64 file's JUMP_SLOT relocations."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        if m[:4] != b"\x7fELF" or m[4] != 2 or m[5] != 1:  # ELF64, little-endian
            return {}
        machine = struct.unpack_from("<H", m, 0x12)[0]
        (shoff,) = struct.unpack_from("<Q", m, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", m, 0x3A)
        secs = [struct.unpack_from("<IIQQQQIIQQ", m, shoff + i * shentsize) for i in range(shnum)]
        out = {}
        for _, typ, _, _, off, size, link, _, _, _ in secs:
            if typ != 4 or secs[link][1] != 11:  # SHT_RELA against SHT_DYNSYM
                continue
            symtab, strtab = secs[link][4], secs[secs[link][6]][4]
            for r in range(off, off + size, 24):
                r_offset, r_info = struct.unpack_from("<QQ", m, r)
                if r_info & 0xFFFFFFFF != _JUMP_SLOT.get(machine):
                    continue
                start = strtab + struct.unpack_from("<I", m, symtab + (r_info >> 32) * 24)[0]
                name = m[start : m.find(b"\0", start)].decode()
                if name.startswith(prefix):
                    out[name] = r_offset
        return out


# --------------------------------------------------------------------------- allocator

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def tune_allocator(threshold: int = 1 << 30) -> bool:
    """Keep large freed buffers in the heap instead of returning them to the OS (glibc).

    MLX's CPU device allocates every op's output with ``malloc``. glibc serves blocks above
    its mmap threshold (at most 32 MiB by default) with a fresh ``mmap``, so each such op
    page-faults its whole output again: a multiply over 37 MB (the attention scores of a
    512-token prefill chunk at 2k context) took 38 ms instead of 4.5. Raising the mmap and
    trim thresholds lets those blocks be reused. Linux/glibc only; False elsewhere.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
        return ok and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 * threshold))
    except (OSError, AttributeError):  # not glibc
        return False


# --------------------------------------------------------------------------- weight forms


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


def prepare_model_for_cpu(model, *, memory_budget_bytes: int | None = None) -> str:
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
    for _, p in tree_flatten(model.parameters()):
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
