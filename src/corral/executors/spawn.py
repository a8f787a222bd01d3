"""``posix_spawn`` that lets other threads run while it waits.

CPython's ``os.posix_spawn`` holds the GIL for the whole call, and glibc's
``posix_spawn`` returns only once the child has called ``execve`` (it is a vfork).
So the server's event loop stood still for every launch: about 0.15 ms for the exec
itself, and up to milliseconds when the new shim got the CPU first (measured: p50
0.5 ms, p90 2.3 ms on this 2-core VM; 60 % of the server's GIL time in the
end-to-end benchmark). ctypes releases the GIL around a foreign call, so the same
libc call made through it from a worker thread leaves the loop free.

Only what the local executor needs: a new session, stdin from a file, stdout
and stderr onto one descriptor, an explicit environment, no ``PATH`` search.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Mapping, Sequence

POSIX_SPAWN_SETSID = 0x80  # glibc >= 2.26 and musl: setsid() in the child
_OPAQUE_BYTES = 1024  # more than sizeof(posix_spawnattr_t) and of the file actions

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_spawn = _libc.posix_spawn
_spawn.argtypes = [
    ctypes.POINTER(ctypes.c_int),
    ctypes.c_char_p,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_char_p),
    ctypes.POINTER(ctypes.c_char_p),
]
_spawn.restype = ctypes.c_int
_actions_init = _libc.posix_spawn_file_actions_init
_actions_destroy = _libc.posix_spawn_file_actions_destroy
_add_open = _libc.posix_spawn_file_actions_addopen
_add_open.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint]
_add_dup2 = _libc.posix_spawn_file_actions_adddup2
_add_dup2.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
_attr_init = _libc.posix_spawnattr_init
_attr_destroy = _libc.posix_spawnattr_destroy
_attr_setflags = _libc.posix_spawnattr_setflags
_attr_setflags.argtypes = [ctypes.c_void_p, ctypes.c_short]


def _strings(items: Sequence[str]) -> ctypes.Array[ctypes.c_char_p]:
    encoded = [os.fsencode(s) for s in items]
    if any(b"\0" in s for s in encoded):
        raise ValueError("embedded null byte")
    return (ctypes.c_char_p * (len(encoded) + 1))(*encoded, None)


def spawn_session(
    path: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    output_fd: int,
    *,
    stdin: str = "/dev/null",
) -> int:
    """Start ``path`` with ``argv`` and ``env`` as a session leader, stdin read from
    the file ``stdin``, stdout and stderr on ``output_fd``; return its pid. Raises
    ``OSError`` (the exec's own error too: glibc reports it) or ``ValueError`` (a
    NUL in an argument). Call it from a worker thread: it does not hold the GIL."""
    c_argv = _strings(argv)
    c_env = _strings([f"{k}={v}" for k, v in env.items()])
    actions = ctypes.create_string_buffer(_OPAQUE_BYTES)
    attr = ctypes.create_string_buffer(_OPAQUE_BYTES)
    _check(_actions_init(actions))
    try:
        _check(_attr_init(attr))
        try:
            _check(_add_open(actions, 0, os.fsencode(stdin), os.O_RDONLY, 0))
            _check(_add_dup2(actions, output_fd, 1))
            _check(_add_dup2(actions, output_fd, 2))
            _check(_attr_setflags(attr, POSIX_SPAWN_SETSID))
            pid = ctypes.c_int()
            _check(_spawn(ctypes.byref(pid), os.fsencode(path), actions, attr, c_argv, c_env))
            return pid.value
        finally:
            _attr_destroy(attr)
    finally:
        _actions_destroy(actions)


def _check(err: int) -> None:
    if err:
        raise OSError(err, os.strerror(err))
