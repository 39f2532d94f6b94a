"""The benchmark's server processes: start each in its own session, wait until it answers, read its costs
from /proc (CPU ticks, resident memory of the whole process tree) and stop it again.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now and below the kernel's ephemeral range: a server started later binds it. A port the
    kernel hands out itself (bind to 0) can meanwhile become the source port of any outgoing connection on the
    machine, and the server's bind then fails with 'address already in use'."""
    low, _ = _ephemeral_range()
    first = max(1024, low - 12000)
    for _ in range(200):
        port = random.randrange(first, low)
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as probe:  # nothing free below the range: take the kernel's pick
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def pinned(command: Sequence[str], cpu: int | None) -> list[str]:
    """taskset execs the command, so the pid we hold is the server's own."""
    return ["taskset", "-c", str(cpu), *command] if cpu is not None else list(command)


class ServerProcess:
    """One started server; its stdout and stderr go to log_path so a failure can be shown."""

    def __init__(self, name: str, command: Sequence[str], log_path: Path, *, cpu: int | None = None,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.popen = subprocess.Popen(pinned(command, cpu), stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True, env=env, cwd=cwd)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exited(self) -> int | None:
        return self.popen.poll()

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def wait_listening(self, host: str, port: int, timeout_seconds: float) -> str | None:
        """None once the port accepts connections; else why not (exited, or the deadline passed)."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            code = self.exited()
            if code is not None:
                return f"exited with code {code} before listening"
            try:
                socket.create_connection((host, port), timeout=0.5).close()
                return None
            except OSError:
                time.sleep(0.05)
        return f"did not listen on {host}:{port} within {timeout_seconds:.0f} s"

    def tree(self) -> list[int]:
        """This process and all its descendants (a gateway may fork workers, nginx has its worker)."""
        return process_tree(self.pid)

    def cpu_seconds(self, pids: Sequence[int]) -> float:
        total_ticks = 0
        for pid in pids:
            fields = _stat_fields(pid)
            if fields is not None:
                total_ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return total_ticks / CLOCK_TICKS_PER_SECOND

    def stop(self, grace_seconds: float = 5.0) -> None:
        if self.exited() is not None:
            return
        # The server leads its own session, so the group holds it and anything it forked, nothing else.
        _signal_group(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace_seconds)
        except subprocess.TimeoutExpired:
            _signal_group(self.pid, signal.SIGKILL)
            self.popen.wait(grace_seconds)


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _parent_pid(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, []))
    return found


def cpu_by_process() -> dict[int, float]:
    """Every process's CPU seconds including the children it reaped (so short-lived ones still count)."""
    seconds = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                seconds[int(entry)] = sum(int(value) for value in fields[11:15]) / CLOCK_TICKS_PER_SECOND
    return seconds


def stolen_cpu_seconds() -> float:
    """CPU time the hypervisor gave to other guests, all CPUs, since boot (/proc/stat "steal")."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / CLOCK_TICKS_PER_SECOND if len(fields) > 8 else 0.0


def rss_kib(pids: Sequence[int]) -> int:
    return sum(_status_kib(pid, "VmRSS") for pid in pids)


def peak_rss_kib(pids: Sequence[int]) -> int:
    return sum(_status_kib(pid, "VmHWM") for pid in pids)


def reset_peak_rss(pids: Sequence[int]) -> bool:
    """Resets VmHWM to the current RSS (clear_refs 5); False where the kernel or permissions refuse."""
    done = True
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            done = False
    return done


def gateway_process(scratch: Path, config: str) -> ServerProcess:
    """`python -m gateway serve` on `config` (TOML text, written to scratch/gateway.toml), run in `scratch` with its
    log beside it."""
    path = scratch / "gateway.toml"
    path.write_text(config)
    return ServerProcess("gateway", [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
                         scratch / "gateway.log", cwd=scratch)


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


def _stat_fields(pid: int) -> list[str] | None:
    """Fields after the command name (which may hold spaces): index 0 is the state, 1 the parent pid."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _parent_pid(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
