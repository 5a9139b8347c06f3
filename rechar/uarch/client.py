"""Callgrind's client requests from Python: start and stop instrumentation, zero and dump the
counts, exactly around the simulated calls.

Valgrind's client requests are a magic instruction sequence (valgrind.h's amd64
``__SPECIAL_INSTRUCTION_PREAMBLE`` followed by ``xchgq %rbx,%rbx``, arguments in an array that
%rax points to, the result in %rdx) which Valgrind's translator recognises and which a real CPU
executes as a no-op. valgrind.h makes them with inline assembly, so Python cannot include it;
the alternative, ``callgrind_control`` from another process, is asynchronous (Valgrind polls for
its command file), so the simulated window would start and end somewhere inside the waiting
code. The sequence is therefore written here as 39 bytes of machine code in an executable page,
called through ctypes: a function ``request(args, default) -> result`` that does exactly what
``VALGRIND_DO_CLIENT_REQUEST_EXPR`` does. Outside Valgrind it returns ``default``.
"""

from __future__ import annotations

import ctypes
import mmap
import platform

#: valgrind.h: VG_USERREQ_TOOL_BASE('C','T') and callgrind.h's request enum that follows it.
_CALLGRIND_BASE = (ord("C") << 24) | (ord("T") << 16)
DUMP_STATS = _CALLGRIND_BASE + 0
ZERO_STATS = _CALLGRIND_BASE + 1
TOGGLE_COLLECT = _CALLGRIND_BASE + 2
DUMP_STATS_AT = _CALLGRIND_BASE + 3
START_INSTRUMENTATION = _CALLGRIND_BASE + 4
STOP_INSTRUMENTATION = _CALLGRIND_BASE + 5
RUNNING_ON_VALGRIND = 0x1001  # valgrind.h: VG_USERREQ__RUNNING_ON_VALGRIND (core request)

#: amd64, System V calling convention: rdi = &args[0], rsi = default.
_AMD64_REQUEST = bytes([
    0x48, 0x89, 0xF8,        # mov %rdi,%rax      (valgrind reads the argument block from %rax)
    0x48, 0x89, 0xF2,        # mov %rsi,%rdx      (the result when not under Valgrind)
    0x48, 0xC1, 0xC7, 0x03,  # rol $3,%rdi        \
    0x48, 0xC1, 0xC7, 0x0D,  # rol $13,%rdi        | the preamble: 128 bits of rotation,
    0x48, 0xC1, 0xC7, 0x3D,  # rol $61,%rdi        | %rdi is unchanged
    0x48, 0xC1, 0xC7, 0x33,  # rol $51,%rdi       /
    0x48, 0x87, 0xDB,        # xchg %rbx,%rbx     (%rdx = client_request(%rax))
    0x48, 0x89, 0xD0,        # mov %rdx,%rax
    0xC3,                    # ret
])

_request = None
_page = None  # keeps the executable page mapped


def supported() -> bool:
    return platform.machine() in ("x86_64", "AMD64")


def _function():
    global _request, _page
    if _request is None:
        if not supported():
            raise RuntimeError(f"callgrind client requests are implemented for x86_64 only, not {platform.machine()}")
        _page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        _page.write(_AMD64_REQUEST)
        address = ctypes.addressof(ctypes.c_char.from_buffer(_page))
        _request = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.POINTER(ctypes.c_ulong), ctypes.c_ulong)(address)
    return _request


_block = (ctypes.c_ulong * 6)()  # the request's argument block, made once: no allocation inside a window


def request(code: int, *args: int, default: int = 0) -> int:
    _block[:] = [code, *args, *[0] * (5 - len(args))]
    return int(_function()(_block, default))


def running_on_valgrind() -> bool:
    return supported() and request(RUNNING_ON_VALGRIND) > 0


def start_instrumentation() -> None:
    request(START_INSTRUMENTATION)


def stop_instrumentation() -> None:
    request(STOP_INSTRUMENTATION)


def zero_stats() -> None:
    request(ZERO_STATS)


def label(text: str) -> ctypes.Array:
    """A dump's label as a C string, made before the counted window opens."""
    return ctypes.create_string_buffer(text.encode())


def dump_stats_at(text: ctypes.Array) -> None:
    """Dump the counts since the last zero/dump to a new file labelled ``text`` (from ``label``:
    its ``desc: Trigger``)."""
    request(DUMP_STATS_AT, ctypes.addressof(text))
