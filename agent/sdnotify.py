"""sd_notify(3) without libsystemd: readiness, status and the watchdog for ``Type=notify``.

systemd passes ``$NOTIFY_SOCKET``, an ``AF_UNIX`` datagram socket (a path, or ``@name`` in the
abstract namespace), and reads newline-separated ``KEY=value`` assignments from it. Without
the variable (a terminal, the tests, the demo) every function here is a no-op returning
``False``: the agent never depends on systemd to run.

The watchdog: with ``WatchdogSec=`` systemd sets ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``,
which must be ours) and kills the service when no ``WATCHDOG=1`` arrives in time.
:func:`watchdog_loop` pings from the event loop, so a loop that is stuck (a blocking call, a
busy callback) stops the pings and gets the agent restarted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

__all__ = [
    "notify",
    "ready",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
    "watchdog_loop",
]

log = logging.getLogger("agent.sdnotify")

SEND_TIMEOUT_S = 0.5  # systemd reads its notify socket at once; never hang the loop on it


def _address(environ: Mapping[str, str]) -> str | None:
    path = environ.get("NOTIFY_SOCKET", "")
    if path.startswith("@"):  # abstract namespace: a leading NUL byte instead of the '@'
        return "\0" + path[1:]
    if path.startswith("/"):
        return path
    if path:  # e.g. "vsock:CID:PORT" for virtual machines: not on a car's board
        log.debug("NOTIFY_SOCKET %r is not an AF_UNIX address; not notifying", path)
    return None


def notify(state: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (``"READY=1"``, ``"STATUS=..."``, several joined by newlines).

    Returns whether it was sent: ``False`` without ``$NOTIFY_SOCKET`` or when sending failed
    (logged at DEBUG level; systemd's timeouts report the consequence).
    """
    address = _address(os.environ if environ is None else environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT_S)
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.debug("sd_notify %r failed: %s", state.split("=", 1)[0], exc)
        return False
    return True


def ready(status_text: str | None = None) -> bool:
    """The service is up: systemd ends ``activating`` and starts the watchdog clock."""
    return notify("READY=1" if status_text is None else f"READY=1\nSTATUS={_one_line(status_text)}")


def stopping(status_text: str | None = None) -> bool:
    """Shutdown has begun (SIGTERM): systemd shows ``deactivating``."""
    text = "STOPPING=1"
    if status_text is not None:
        text += f"\nSTATUS={_one_line(status_text)}"
    return notify(text)


def status(text: str) -> bool:
    """A one-line status for ``systemctl status``; never personal data or a position."""
    return notify(f"STATUS={_one_line(text)}")


def watchdog() -> bool:
    """One keep-alive ping."""
    return notify("WATCHDOG=1")


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout in seconds, or ``None`` when systemd does not watch this process.

    ``$WATCHDOG_USEC`` must be a positive integer and ``$WATCHDOG_PID``, when set, our PID
    (a child process inherits the environment but is not the one being watched).
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not (usec.isascii() and usec.isdigit()) or int(usec) == 0:  # not "²": isdigit, no int
        return None
    pid = env.get("WATCHDOG_PID")
    if pid is not None and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000


async def watchdog_loop(interval: float | None = None) -> None:
    """Ping the watchdog at half its interval, forever; returns at once when not watched.

    ``interval`` overrides ``$WATCHDOG_USEC`` (seconds). Run it as a task of the agent's
    task group: it only pings while the event loop runs callbacks in time.
    """
    timeout = watchdog_interval() if interval is None else interval
    if timeout is None or _address(os.environ) is None:
        log.debug("no systemd watchdog for this process")
        return
    period = timeout / 2
    log.info("systemd watchdog: %.1f s, pinging every %.1f s", timeout, period)
    while True:
        watchdog()
        await asyncio.sleep(period)


def _one_line(text: str) -> str:
    return " ".join(text.split())
