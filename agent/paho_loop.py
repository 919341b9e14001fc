"""paho-mqtt's network I/O on the asyncio event loop, for one client (no paho thread).

The socket is watched with ``loop.add_reader``/``add_writer`` and paho's ``loop_read`` /
``loop_write`` run from there, as aiomqtt does. paho's socket callbacks may come from the
thread that runs the blocking ``connect()``; they are handed to the loop. Each socket gets the
kernel's own watch on a dead path (TCP keep-alive and ``TCP_USER_TIMEOUT``) and the options
of a thin stream (linear retransmission timeouts, no Nagle).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

log = logging.getLogger("agent.uplink")

# A probe after 10 s of silence, 3 probes 5 s apart; data unacknowledged for 20 s ends the
# connection. Bounded, on any link.
TCP_KEEPALIVE = ((socket.SO_KEEPALIVE, 1),)
TCP_DEAD_PATH = (
    (socket.TCP_KEEPIDLE, 10),
    (socket.TCP_KEEPINTVL, 5),
    (socket.TCP_KEEPCNT, 3),
    (socket.TCP_USER_TIMEOUT, 20_000),
)
# The MQTT connection is a thin stream: a packet or two in flight, then silence. Linux's
# TCP_THIN_LINEAR_TIMEOUTS (not in Python's socket module; linux/tcp.h has 16) keeps the
# retransmission timeout linear instead of doubling for a thin stream's first six
# retransmissions: after a blackout of a few seconds the request is resent about one RTO
# after the path is back, not up to twice the blackout later (measured after 5 s dark: p50
# 1.0 s instead of 3.6 s). Under random loss it made no measurable difference
# (bench.links_kernel, README, issue 15). TCP_NODELAY: a PINGREQ loss
# probe (agent.uplink) or a PUBACK never waits behind an unacknowledged segment (Nagle).
TCP_THIN_LINEAR_TIMEOUTS: int = getattr(socket, "TCP_THIN_LINEAR_TIMEOUTS", 16)
TCP_THIN = ((socket.TCP_NODELAY, 1), (TCP_THIN_LINEAR_TIMEOUTS, 1))
TCP_OPTIONS = TCP_DEAD_PATH + TCP_THIN


class PahoOnLoop:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, client: mqtt.Client, on_lost: Callable[[], None]
    ) -> None:
        self._loop = loop
        self.client = client
        self._on_lost = on_lost
        self._fd: int | None = None
        self._closed = False
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write

    def flush(self) -> None:
        """Write what paho queued right away instead of waiting for the writer callback."""
        if not self._closed and self.client.want_write():
            self.client.loop_write()

    def ping(self) -> bool:
        """An MQTT PINGREQ now, written at once; False when closed or this paho has none.

        paho has no public call for it: ``_send_pingreq`` is what its own keep-alive uses (it
        also starts paho's wait for the PINGRESP). paho-mqtt is pinned below 3;
        tests/test_links.py sees the PINGREQs on the wire.
        """
        send = getattr(self.client, "_send_pingreq", None)
        if self._closed or send is None:
            return False
        send()
        self.flush()
        return True

    def close(self) -> None:
        """Stop watching and close the socket (no DISCONNECT: see Uplink.aclose); idempotent."""
        self._closed = True
        self.client.on_disconnect = None
        # unwatch first: with a writer still registered, removing the reader of a closed fd
        # makes epoll's modify() raise EBADF out of the agent's task group
        self._forget_fd()
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _forget_fd(self) -> None:
        if self._fd is not None:
            # a socket paho closed on its own error path: its fd may already be gone (EBADF)
            # or reused; forgetting it must never raise into the agent's task group
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_reader(self._fd)
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_writer(self._fd)
        self._fd = None

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        options = [(socket.SOL_SOCKET, *o) for o in TCP_KEEPALIVE]
        options += [(socket.IPPROTO_TCP, *o) for o in TCP_OPTIONS]
        for level, option, value in options:
            try:
                sock.setsockopt(level, option, value)
            except (OSError, AttributeError) as exc:  # not every socket is TCP or Linux
                log.debug("socket option %d/%d not set: %s", level, option, exc)
        self._loop.call_soon_threadsafe(self._watch, sock.fileno())

    def _watch(self, fd: int) -> None:
        if self._closed:
            return
        self._fd = fd
        self._loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            self.client.loop_read()
        except (OSError, ssl.SSLError) as exc:
            log.warning("MQTT read failed: %s", exc)
            self._on_lost()

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if not self._closed:
            self._forget_fd()

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._loop.call_soon_threadsafe(self._watch_write, sock.fileno())

    def _watch_write(self, fd: int) -> None:
        if not self._closed and fd == self._fd:
            self._loop.add_writer(fd, self._writable)

    def _writable(self) -> None:
        try:
            self.client.loop_write()
        except (OSError, ssl.SSLError) as exc:
            log.warning("MQTT write failed: %s", exc)
            self._on_lost()

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if not self._closed:
            self._loop.call_soon_threadsafe(self._unwatch_write, sock.fileno())

    def _unwatch_write(self, fd: int) -> None:
        if fd == self._fd:
            self._loop.remove_writer(fd)
