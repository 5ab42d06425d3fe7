"""Rewriting libmlx's PLT slots in-process, so MLX calls another BLAS (Linux, ELF64).

CPython imports extensions with ``RTLD_NOW``, so once mlx is imported, libmlx's ``cblas_*``
imports are bound. libmlx is linked with partial RELRO (no BIND_NOW), so their slots in its
``.got.plt`` stay writable: ``bind_libmlx`` finds them from the file's JUMP_SLOT relocations
(``plt_slots``) and the load base in ``/proc/self/maps`` (``read_maps``), and stores the new
addresses there, then reads the ``cblas_sgemm`` slot back to verify.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import struct

log = logging.getLogger(__name__)

_JUMP_SLOT = {62: 7, 183: 1026}  # e_machine -> R_*_JUMP_SLOT (x86_64, aarch64)


def bind_libmlx(lib: ctypes.CDLL) -> bool:
    """Point libmlx's cblas_* PLT slots at ``lib``; True if cblas_sgemm now goes there."""
    maps, ok = read_maps(), False
    for path in {m[3] for m in maps if os.path.basename(m[3]).startswith("libmlx.so")}:
        base = min(m[0] for m in maps if m[3] == path and m[2] == 0)
        slots = plt_slots(path, "cblas_")
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


def read_maps() -> list[tuple[int, int, int, str, str]]:
    """(start, end, file offset, path, perms) of every file mapping of this process."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/"):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out.append((lo, hi, int(parts[2], 16), parts[5].rstrip("\n"), parts[1]))
    return out


def plt_slots(path: str, prefix: str) -> dict[str, int]:
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
