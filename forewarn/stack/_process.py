"""Background processes that outlive the CLI call that started them: a pid file per
process, a check that the pid still belongs to us, graceful stop with a kill fallback."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from forewarn.errors import StackError

__all__ = ["ManagedProcess", "port_free", "port_open", "tail"]


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (we could bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
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
