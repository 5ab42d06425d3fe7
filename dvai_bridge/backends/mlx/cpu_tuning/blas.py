"""A real BLAS under MLX's CPU device (Linux), swapped in-process.

Why: the Linux ``mlx[cpu]`` wheel links the netlib *reference* BLAS
(``mlx_cpu.libs/libblas-*.so``), and dequantized fp32 weights multiplied by OpenBLAS are the
fastest form on the CPU (``weights.py``, ``benchmarks/cpu_weight_forms.py``).

How ``enable_fast_blas`` swaps the BLAS in-process (no LD_PRELOAD, no re-exec): ``libmlx.so``
imports ``cblas_sgemm`` through its PLT. We load OpenBLAS with ``RTLD_GLOBAL``; glibc searches
the global scope before libmlx's own dependencies, so if mlx is imported *afterwards*, libmlx
binds to OpenBLAS. CPython imports extensions with ``RTLD_NOW``, so if mlx was imported
*before*, the binding is already fixed: then libmlx's ``cblas_*`` slots in its ``.got.plt``
(writable: libmlx is linked with partial RELRO, no BIND_NOW) are rewritten to OpenBLAS's
functions (``elf.py``). Either way the ``cblas_sgemm`` slot is read back to verify. So it works
before and after ``import mlx``, even after MLX has already run matmuls.

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
import os
import sys
import tempfile
import threading

from ...cpu_cores import physical_cores
from .elf import bind_libmlx, read_maps

log = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict = {}  # "done": bool, "result": str | None, "lib": the CDLL in use
_SYSTEM_BLAS = [
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
]


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


def can_set_threads() -> bool:
    """A fast BLAS is in use and can change its thread count (OpenBLAS)."""
    return fast_blas_active() is not None and hasattr(_state.get("lib"), "openblas_set_num_threads")


def set_blas_threads(n: int) -> bool:
    """Set the fast BLAS's thread count now. Call only while no BLAS call is running."""
    lib = _state.get("lib")
    if lib is None or not hasattr(lib, "openblas_set_num_threads"):
        return False
    lib.openblas_set_num_threads(int(n))
    return True


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

        if not bind_libmlx(lib):
            log.warning("loaded %s but could not route libmlx's cblas_sgemm to it", path)
            return None
        sgemm = ctypes.cast(lib.cblas_sgemm, ctypes.c_void_p).value
        real = next((m[3] for m in read_maps() if sgemm is not None and m[0] <= sgemm < m[1]), path)
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
