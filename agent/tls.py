"""Mutual TLS for the uplink: check the configured files, build the client context.

:func:`check_tls_files` runs at configuration time and says in one sentence what is wrong
with the CA file, the client certificate or its key (missing, unreadable, a key others can
read, a certificate outside its validity period, a key that belongs to another certificate),
instead of a bare OpenSSL error at the first connection attempt. :func:`client_context` is
the context the uplink connects with: TLS 1.2 or later, the broker's certificate verified
against the CA file, its host name checked, our certificate presented.

The validity period is read from the certificate's DER with a few lines of code
(:func:`certificate_validity`) rather than with the ``cryptography`` package (a large
compiled dependency to cross-build for the board), the ``openssl`` command (not on the board)
or ``ssl._ssl._test_decode_cert`` (a private CPython test hook without a stability promise or
type stubs). It reads a certificate OpenSSL has already accepted, through exactly one fixed
path of RFC 5280: ``Certificate / tbsCertificate / validity``.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import ssl
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.errors import ConfigError, UplinkError

__all__ = [
    "CLOCK_HINT",
    "CertificateTimeError",
    "ResumingContext",
    "certificate_time_failure",
    "certificate_validity",
    "check_tls_files",
    "client_context",
]


# OpenSSL's verify results that are about time, not about the certificate chain: with a wrong
# system clock (a board without RTC before NTP or GPS set it) a good certificate fails so.
_TIME_VERIFY_CODES = {9: "is not yet valid", 10: "has expired"}  # X509_V_ERR_CERT_NOT_YET_VALID,
# X509_V_ERR_CERT_HAS_EXPIRED
CLOCK_HINT = (
    "set the board's clock from gpsd with chrony (docs/deploy.md, 'The clock'), or wait "
    "for NTP; the agent retries and queues calls meanwhile"
)


def certificate_time_failure(exc: BaseException) -> str | None:
    """ "is not yet valid" / "has expired" when our side refused the broker's certificate on
    its dates (the chain of causes is searched), else None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return _TIME_VERIFY_CODES.get(seen.verify_code)
        seen = seen.__cause__ or seen.__context__
    return None


class CertificateTimeError(ConfigError):
    """The client certificate is expired or not yet valid (or the board's clock is wrong)."""


_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s*(?P<body>[A-Za-z0-9+/=\s]+?)\s*-----END CERTIFICATE-----"
)


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when its handshake fails.

    paho-mqtt wraps the TCP socket and calls ``do_handshake`` without closing the socket when
    that raises (a refused certificate): the descriptor would stay open until the garbage
    collector finds it, with a ``ResourceWarning``, once per reconnection attempt.
    """

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


class _KeyIsEncrypted(Exception):
    """Raised by the password callback: a service cannot type a pass phrase."""


def _no_password() -> bytes:
    raise _KeyIsEncrypted


# -- the validity period ----------------------------------------------------------------------


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """One DER element at ``pos``: ``(tag, start of contents, end of contents)``."""
    if pos + 2 > len(data):
        raise ValueError("truncated")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4 or pos + count > len(data):
            raise ValueError("bad length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("truncated")
    return tag, pos, pos + length


def _time(tag: int, raw: bytes) -> datetime:
    text = raw.decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ; RFC 5280: YY >= 50 means 19YY
        if not re.fullmatch(r"\d{12}Z", text):
            raise ValueError("bad UTCTime")
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag == 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        if not re.fullmatch(r"\d{14}Z", text):
            raise ValueError("bad GeneralizedTime")
    else:
        raise ValueError("not a time")
    return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)


def _der_validity(der: bytes) -> tuple[datetime, datetime]:
    tag, start, _ = _tlv(der, 0)  # Certificate ::= SEQUENCE
    if tag != 0x30:
        raise ValueError("not a certificate")
    tag, pos, _ = _tlv(der, start)  # tbsCertificate ::= SEQUENCE
    if tag != 0x30:
        raise ValueError("not a certificate")
    tag, _, end = _tlv(der, pos)
    if tag == 0xA0:  # [0] EXPLICIT version, absent in v1 certificates
        pos = end
    for expected in (0x02, 0x30, 0x30):  # serialNumber, signature, issuer
        tag, _, end = _tlv(der, pos)
        if tag != expected:
            raise ValueError("not a certificate")
        pos = end
    tag, pos, end = _tlv(der, pos)  # validity ::= SEQUENCE { notBefore, notAfter }
    if tag != 0x30:
        raise ValueError("not a certificate")
    tag, start, stop = _tlv(der, pos)
    not_before = _time(tag, der[start:stop])
    tag, start, stop = _tlv(der, stop)
    not_after = _time(tag, der[start:stop])
    return not_before, not_after


def certificate_validity(pem: bytes) -> tuple[datetime, datetime]:
    """``(not_before, not_after)`` in UTC of the first PEM certificate in ``pem``.

    Raises :class:`ValueError` when there is no well-formed certificate.
    """
    match = _PEM_CERT.search(pem)
    if match is None:
        raise ValueError("no PEM certificate")
    try:
        der = base64.b64decode(b"".join(match["body"].split()), validate=True)
    except binascii.Error as exc:
        raise ValueError("bad base64 in the PEM certificate") from exc
    try:
        return _der_validity(der)
    except (UnicodeDecodeError, IndexError) as exc:
        raise ValueError("not a certificate") from exc


# -- the checks -------------------------------------------------------------------------------


def _readable(path: Path | None, key: str, where: str) -> bytes:
    if path is None:
        raise ConfigError(f"{where}key '{key}' is required when mqtt.tls is true")
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{where}key '{key}': {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{where}key '{key}': cannot reach {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{where}key '{key}': {path} is not a regular file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{where}key '{key}': cannot read {path}: {exc.strerror} "
            f"(the agent runs as user id {os.geteuid()})"
        ) from exc


def check_tls_files(
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    *,
    now: datetime | None = None,
    check_time: bool = True,
    source: Path | None = None,
) -> None:
    """Raise :class:`~agent.errors.ConfigError` naming the key and the problem, or return.

    Checked: each file exists, is a regular file and is readable; the key file is not
    accessible to group or others (``mode & 0o077``); the CA file holds a certificate; the
    client certificate is within its validity period at ``now`` (default: the current time;
    :class:`CertificateTimeError`; skipped with ``check_time=False``); the key belongs to the
    certificate and has no pass phrase. ``source``, the configuration file, prefixes every
    message.

    The time check is separate because its failure may be the board's clock (no RTC, no NTP
    yet) rather than the certificate, and because an agent that refuses to start cannot even
    queue a call: ``check-config`` should fail on it, ``run`` should warn and go on (the
    uplink re-reads the files at every attempt, so a renewed certificate is picked up).
    """
    where = f"{source}: " if source is not None else ""
    _readable(ca, "mqtt.ca_file", where)
    cert_pem = _readable(cert, "mqtt.cert_file", where)
    _readable(key, "mqtt.key_file", where)
    assert ca is not None and cert is not None and key is not None
    mode = stat.S_IMODE(key.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{where}key 'mqtt.key_file': {key} is accessible to group or others "
            f"(mode {mode:04o}); a private key must be 0600 or 0400, owned by the agent's user"
        )
    try:
        ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{where}key 'mqtt.ca_file': {ca} holds no usable PEM certificate ({exc.reason})"
        ) from exc
    try:
        not_before, not_after = certificate_validity(cert_pem)
    except ValueError as exc:
        raise ConfigError(
            f"{where}key 'mqtt.cert_file': {cert} holds no usable PEM certificate ({exc})"
        ) from exc
    moment = now or datetime.now(UTC)
    if check_time and moment > not_after:
        raise CertificateTimeError(
            f"{where}key 'mqtt.cert_file': the client certificate {cert} expired on "
            f"{not_after:%Y-%m-%d %H:%M} UTC (now {moment:%Y-%m-%d %H:%M} UTC); the broker "
            "will refuse it"
        )
    if check_time and moment < not_before:
        raise CertificateTimeError(
            f"{where}key 'mqtt.cert_file': the client certificate {cert} is not valid before "
            f"{not_before:%Y-%m-%d %H:%M} UTC (now {moment:%Y-%m-%d %H:%M} UTC; is the clock "
            "set?)"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(str(cert), str(key), password=_no_password)
    except _KeyIsEncrypted:
        raise ConfigError(
            f"{where}key 'mqtt.key_file': {key} is encrypted with a pass phrase; the agent "
            "runs unattended and needs an unencrypted key (protected by its file mode)"
        ) from None
    except ssl.SSLError as exc:
        if exc.reason in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):
            raise ConfigError(
                f"{where}keys 'mqtt.cert_file' and 'mqtt.key_file': the private key {key} "
                f"does not belong to the certificate {cert}"
            ) from exc
        raise ConfigError(
            f"{where}key 'mqtt.key_file': {key} is not a usable PEM private key for {cert} "
            f"({exc.reason or exc})"
        ) from exc


class ResumingContext(ssl.SSLContext):
    """A client context that offers the last session it was given, so that a reconnection
    can resume it (one round trip fewer, no certificate exchange) where the broker allows.

    paho wraps each new socket itself; this passes ``session`` on. A session belongs to the
    context that made it, so the uplink keeps one context while the files are unchanged.
    """

    session: ssl.SSLSession | None = None

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        if self.session is not None and "session" not in kwargs:
            kwargs["session"] = self.session
        return super().wrap_socket(sock, *args, **kwargs)


def client_context(ca: Path | None, cert: Path | None, key: Path | None) -> ResumingContext:
    """The uplink's TLS context: TLS 1.2+, ``CERT_REQUIRED``, host name checked, our cert.

    ``ca`` ``None`` trusts the system's CA store; ``cert`` ``None`` presents no client
    certificate (the broker then decides). Raises :class:`~agent.errors.UplinkError`: the files
    are read at every connection attempt, so a renewed certificate is picked up without a
    restart, and a broken one is retried with backoff rather than crashing the agent.
    """
    try:
        context = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)  # as create_default_context makes it
        if ca is None:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            context.load_verify_locations(cafile=str(ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        context.sslsocket_class = _ClosingSSLSocket
        if cert is not None:
            context.load_cert_chain(
                str(cert), None if key is None else str(key), password=_no_password
            )
    except _KeyIsEncrypted:
        raise UplinkError(f"cannot set up TLS: the private key {key} needs a pass phrase") from None
    except (OSError, ssl.SSLError) as exc:
        raise UplinkError(f"cannot set up TLS from the configured files: {exc}") from exc
    return context
