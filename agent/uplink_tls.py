"""TLS for the uplink: the context (made again when a file changes, else kept, so that a
session can resume), the session offered on the next connection, and a broker certificate
refused on its dates that is the clock's fault rather than the certificate's.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt

from agent.config import MqttConfig
from agent.core.clock import rfc3339_ms
from agent.core.wallclock import Reading
from agent.errors import ConfigError, UplinkError
from agent.tls import CLOCK_HINT, ResumingContext, certificate_time_failure, client_context

log = logging.getLogger("agent.uplink")

__all__ = ["UplinkTls", "tls_context"]


def tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    """Mutual TLS, 1.2 or later, with hostname verification."""
    try:
        return client_context(cfg.ca_file, cfg.cert_file, cfg.key_file)
    except (OSError, ssl.SSLError, ConfigError) as exc:
        raise UplinkError(f"cannot set up TLS from the configured files: {exc}") from exc


def _file_signature(path: Path | None) -> tuple[int, int, int] | None:
    """What changes when a file is replaced or rewritten (a renewed certificate)."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class UplinkTls:
    def __init__(
        self,
        cfg: MqttConfig,
        counters: dict[str, int],
        clock: Callable[[], Reading] | None = None,
    ) -> None:
        self.cfg = cfg
        self.counters = counters
        self._clock = clock  # the agent's wall clock: is a refused certificate its fault?
        self._made: tuple[tuple[object, ...], ssl.SSLContext] | None = None  # files -> context

    def context(self) -> ssl.SSLContext:
        """The TLS context, made again whenever a file changed (a renewed certificate is
        picked up without a restart), else kept: a session can only resume in its context."""
        files = (self.cfg.ca_file, self.cfg.cert_file, self.cfg.key_file)
        signature = tuple(_file_signature(path) for path in files)
        if self._made is None or self._made[0] != signature:
            self._made = (signature, tls_context(self.cfg))
        return self._made[1]

    def connected(self, client: mqtt.Client) -> None:
        """After CONNACK (TLS 1.3 tickets come after the handshake): offer it next time."""
        sock = client.socket()
        if not isinstance(sock, ssl.SSLSocket) or self._made is None:
            return
        if sock.session_reused:
            self.counters["tls_resumed"] = self.counters.get("tls_resumed", 0) + 1
        context = self._made[1]
        if isinstance(context, ResumingContext) and sock.session is not None:
            context.session = sock.session

    def clock_problem(self, exc: BaseException, failures: int, broker: str) -> bool:
        """A broker certificate refused on its dates while our clock is untrusted: say so.

        OpenSSL checks validity against the system clock, which on a board without RTC may be
        1970 or the image's date until NTP or GPS sets it; GPS time cannot be given to it.
        Counted (``tls_clock_errors``) and logged as a clock problem with a hint.
        """
        failed = certificate_time_failure(exc)
        if failed is None or self._clock is None:
            return False
        reading = self._clock()
        if reading.source == "system":
            return False  # a trusted clock: the certificate's own problem, reported as such
        self.counters["tls_clock_errors"] = self.counters.get("tls_clock_errors", 0) + 1
        if failures == 1 or failures % 20 == 0:
            log.warning(
                "MQTT %s: clock problem, not a certificate problem: the broker's certificate "
                "%s by the system clock (%s), which is not trusted (wall clock: %s, %s); %s",
                broker,
                failed,
                rfc3339_ms(datetime.now(UTC)),
                reading.source,
                rfc3339_ms(reading.utc),
                CLOCK_HINT,
            )
        return True
