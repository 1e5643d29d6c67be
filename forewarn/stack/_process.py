"""Background processes that outlive the CLI call that started them: a pid file per
process, a check that the pid still belongs to us, graceful stop with a kill fallback."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

from forewarn.errors import StackError

__all__ = ["ManagedProcess", "ProcessId", "die_with_parent", "group_members", "port_free", "port_open", "tail"]

_PR_SET_PDEATHSIG: Final = 1


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (we could bind it). An address this network
    namespace does not have (a broker started in another namespace listens there) is free when
    nothing answers on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            return error.errno == errno.EADDRNOTAVAIL and not port_open(host, port)
    return True


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file ('' when there is none)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


@cache
def _prctl() -> Callable[..., int] | None:
    """libc's prctl (Linux), loaded in the parent: nothing is loaded between fork and exec."""
    if os.uname().sysname != "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    function: Callable[..., int] = libc.prctl
    return function


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` for :class:`subprocess.Popen`: the child gets ``sig`` when its parent
    dies, however it dies (kill -9 included; Linux ``PR_SET_PDEATHSIG``, elsewhere nothing).

    The kernel sends it when the *thread* that started the child ends, so start children from
    a thread that lives as long as the parent (the main thread). A parent that died before the
    child set this up is caught too: the child then signals itself at once."""
    parent = os.getpid()
    prctl = _prctl()
    number = int(sig)

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, number, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), number)

    return preexec


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    return text.rpartition(")")[2].split()


@dataclass(frozen=True)
class ProcessId:
    """A pid with its start time (clock ticks since boot), so a reused pid is never taken for
    the process it once was."""

    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> ProcessId | None:
        """The running process ``pid`` (None when there is none)."""
        fields = _stat(pid)
        return None if fields is None or len(fields) < 20 else cls(pid, int(fields[19]))

    @property
    def alive(self) -> bool:
        """True while this very process runs (a zombie, or another process reusing the pid, is not it)."""
        fields = _stat(self.pid)
        return fields is not None and len(fields) >= 20 and fields[0] != "Z" and int(fields[19]) == self.start


def group_members(leader: ProcessId) -> list[ProcessId]:
    """Live processes of the process group ``leader`` started (itself included, while it
    lives; those it left behind after it died too). Empty when the group id has been taken by a
    new process since: nothing there is ours any more."""
    current = ProcessId.of(leader.pid)
    if current is not None and current.start != leader.start:
        return []
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is None or len(fields) < 20 or fields[0] == "Z" or int(fields[2]) != leader.pid:
            continue
        if int(fields[19]) >= leader.start:
            members.append(ProcessId(int(entry.name), int(fields[19])))
    return members


class ManagedProcess:
    """One long-running process with its pid file and log file.

    ``marker`` is a string that must appear in the process's command line, so a stale pid
    file whose pid was reused by something else is never signalled.
    """

    def __init__(self, name: str, pid_file: Path, log_file: Path, marker: str) -> None:
        self.name = name
        self.pid_file = pid_file
        self.log_file = log_file
        self.marker = marker
        self._popen: subprocess.Popen[bytes] | None = None

    def pid(self) -> int | None:
        """The pid of our running process, or None (and a stale pid file is removed)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        self._reap()
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            cmdline, stat = "", ""
        zombie = stat.split(") ", 1)[-1].startswith("Z") if stat else False
        if self.marker in cmdline and not zombie:
            return pid
        if self._popen is not None and self._popen.pid == pid and self._popen.poll() is None:
            # Our own child, started a moment ago and not yet exec'd (its command line is still
            # ours): a stop right after a start must not take it for a stale pid and leave it.
            return pid
        with contextlib.suppress(OSError):
            self.pid_file.unlink()
        return None

    def _reap(self) -> bool:
        """Collect our own child if it exited (avoids zombies when started in-process)."""
        return self._popen is not None and self._popen.poll() is not None

    def start(self, argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
        if self.pid() is not None:
            raise StackError(f"{self.name} is already running (pid {self.pid()})")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name}\n".encode())
            log.flush()
            try:
                self._popen = subprocess.Popen(
                    list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True, env=env, cwd=cwd,
                )
            except OSError as error:
                raise StackError(f"cannot start {self.name}: {error}") from None
        self.pid_file.write_text(f"{self._popen.pid}\n")
        return self._popen.pid

    def exited(self) -> int | None:
        """Exit code if the process we started has died, else None."""
        if self._popen is not None:
            return self._popen.poll()
        return None if self.pid() is not None else -1

    def stop(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL. True if something was stopped."""
        pid = self.pid()
        if pid is None:
            self._reap()
            return False
        self._signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._gone(pid):
                break
            time.sleep(0.1)
        else:
            self._signal(pid, signal.SIGKILL)
            while not self._gone(pid):
                time.sleep(0.05)
        with contextlib.suppress(OSError):
            self.pid_file.unlink()
        return True

    def kill(self) -> None:
        """SIGKILL at once (for fault tests)."""
        pid = self.pid()
        if pid is not None:
            self._signal(pid, signal.SIGKILL)
            while not self._gone(pid):
                time.sleep(0.05)
            with contextlib.suppress(OSError):
                self.pid_file.unlink()

    def _gone(self, pid: int) -> bool:
        if self._popen is not None and self._popen.pid == pid:
            return self._popen.poll() is not None
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        return stat.split(") ", 1)[-1].startswith("Z")

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
