"""The agent as a process of its own, for the benchmarks.

    python -m bench.agent_proc run --config FILE [--set KEY=VALUE ...]

is exactly the console script (``agent.cli.main``), with one difference: before it runs, the
root logger gets a handler (INFO, stderr) whose lines start with ``time.monotonic()`` taken
when the line is written, so a driver in another process can read when the agent logged
``request <id>/<seq> delivered`` (its PUBACK) on the same clock. ``agent.cli`` then leaves
logging alone (``basicConfig`` does nothing once the root logger has a handler).

:class:`AgentProcess` starts it (or the real ``connect-agent`` script) with ``NOTIFY_SOCKET``
pointing at a datagram socket it binds, and follows its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

CALL_STORED = re.compile(r"call (\S+) sequence (\d+) stored")
DELIVERED = re.compile(r"request (\S+)/(\d+) delivered")
BACKEND = re.compile(r"backend: incident (\S+) (\w+)")


class MonotonicFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = f"{time.monotonic():.6f} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class AgentProcess:
    """``connect-agent run`` in a child process, with sd_notify and (``stamped``) its log.

    ``stamped=True`` runs ``python -m bench.agent_proc`` (monotonic log stamps: PUBACK times);
    ``False`` runs the installed ``connect-agent`` script itself (log drained, not read).
    ``script`` runs that Python file instead of ``bench.agent_proc`` (same log format
    expected), e.g. one that patches the agent before calling :func:`main`, to measure a
    proposed change.
    """

    def __init__(
        self,
        config: Path,
        *,
        sets: Sequence[str] = (),
        stamped: bool = True,
        cwd: Path | None = None,
        script: Path | None = None,
    ) -> None:
        self.config = config
        self.sets = list(sets)
        self.stamped = stamped
        self.cwd = cwd
        self.script = script
        self.process: asyncio.subprocess.Process | None = None
        self.exec_at = 0.0
        self.ready_at: float | None = None  # READY=1 arrived on the notify socket
        self.notify_messages: list[tuple[float, str]] = []
        self.calls: list[tuple[float, str, int]] = []  # (stored logged at, id, seq)
        self.deliveries: dict[tuple[str, int], float] = {}
        self.closed: dict[str, float] = {}
        self.tail: list[str] = []
        self.changed = asyncio.Event()
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-notify-")
        self._sock: socket.socket | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        path = os.path.join(self._tmp.name, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        self._sock = sock
        env = dict(os.environ, NOTIFY_SOCKET=path)
        args = ["run", "--config", str(self.config)]
        for item in self.sets:
            args += ["--set", item]
        if self.script is not None:
            argv = [sys.executable, str(self.script), *args]
        elif self.stamped:
            argv = [sys.executable, "-m", "bench.agent_proc", *args]
        else:
            argv = [str(Path(sys.executable).with_name("connect-agent")), *args]
        self._tasks.append(asyncio.create_task(self._notify_reader(sock)))
        self.exec_at = time.monotonic()
        self.process = await asyncio.create_subprocess_exec(
            *argv, env=env, cwd=self.cwd, stderr=asyncio.subprocess.PIPE
        )
        self._tasks.append(asyncio.create_task(self._log_reader()))

    async def _notify_reader(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(sock, 4096)
            t = time.monotonic()
            text = data.decode(errors="replace")
            self.notify_messages.append((t, text))
            if "READY=1" in text.split("\n") and self.ready_at is None:
                self.ready_at = t
            self.changed.set()

    async def _log_reader(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for raw in self.process.stderr:
            if not self.stamped:
                continue
            line = raw.decode(errors="replace").rstrip()
            self.tail = [*self.tail[-40:], line]
            stamp, _, text = line.partition(" ")
            try:
                t = float(stamp)
            except ValueError:
                continue
            if m := CALL_STORED.search(text):
                self.calls.append((t, m.group(1), int(m.group(2))))
            elif m := DELIVERED.search(text):
                self.deliveries.setdefault((m.group(1), int(m.group(2))), t)
            elif m := BACKEND.search(text):
                if m.group(2) == "closed":
                    self.closed[m.group(1)] = t
            else:
                continue
            self.changed.set()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while True:
                self.changed.clear()
                if predicate():
                    return
                if self.process is not None and self.process.returncode is not None:
                    raise RuntimeError(f"agent exited: {self.process.returncode}")
                await self.changed.wait()

    async def stop(self, timeout: float = 15) -> int | None:
        # imported here: this module is also the measured agent process, kept lean
        from bench.common import stop_process  # noqa: PLC0415

        process, self.process = self.process, None
        await stop_process(process, timeout)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._tmp.cleanup()
        return None if process is None else process.returncode


def main() -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(MonotonicFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    from agent.cli import main as agent_main  # noqa: PLC0415

    return agent_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
