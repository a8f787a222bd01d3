"""The shim's launcher mode: one resident process that forks the shims.

Starting a shim by exec costs its program's start-up every time, and on a VM glibc's
start-up alone is ~0.5 ms of CPU (every ``cpuid`` it runs is a VM exit; see
docs/benchmarks.md). ``corral-shim --launcher`` pays it once: the server sends it
each shim's arguments, environment and log descriptor over a ``SOCK_SEQPACKET``
socket, it forks, and the child becomes the shim, exactly as an exec'd one would be
(its own session, the log as stdout and stderr, its command line naming its state
path, so that a restarted server finds it the same way). The reply is the shim's
pid and a pidfd for it. The protocol is described in ``shim.c``.

When the launcher cannot take a request (too large for one message, or the
launcher could not be started) the caller spawns the shim itself; the result is the
same, only slower. A launcher found dead is replaced before the request is sent.
A forked shim waits for the launcher's word, given only once the reply is sent, so
a launcher that dies or stalls (10 s) with a request leaves no shim behind: it is
killed, and the request fails as a spawn error (never a retry).
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import signal
import socket
import struct
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from corral.executors.base import SpawnError

PADDING = 8192
"""Bytes of the launcher's command line that a forked shim writes its own over."""
MAX_REQUEST = 120 * 1024
"""Largest request sent as one message (the launcher reads up to 128 kB)."""
ANSWER_SECONDS = 10.0
"""How long a launcher may take to answer before it is taken for stuck (a fork takes
well under a millisecond)."""


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


class Launcher:
    """Forks shims through one resident ``corral-shim --launcher``; thread-safe."""

    def __init__(self, shim: Path, env: Mapping[str, str], log: Path) -> None:
        self.shim = shim
        self.env = dict(env)
        self.log = log
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def spawn(
        self, args: Sequence[str], env: Mapping[str, str], log_fd: int
    ) -> tuple[int, int] | None:
        """Fork a shim with ``args`` (its arguments, without the program) and ``env``,
        stdout and stderr on ``log_fd``: its (pid, pidfd), or None when the caller
        must spawn it itself. Raises ``OSError`` if the fork failed, ``SpawnError``
        if the launcher died with the request."""
        strings = [str(len(args)), *args, *(f"{k}={v}" for k, v in env.items())]
        encoded = [os.fsencode(s) for s in strings]
        if any(b"\0" in s for s in encoded):
            raise ValueError("embedded null byte")
        body = b"\0".join(encoded) + b"\0"
        cmdline = len(os.fsencode(str(self.shim))) + sum(len(s) + 1 for s in encoded[1:4])
        if len(body) > MAX_REQUEST or cmdline + 64 > PADDING:
            return None
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [log_fd]))]
        with self._lock:
            for _ in range(2):  # a launcher found dead is replaced once
                sock = self._sock or self._start()
                if sock is None:
                    return None
                try:
                    sock.sendmsg([body], rights)
                    break
                except OSError as exc:  # nothing was forked for this request
                    if exc.errno in (errno.EMSGSIZE, errno.ENOBUFS, errno.ENOMEM):
                        return None  # too large for this host's socket buffers
                    self._stop()  # the launcher is gone
            else:
                return None
            msg, fds, flags = self._answer(sock)
        (pid,) = struct.unpack("i", msg)
        if pid < 0:
            for fd in fds:
                os.close(fd)
            raise OSError(-pid, os.strerror(-pid))
        if not fds:
            # The pidfd could not be received (out of descriptors: MSG_CTRUNC) or
            # opened: unwatched, the shim must not run on. Asked to stop, it stops
            # its workload's group first. (The launcher reaps it only once it exits,
            # so the pid is still the shim's.)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            err = errno.EMFILE if flags & socket.MSG_CTRUNC else errno.EIO
            raise OSError(err, os.strerror(err))
        return pid, fds[0]

    def _answer(self, sock: socket.socket) -> tuple[bytes, list[int], int]:
        """The launcher's reply. A forked shim runs only once its reply has been sent
        (it waits for the launcher's word), so a launcher that dies or stalls first
        leaves nothing running: it is killed, and a reply that made it out still
        counts."""
        try:
            msg, fds, flags, _ = socket.recv_fds(sock, 16, 1, socket.MSG_CMSG_CLOEXEC)
        except OSError:  # TimeoutError included
            msg, fds, flags = b"", [], 0
        if len(msg) != 4:
            for fd in fds:
                os.close(fd)
            if self._proc is not None:
                self._proc.kill()
                self._proc.wait()
            sock.setblocking(False)
            try:
                msg, fds, flags, _ = socket.recv_fds(sock, 16, 1, socket.MSG_CMSG_CLOEXEC)
            except OSError:
                msg, fds, flags = b"", [], 0
            self._stop()
            if len(msg) != 4:
                for fd in fds:
                    os.close(fd)
                raise SpawnError("the shim launcher stopped while starting it")
        return msg, fds, flags

    def _start(self) -> socket.socket | None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with open(self.log, "ab", opener=_private) as out:
                self._proc = subprocess.Popen(
                    [str(self.shim), "--launcher", "x" * PADDING],
                    stdin=theirs.fileno(),
                    stdout=out,
                    stderr=out,
                    env=self.env,
                    start_new_session=True,
                )
        except OSError:
            ours.close()
            return None
        finally:
            theirs.close()
        ours.settimeout(ANSWER_SECONDS)
        self._sock = ours
        return ours

    def _stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
            self._proc = None

    def close(self) -> None:
        """Stop the launcher (EOF on its socket); the shims it forked live on."""
        with self._lock:
            self._stop()
