"""A real Mosquitto broker on a free loopback port, for tests, the demo and benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from hw_sim.service import Service


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_listening(host: str, port: int, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return


class Mosquitto(Service):
    """``async with Mosquitto() as broker:`` -> ``broker.port`` on 127.0.0.1.

    ``persistence=True`` keeps sessions and queued messages across :meth:`restart`, as a
    production broker does.
    """

    def __init__(self, port: int | None = None, *, persistence: bool = True) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise FileNotFoundError("mosquitto is not installed")
        self.binary = binary
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.persistence = persistence
        self._dir = tempfile.TemporaryDirectory(prefix="mosquitto-")
        self.process: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> Path:
        directory = Path(self._dir.name)
        directory.chmod(0o777)  # mosquitto started as root drops to user mosquitto
        conf = directory / "mosquitto.conf"
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {directory}/",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "max_queued_messages 10000",
        ]
        conf.write_text("\n".join(lines) + "\n")
        return conf

    async def start(self) -> None:
        conf = self._write_config()
        self.process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            [self.binary, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            await wait_listening(self.host, self.port)
        except TimeoutError:
            await self.stop()
            raise

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)
        if process.stderr is not None:
            process.stderr.close()

    async def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash or power cut would."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            await asyncio.to_thread(process.wait)
            if process.stderr is not None:
                process.stderr.close()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def aclose(self) -> None:
        """Stop it and remove its configuration and persistence (safe twice)."""
        await self.stop()
        self._dir.cleanup()
