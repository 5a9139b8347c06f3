"""Names for the virtual functions of a stripped C++ shared library, from its vtables.

ONNX Runtime's PyPI module (``onnxruntime_pybind11_state*.so``) and OpenVINO's CPU plugin ship
without symbol tables, so callgrind names their functions by address. Their operators are C++
classes with virtual methods (ONNX Runtime's ``OpKernel::Compute``), and a stripped library keeps
what the C++ runtime needs at run time: each polymorphic class's type_info with its mangled name
(``N11onnxruntime6GatherE``) and its vtable, whose slot -1 points at that type_info. In a
position-independent library every such pointer is a dynamic relocation, so the vtables can be
read from ``.rela.dyn`` without disassembling anything:

- a type_info object is where a relocation against ``__cxxabiv1::__{si_,vmi_,}class_type_info``'s
  vtable is followed by a relative relocation to the name string;
- a vtable's address point follows a relative relocation to a type_info; the virtual functions
  are the consecutive relative relocations into executable code after it.

A function that appears in one class's vtables only gets that class's name (an operator's
``Compute`` override); one shared by several classes (an inherited method) stays unnamed.

Why by hand: the ELF64 structures involved (section headers, Elf64_Rela, Elf64_Sym) are a few
fixed-size records read with ``struct``; pyelftools would do the same reading but is not among
the project's dependencies, and binutils' readelf prints text that would need parsing anyway.
Demangling uses binutils' ``c++filt`` when present (it ships with the compiler toolchain), else
the nested name's identifiers are joined with ``::``.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

_SHT_RELA, _SHT_DYNSYM = 4, 11
_SHF_EXECINSTR = 0x4
_R_X86_64_64, _R_X86_64_RELATIVE = 1, 8
_TYPEINFO_VTABLES = ("_ZTVN10__cxxabiv117__class_type_infoE", "_ZTVN10__cxxabiv120__si_class_type_infoE",
                     "_ZTVN10__cxxabiv121__vmi_class_type_infoE")


class Elf:
    """The parts of an ELF64 little-endian shared library this module reads."""

    def __init__(self, path: str | Path):
        self.data = Path(path).read_bytes()
        if self.data[:4] != b"\x7fELF" or self.data[4] != 2 or self.data[5] != 1:
            raise ValueError(f"{path}: not a 64-bit little-endian ELF file")
        shoff, = struct.unpack_from("<Q", self.data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", self.data, 0x3A)
        self.sections = []
        for i in range(shnum):
            name, type_, flags, addr, offset, size, link, _, _, entsize = struct.unpack_from(
                "<IIQQQQIIQQ", self.data, shoff + i * shentsize)
            self.sections.append({"name_off": name, "type": type_, "flags": flags, "addr": addr, "offset": offset,
                                  "size": size, "link": link, "entsize": entsize})
        names = self.sections[shstrndx]
        for s in self.sections:
            s["name"] = self._cstring(names["offset"] + s["name_off"])

    def _cstring(self, offset: int) -> str:
        end = self.data.index(b"\0", offset)
        return self.data[offset:end].decode("ascii", "replace")

    def string_at(self, vaddr: int) -> str | None:
        for s in self.sections:
            if s["addr"] <= vaddr < s["addr"] + s["size"] and s["type"] != 8:  # not NOBITS
                return self._cstring(s["offset"] + vaddr - s["addr"])
        return None

    def bytes_at(self, vaddr: int, n: int) -> bytes | None:
        for s in self.sections:
            if s["addr"] <= vaddr < s["addr"] + s["size"] and s["type"] != 8:
                start = s["offset"] + vaddr - s["addr"]
                return self.data[start:start + n]
        return None

    def executable_ranges(self) -> list[tuple[int, int]]:
        return [(s["addr"], s["addr"] + s["size"]) for s in self.sections if s["flags"] & _SHF_EXECINSTR]

    def dynamic_symbols(self) -> list[tuple[str, int | None]]:
        """(name, address or None where the symbol is not defined here) per dynamic symbol."""
        for s in self.sections:
            if s["type"] == _SHT_DYNSYM:
                strtab = self.sections[s["link"]]
                return [(self._cstring(strtab["offset"] + name), value if shndx else None)
                        for name, _, _, shndx, value, _ in
                        struct.iter_unpack("<IBBHQQ", self.data[s["offset"]:s["offset"] + s["size"]])]
        return []

    def relocations(self) -> tuple[dict[int, int], dict[int, str]]:
        """(offset -> the address stored there, for relative relocations and absolute ones
        against symbols defined here; offset -> symbol name, for absolute ones against symbols
        defined elsewhere)."""
        symbols = self.dynamic_symbols()
        pointers: dict[int, int] = {}
        external: dict[int, str] = {}
        for s in self.sections:
            if s["type"] != _SHT_RELA:
                continue
            for offset, info, addend in struct.iter_unpack("<QQq", self.data[s["offset"]:s["offset"] + s["size"]]):
                kind, index = info & 0xFFFFFFFF, info >> 32
                if kind == _R_X86_64_RELATIVE:
                    pointers[offset] = addend
                elif kind == _R_X86_64_64 and index < len(symbols):
                    name, value = symbols[index]
                    if value is not None and name not in _TYPEINFO_VTABLES:
                        pointers[offset] = value + addend
                    else:
                        external[offset] = name
        return pointers, external


def virtual_function_classes(path: str | Path) -> dict[int, str]:
    """Function address (inside the library) -> the demangled name of the one class whose
    vtables hold it. Empty for a library that is not x86-64 ELF or has no such vtables."""
    try:
        elf = Elf(path)
    except (OSError, ValueError):
        return {}
    relative, absolute = elf.relocations()
    typeinfo_names: dict[int, str] = {}
    bases: dict[int, list[int]] = {}  # type_info -> its direct bases' type_infos
    for offset, symbol in absolute.items():
        if symbol in _TYPEINFO_VTABLES and offset + 8 in relative:
            name = elf.string_at(relative[offset + 8])
            if not name:
                continue
            typeinfo_names[offset] = name.lstrip("*")  # "*": a name the ABI compares by address
            if symbol == _TYPEINFO_VTABLES[1] and offset + 16 in relative:  # one public base
                bases[offset] = [relative[offset + 16]]
            elif symbol == _TYPEINFO_VTABLES[2]:  # flags, count, then (base, offset flags) pairs
                count, = struct.unpack_from("<I", elf.bytes_at(offset + 20, 4) or b"\0\0\0\0")
                bases[offset] = [relative[offset + 24 + 16 * i] for i in range(count)
                                 if offset + 24 + 16 * i in relative]
    code = elf.executable_ranges()

    def in_code(address: int) -> bool:
        return any(lo <= address < hi for lo, hi in code)

    owners: dict[int, set[int]] = {}  # function -> the type_infos of the vtables that hold it
    for offset, target in relative.items():
        if target not in typeinfo_names:
            continue
        slot = offset + 8
        while True:
            if slot in relative and in_code(relative[slot]):
                owners.setdefault(relative[slot], set()).add(target)
            elif slot not in absolute:  # an external function (__cxa_pure_virtual) keeps the vtable going
                break
            slot += 8

    @functools.lru_cache(maxsize=None)
    def ancestors(typeinfo: int) -> frozenset[int]:
        out = set()
        for base in bases.get(typeinfo, []):
            if base != typeinfo:
                out |= {base} | ancestors(base)
        return frozenset(out)

    named: dict[int, str] = {}
    for address, classes in owners.items():
        # an inherited method sits in the vtables of its class and of every derived class that
        # does not override it: it is the class that all the others derive from
        defining = [c for c in classes if all(c == other or c in ancestors(other) for other in classes)]
        if len(defining) == 1:
            named[address] = typeinfo_names[defining[0]]
    readable = demangle_types(sorted(set(named.values())))
    return {address: readable[name] for address, name in named.items()}


def demangle_types(mangled: list[str]) -> dict[str, str]:
    """Mangled type names (type_info::name(), without ``_ZTS``) -> readable C++ names."""
    tool = shutil.which("c++filt")
    if tool and mangled:
        done = subprocess.run([tool], input="\n".join("_ZTS" + m for m in mangled), capture_output=True, text=True,
                              check=False)
        lines = done.stdout.splitlines()
        if done.returncode == 0 and len(lines) == len(mangled):
            return {m: line.removeprefix("typeinfo name for ") for m, line in zip(mangled, lines)}
    return {m: "::".join(_identifiers(m)) for m in mangled}


def _identifiers(mangled: str) -> list[str]:
    """The length-prefixed identifiers of an Itanium-mangled name, in order (a fallback)."""
    out, i = [], 0
    while i < len(mangled):
        m = re.match(r"\d+", mangled[i:])
        if m:
            n = int(m.group())
            i += len(m.group())
            out.append(mangled[i:i + n])
            i += n
        else:
            i += 1
    return out


@functools.lru_cache(maxsize=16)
def cached_classes(path: str, mtime_ns: int) -> dict[int, str]:
    return virtual_function_classes(path)


def classes_for(path: str) -> dict[int, str]:
    """virtual_function_classes, cached per file version."""
    try:
        return cached_classes(path, os.stat(path).st_mtime_ns)
    except OSError:
        return {}
