"""A full TLS handshake against a resumed one, to a real Mosquitto (issue 15).

    python -m bench.tls_resume [--count 30] [--delay-ms 100]

Makes a throwaway CA, server and client certificate with openssl, starts Mosquitto with
mutual TLS (TLS 1.2, as the tests' broker; Mosquitto resumes with session tickets), and
times TCP connect + handshake with the agent's own context (``agent.tls.client_context``):
``--count`` full handshakes (no session offered) and as many resumed ones (the last session
offered, as the uplink does on a reconnection). Once on loopback, once through
``hw_sim.link.Link`` with ``--delay-ms`` one way, where the round trips show. Prints p50 and
p95 per case and the saving; the floor beside it is the link's TCP connect alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.tls import ResumingContext, client_context
from bench.common import summary_ms
from hw_sim.link import Link, LinkMode
from hw_sim.mosquitto import find_mosquitto, free_port

EXT = """[server]
subjectAltName = DNS:localhost
extendedKeyUsage = serverAuth
[client]
extendedKeyUsage = clientAuth
"""


def openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


def make_pki(directory: Path) -> None:
    (directory / "ext.cnf").write_text(EXT)
    openssl(directory, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=bench CA",
            "-days", "2")  # fmt: skip
    for name in ("server", "client"):
        openssl(directory, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={'localhost' if name == 'server' else 'bench client'}")  # fmt: skip
        openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt",
                "-CAkey", "ca.key", "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
                "-extfile", "ext.cnf", "-extensions", name)  # fmt: skip


def readable(directory: Path) -> None:
    """Mosquitto started as root reads its files as its own user: a throwaway PKI."""
    for path in directory.iterdir():
        path.chmod(0o644)
    directory.chmod(0o755)


def handshake(port: int, context: ResumingContext) -> tuple[float, bool]:
    """TCP connect + TLS handshake; returns (seconds, resumed) and keeps the session."""
    started = time.monotonic()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        took = time.monotonic() - started
        tls.sendall(bytes([0xC0, 0]))  # an MQTT PINGREQ-sized write: a ticket comes first
        tls.settimeout(2)
        with contextlib.suppress(TimeoutError, ssl.SSLError, OSError):
            tls.recv(1)
        context.session = tls.session
        return took, bool(tls.session_reused)


def tcp_connect(port: int) -> float:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30):
        return time.monotonic() - started


def measure(port: int, directory: Path, count: int) -> dict[str, object]:
    context = client_context(
        directory / "ca.crt", directory / "client.crt", directory / "client.key"
    )
    full, resumed = [], []
    for _ in range(count):
        context.session = None
        took, reused = handshake(port, context)
        assert not reused
        full.append(took)
        took, reused = handshake(port, context)
        if not reused:
            raise RuntimeError("the broker did not resume the session")
        resumed.append(took)
    tcp = [tcp_connect(port) for _ in range(count)]
    return {
        "full_ms": summary_ms(full),
        "resumed_ms": summary_ms(resumed),
        "tcp_ms": summary_ms(tcp),
    }


async def run(count: int, delay_ms: int) -> dict[str, dict[str, object]]:
    mosquitto = find_mosquitto()
    if mosquitto is None:
        raise SystemExit("mosquitto is not installed")
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        directory = Path(tmp)
        make_pki(directory)
        port = free_port()
        conf = directory / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\ncafile {directory}/ca.crt\n"
            f"certfile {directory}/server.crt\nkeyfile {directory}/server.key\n"
            "require_certificate true\ntls_version tlsv1.2\n"
        )
        await asyncio.to_thread(readable, directory)
        process = await asyncio.create_subprocess_exec(
            mosquitto, "-c", str(conf), stderr=asyncio.subprocess.DEVNULL
        )
        try:
            for _ in range(200):
                try:
                    await asyncio.to_thread(tcp_connect, port)
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            results = {"loopback": await asyncio.to_thread(measure, port, directory, count)}
            async with Link(port, mode=LinkMode(delay_ms / 1000)) as link:
                results[f"{delay_ms} ms one way"] = await asyncio.to_thread(
                    measure, link.port, directory, max(5, count // 3)
                )
            return results
        finally:
            process.terminate()
            await process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--delay-ms", type=int, default=100)
    args = parser.parse_args()
    results = asyncio.run(run(args.count, args.delay_ms))
    print(f"{'path':<18} {'n':>3} {'full p50':>9} {'p95':>7} {'resumed p50':>11} {'p95':>7} "
          f"{'saved':>7} {'TCP p50':>8}  (ms)")  # fmt: skip
    for name, data in results.items():
        full, resumed, tcp = data["full_ms"], data["resumed_ms"], data["tcp_ms"]
        assert isinstance(full, dict) and isinstance(resumed, dict) and isinstance(tcp, dict)
        print(
            f"{name:<18} {full['n']:>3} {full['p50']:>9.2f} {full['p95']:>7.2f} "
            f"{resumed['p50']:>11.2f} {resumed['p95']:>7.2f} "
            f"{full['p50'] - resumed['p50']:>7.2f} {tcp['p50']:>8.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
