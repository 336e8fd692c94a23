"""Tiny hand-assembled static x86-64 ELF programs for test images.

No compiler is needed at test time: the machine code below is encoded by hand.
"""

from __future__ import annotations

import struct

_BASE = 0x400000
_HEADERS = 64 + 56  # one ELF header + one program header


def _elf(code: bytes) -> bytes:
    total = _HEADERS + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little endian, SysV
    ehdr = ident + struct.pack(
        "<HHIQQQIHHHHHH", 2, 0x3E, 1, _BASE + _HEADERS, 64, 0, 0, 64, 56, 1, 0, 0, 0
    )  # ET_EXEC, x86-64, entry right after the headers
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, _BASE, _BASE, total, total, 0x1000)  # PT_LOAD R+X
    return ehdr + phdr + code


def euid_reporter() -> bytes:
    """Prints ``Effective uid: N\\n`` (N = geteuid()) and exits 0.

    Installed setuid root it shows whether no_new_privs blocked the privilege gain,
    like the e2e ``nonewprivs`` image.
    """
    prefix = b"Effective uid: "
    code = bytearray()
    code += bytes.fromhex("b86b000000 0f05")  # eax = geteuid()
    code += bytes.fromhex("488d7424ff c6060a b90a000000")  # rsi = rsp-1; *rsi = '\n'; ecx = 10
    # Digits, last first: edx = eax % 10; eax /= 10; *--rsi = '0' + dl; loop while eax != 0.
    code += bytes.fromhex("31d2 f7f1 80c230 48ffce 8816 85c0 75f0")
    code += bytes.fromhex("4989f4 b801000000 bf01000000")  # r12 = rsi; write(1, ...)
    lea_at = len(code)
    code += bytes.fromhex("488d35 00000000")  # rsi = &prefix (patched below)
    code += bytes.fromhex("ba0f000000 0f05")  # rdx = 15; syscall
    code += bytes.fromhex("4889e2 4c29e2 4c89e6 b801000000 bf01000000 0f05")  # write(1, r12, rsp-r12)
    code += bytes.fromhex("b83c000000 31ff 0f05")  # exit(0)
    code[lea_at + 3 : lea_at + 7] = struct.pack("<i", len(code) - (lea_at + 7))
    return _elf(bytes(code) + prefix)
