"""A real 3-node NATS cluster with JetStream and its MQTT 3.1.1 listener, on loopback.

The broker tier of a fleet is a cluster whose nodes die. This starts one from Debian's
``nats-server`` for tests, ``make fleet`` and benchmarks, the way :mod:`hw_sim.mosquitto`
starts Mosquitto: free loopback ports, a temporary directory, and nodes that can be killed
(SIGKILL, as a crash or a lost machine) and started again with their JetStream store.

Why NATS and not RabbitMQ (both in Debian): one static binary that starts in well under a
second and needs no Erlang runtime or cookie; MQTT sessions, QoS 1 messages and retained
messages live in JetStream streams replicated to all three nodes (``stream_replicas: 3``), so a
message PUBACKed by one node survives that node's death; and three nodes fit in about 60 MB.
Its limits, which the agent lives with: MQTT 3.1.1 only (no MQTT 5 properties), QoS 0 and 1,
and a node's death loses the Last Wills it held; after a kill, JetStream elects new leaders
and the session lookups of the clients that move stall for several seconds (measured by the
failover tests and ``make fleet``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from hw_sim.mosquitto import free_port
from hw_sim.service import Service

__all__ = ["NatsCluster", "NatsNode", "find_nats_server"]

READY_TIMEOUT_S = 60.0


def find_nats_server() -> str | None:
    return shutil.which("nats-server") or shutil.which("/usr/sbin/nats-server")


@dataclass
class NatsNode:
    name: str
    mqtt_port: int
    client_port: int
    cluster_port: int
    http_port: int
    store: Path
    conf: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.mqtt_port}"

    def rss_bytes(self) -> int:
        """The node's resident memory, from /proc (0 when it is not running)."""
        if self.process is None or not self.running:
            return 0
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0


def _mqtt_connack(port: int, timeout: float) -> int | None:
    """One MQTT 3.1.1 CONNECT (clean session) -> the CONNACK return code, None on no answer."""
    client_id = b"nats-cluster-probe"
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c"
    payload = len(client_id).to_bytes(2, "big") + client_id
    body = variable + payload
    packet = b"\x10" + bytes([len(body)]) + body
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(packet)
            answer = b""
            while len(answer) < 4:
                chunk = sock.recv(4 - len(answer))
                if not chunk:
                    return None
                answer += chunk
            sock.sendall(b"\xe0\x00")  # DISCONNECT
    except OSError:
        return None
    if answer[0] != 0x20 or answer[1] != 2:
        return None
    return answer[3]


class NatsCluster(Service):
    """``async with NatsCluster() as cluster:`` -> ``cluster.nodes[i].mqtt_port`` on 127.0.0.1.

    ``kill(i)`` SIGKILLs node ``i``; ``start_node(i)`` starts it again on the same ports and
    store, and it rejoins. ``start()`` returns once every node answers an MQTT CONNECT, so the
    JetStream streams behind MQTT exist with their three replicas.
    """

    def __init__(self, size: int = 3) -> None:
        binary = find_nats_server()
        if binary is None:
            raise FileNotFoundError("nats-server is not installed")
        self.binary = binary
        self.host = "127.0.0.1"
        self._dir = tempfile.TemporaryDirectory(prefix="nats-cluster-")
        root = Path(self._dir.name)
        self.nodes = [
            NatsNode(
                name=f"n{i + 1}",
                mqtt_port=free_port(),
                client_port=free_port(),
                cluster_port=free_port(),
                http_port=free_port(),
                store=root / f"js{i + 1}",
                conf=root / f"n{i + 1}.conf",
            )
            for i in range(size)
        ]
        for node in self.nodes:
            node.conf.write_text(self._config(node))

    @property
    def addresses(self) -> list[str]:
        """Every node's MQTT listener as ``host:port``, the form ``mqtt.host`` takes."""
        return [node.address for node in self.nodes]

    def _config(self, node: NatsNode) -> str:
        routes = ", ".join(f'"nats-route://127.0.0.1:{n.cluster_port}"' for n in self.nodes)
        return "\n".join(
            [
                f"server_name: {node.name}",
                f"listen: 127.0.0.1:{node.client_port}",
                f"http: 127.0.0.1:{node.http_port}",
                f'jetstream {{ store_dir: "{node.store}", max_memory_store: 64MB, '
                "max_file_store: 1GB }",
                f"cluster {{ name: fleet, listen: 127.0.0.1:{node.cluster_port}, "
                f"routes: [{routes}] }}",
                f"mqtt {{ listen: 127.0.0.1:{node.mqtt_port}, stream_replicas: "
                f"{len(self.nodes)} }}",
                "",
            ]
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        for index in range(len(self.nodes)):
            self._spawn(index)
        try:
            await self.wait_ready(range(len(self.nodes)))
        except BaseException:
            await self.aclose()
            raise

    def _spawn(self, index: int) -> None:
        node = self.nodes[index]
        if node.running:
            return
        log = (node.conf.parent / f"{node.name}.log").open("ab")
        node.process = subprocess.Popen(
            [self.binary, "-c", str(node.conf)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    async def start_node(self, index: int, timeout: float = READY_TIMEOUT_S) -> None:
        """Start node ``index`` again (same ports, same store) and wait until it serves MQTT
        (a node that catches up with thousands of sessions' streams takes minutes)."""
        self._spawn(index)
        await self.wait_ready([index], timeout)

    async def wait_ready(
        self, indexes: range | list[int], timeout: float = READY_TIMEOUT_S
    ) -> None:
        async with asyncio.timeout(timeout):
            for index in indexes:
                node = self.nodes[index]
                while True:
                    if node.process is not None and node.process.poll() is not None:
                        raise RuntimeError(
                            f"nats-server {node.name} exited ({node.process.returncode}):\n"
                            + self.log_tail(index)
                        )
                    if await asyncio.to_thread(self._healthy, node) and (
                        await asyncio.to_thread(_mqtt_connack, node.mqtt_port, 5.0) == 0
                    ):
                        break
                    await asyncio.sleep(0.2)

    @staticmethod
    def _healthy(node: NatsNode) -> bool:
        try:
            with urllib.request.urlopen(  # loopback, our own port
                f"http://127.0.0.1:{node.http_port}/healthz", timeout=2
            ) as answer:
                status: dict[str, object] = json.loads(answer.read())
        except (OSError, ValueError):
            return False
        return status.get("status") == "ok"

    def log_tail(self, index: int, lines: int = 20) -> str:
        path = self.nodes[index].conf.parent / f"{self.nodes[index].name}.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def index_of(self, port: int) -> int:
        """Which node listens for MQTT on ``port``."""
        for index, node in enumerate(self.nodes):
            if node.mqtt_port == port:
                return index
        raise KeyError(port)

    def freeze(self, index: int) -> None:
        """SIGSTOP node ``index``: its sockets stay open, and what its clients write from now on
        waits unread in the kernel (a node that hangs; :meth:`kill` then loses it for sure)."""
        process = self.nodes[index].process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGSTOP)

    async def kill(self, index: int) -> None:
        """SIGKILL node ``index`` (frozen or not): no goodbye to its clients or to the other
        nodes."""
        process, self.nodes[index].process = self.nodes[index].process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(process.wait)

    def rss_bytes(self) -> int:
        return sum(node.rss_bytes() for node in self.nodes)

    async def aclose(self) -> None:
        """Stop every node and remove the stores (safe twice)."""
        for node in self.nodes:
            process, node.process = node.process, None
            if process is None:
                continue
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, 10)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
        self._dir.cleanup()  # safe twice
