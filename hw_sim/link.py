"""A TCP link simulator: real sockets between the agent and a real broker, with faults.

``async with Link(upstream_port) as link:`` listens on ``link.port`` (loopback) and forwards
every accepted connection to the upstream address. The conditions of the link can be changed
while it runs, from a test or from ``hw-sim link``'s standard input:

- :meth:`Link.set_mode` with a :class:`LinkMode`: one-way ``delay_s`` and ``jitter_s`` (order
  is kept, as TCP keeps it), and ``loss``: the fraction of chunks that are "lost";
- :meth:`Link.freeze`: the connections open now stay open and forward nothing more in either
  direction: no FIN, no RST, what arrives is swallowed, as on a path whose NAT mapping died.
  Connections opened afterwards work (a new mapping);
- :meth:`Link.cut`: every open connection is reset (RST on both sides).

A byte-stream relay cannot drop bytes without breaking TCP's promise to the endpoints, so a
lost chunk is modelled by what TCP makes of a lost segment: the chunk, and everything behind
it, waits for a retransmission timeout (``rto_s``, at least 200 ms as on Linux, doubling when
the retransmission is lost too). A lost SYN costs the initial 1 s retransmission timeout. A
fresh connection pays one round trip (2 x delay) before its first byte is forwarded, as the
TCP handshake would on the real path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import socket
import struct
import time

from hw_sim.mosquitto import free_port
from hw_sim.service import Service

log = logging.getLogger("hw_sim.link")

MIN_RTO_S = 0.2  # Linux's minimum retransmission timeout
SYN_RTO_S = 1.0  # the initial retransmission timeout of a SYN (RFC 6298)
CHUNK = 65536


@dataclasses.dataclass(frozen=True)
class LinkMode:
    delay_s: float = 0.0  # one way
    jitter_s: float = 0.0  # uniform 0..jitter added to the delay of each chunk
    loss: float = 0.0  # fraction of chunks (and SYNs) lost once, retransmitted after an RTO

    def rto_s(self) -> float:
        return max(MIN_RTO_S, 2 * (2 * self.delay_s + self.jitter_s))


PASS = LinkMode()


class _Connection:
    def __init__(self, link: Link, down: asyncio.StreamWriter) -> None:
        self.link = link
        self.down = down
        self.up: asyncio.StreamWriter | None = None
        self.frozen = False
        self.tasks: list[asyncio.Task[None]] = []

    def reset(self) -> None:
        for writer in (self.down, self.up):
            if writer is None:
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()

    async def pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        """Read chunks, hold each for its delay (in order), write them; swallow when frozen."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._send(queue, writer), name=f"link-send-{direction}")
        self.tasks.append(sender)
        last = 0.0
        try:
            while data := await reader.read(CHUNK):
                if self.frozen:
                    continue
                self.link.counters[f"bytes_{direction}"] += len(data)
                if self.link.recorded is not None:
                    self.link.recorded.append((time.monotonic(), direction, data))
                mode = self.link.mode
                at = time.monotonic() + mode.delay_s + self.link.rng.uniform(0, mode.jitter_s)
                rto = mode.rto_s()
                while mode.loss and self.link.rng.random() < mode.loss:
                    self.link.counters["lost_chunks"] += 1
                    at += rto
                    rto *= 2
                last = max(last, at)  # TCP delivers in order: nothing overtakes a late chunk
                queue.put_nowait((last, data))
            if not self.frozen:  # a frozen path carries no FIN either
                queue.put_nowait((last, b""))
            if self.frozen:
                await asyncio.Event().wait()  # held open, silent, until cut or closed
            await sender
        finally:
            sender.cancel()

    async def _send(
        self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        while True:
            at, data = await queue.get()
            wait = at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.frozen:
                continue
            if not data:
                if writer.can_write_eof():
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                return
            writer.write(data)
            with contextlib.suppress(OSError):
                await writer.drain()


class Link(Service):
    """``async with Link(upstream_port) as link:`` -> connect to ``link.port`` instead."""

    def __init__(
        self,
        upstream_port: int,
        *,
        upstream_host: str = "127.0.0.1",
        port: int | None = None,
        host: str = "127.0.0.1",
        mode: LinkMode = PASS,
        seed: int | None = None,
        record: bool = False,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        # record: every chunk as read, (time.monotonic(), "up" | "down", bytes), for a test
        # that looks at what went over the wire and when
        self.recorded: list[tuple[float, str, bytes]] | None = [] if record else None
        self.host = host
        self.port = port or free_port()
        self.mode = mode
        self.rng = random.Random(seed)
        self.connections: set[_Connection] = set()
        self.accepted = 0
        self.counters: dict[str, int] = {"bytes_up": 0, "bytes_down": 0, "lost_chunks": 0}
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    # -- control ----------------------------------------------------------------------------

    def set_mode(self, mode: LinkMode) -> None:
        """Delay, jitter and loss for every chunk read from now on (open connections too)."""
        self.mode = mode

    def freeze(self) -> int:
        """Black-hole the connections open now; returns how many. New ones still work."""
        for conn in self.connections:
            conn.frozen = True
        log.info("link froze %d connection(s)", len(self.connections))
        return len(self.connections)

    def cut(self) -> int:
        """Reset (RST) every open connection; returns how many."""
        conns, self.connections = self.connections, set()
        for conn in conns:
            conn.reset()
        log.info("link reset %d connection(s)", len(conns))
        return len(conns)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)

    async def aclose(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self.cut()
        handlers, self._handlers = self._handlers, set()
        for task in handlers:
            task.cancel()
        for task in handlers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if server is not None:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        conn = _Connection(self, writer)
        self.connections.add(conn)
        self.accepted += 1
        try:
            mode = self.mode
            delay = 2 * mode.delay_s  # the handshake's round trip on the simulated path
            rto = SYN_RTO_S
            while mode.loss and self.rng.random() < mode.loss:
                delay += rto
                rto *= 2
            if delay:
                await asyncio.sleep(delay)
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError as exc:
                log.info("link: upstream %s:%d refused: %s", *self.upstream, exc)
                conn.reset()
                return
            conn.up = up_writer
            conn.tasks.append(task)  # cut() ends the relay
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(conn.pump(reader, up_writer, "up"))
                    tg.create_task(conn.pump(up_reader, writer, "down"))
            except* OSError as group:  # a reset or broken pipe on either side ends the relay
                log.debug("link: relay ended: %s", group.exceptions[0])
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self.connections.discard(conn)
            self._handlers.discard(task)
            for w in (writer, conn.up):
                if w is not None:
                    w.transport.abort()


def parse_command(line: str, mode: LinkMode) -> LinkMode | str | None:
    """One ``hw-sim link`` stdin command: a new mode, an action name, or None when invalid."""
    words = line.split()
    if not words:
        return None
    cmd, rest = words[0].lower(), words[1:]
    try:
        if cmd == "pass":
            return PASS
        if cmd == "delay":
            jitter = float(rest[1]) / 1000 if len(rest) > 1 else 0.0
            return dataclasses.replace(mode, delay_s=float(rest[0]) / 1000, jitter_s=jitter)
        if cmd == "loss":
            value = float(rest[0])
            if not 0 <= value < 1:
                return None
            return dataclasses.replace(mode, loss=value)
    except (IndexError, ValueError):
        return None
    if cmd in ("freeze", "cut", "status"):
        return cmd
    return None


LINK_COMMANDS_HELP = """commands on standard input (one a line):
  pass                    no delay, no loss
  delay MS [JITTER_MS]    one-way delay (and jitter) per chunk
  loss FRACTION           fraction of chunks lost (each costs a retransmission timeout)
  freeze                  open connections forward nothing more (no FIN, no RST)
  cut                     reset (RST) every open connection
  status                  connections and counters
"""
