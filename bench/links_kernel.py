"""The call over a lossy link made by the kernel itself (issue 15): real TCP retransmissions.

    hil/run-in-uml.sh .venv/bin/python -m bench.links_kernel --out FILE [--calls 100]
        [--samples 400] [--clients 20] [--only NAME] [--blackouts 2,5]

Runs only inside the UML kernel that ``hil/run-in-uml.sh`` boots (``make bench`` does):
``tc`` netem on that kernel's loopback, on the car's port only (``hw_sim.netem``), so that
the car's side of the path is 200 ms one way with 20 % of packets lost in both directions and
the broker's side to the backend is clean. Unlike ``bench.links`` (a relay that models
retransmission), the retransmission timers here are the kernel's own, so what the agent asks
of its socket counts.

1. What the agent does to its connection, without the agent: ``--clients`` bare paho clients
   on their own connections each publish one QoS-1 message after a quiet spell, again and
   again; a subscriber on the clean side takes the arrival time. With paho's sockets as they
   come, with the socket options the agent sets (``agent.paho_loop.TCP_OPTIONS``), and with
   those and the agent's loss probes (a PINGREQ 20 ms after the publish, then every 0.25 s
   until the PUBACK, as ``agent.uplink`` does): the share of messages at the subscriber
   within 2 s, and the kernel's RTO, srtt and rttvar (``TCP_INFO``) at each publish.
2. Blackouts (``--blackouts 2,5`` s): the same three kinds of client, ``--blackout-clients``
   at once, ``--blackout-rounds`` times each: the link goes dark (netem loss 100 %), each
   publishes within its first 0.3 s, and after the blackout the link is back at 200 ms one
   way without loss. How long after it is back each message arrives: the kernel's
   retransmission schedule (exponential backoff, or linear for a thin stream with
   ``TCP_THIN_LINEAR_TIMEOUTS``) beyond the blackout itself.
3. The agent itself: ``--calls`` calls as in ``bench.links``, hold threshold -> request at the
   backend, after a quiet spell each.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config.schema import keys
from agent.paho_loop import TCP_OPTIONS
from agent.uplink import FIRST_LOSS_PROBE_S
from bench.common import machine, summary_ms, write_json
from bench.links import QUIET_S, TARGET_S, condition, wilson
from hw_sim.gpsd import FakeGpsd
from hw_sim.link import Link
from hw_sim.mosquitto import Mosquitto
from hw_sim.netem import change_netem, in_uml, port_netem

SPEC = "delay 200ms loss 20%"
BLACKOUT_LINK = "delay 200ms"  # around a blackout: slow, nothing lost
TOPIC = "bench/kernel"
Options = Sequence[tuple[int, int]]
PROBE_EVERY_S: float = next(k.default for k in keys() if k.name == "mqtt.loss_probe_s")
PROBES: tuple[tuple[str, Options, tuple[float, ...]], ...] = (
    ("paho default", (), ()),
    ("agent's socket options", TCP_OPTIONS, ()),
    ("+ loss probes", TCP_OPTIONS, tuple(FIRST_LOSS_PROBE_S + PROBE_EVERY_S * i for i in range(8))),
)


class Arrivals:
    """A subscriber on the clean side: when each probe message arrived."""

    def __init__(self, port: int) -> None:
        self.at: dict[str, float] = {}
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-kernel-sub")
        self.client.on_connect = lambda c, *a: c.subscribe(f"{TOPIC}/#", qos=1)
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, 60)
        self.client.loop_start()
        if not self._ready.wait(30):
            raise RuntimeError("the subscriber got no SUBACK")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.at.setdefault(message.payload.split(b" ", 1)[0].decode(), time.monotonic())

    def wait(self, keys: Sequence[str], timeout: float) -> None:
        """Until every one of ``keys`` has arrived, or ``timeout`` s (a thread's wait)."""
        deadline = time.monotonic() + timeout
        while not all(k in self.at for k in keys) and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connected_client(
    client_id: str, port: int, options: Options
) -> tuple[mqtt.Client, threading.Event]:
    """A paho client with ``options`` on its socket, connected through ``port``, and the event
    its PUBACKs set."""
    connected, acked = threading.Event(), threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)

    def on_socket_open(client: mqtt.Client, userdata: Any, sock: Any) -> None:
        for option, value in options:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)

    client.on_socket_open = on_socket_open
    client.connect_timeout = 120.0  # SYNs are lost too: the handshake may take many RTOs
    client.on_connect = lambda *a: connected.set()
    client.on_publish = lambda *a: acked.set()
    client.connect("127.0.0.1", port, 600)
    client.loop_start()
    if not connected.wait(120):
        client.loop_stop()
        raise RuntimeError("no CONNACK over the lossy link")
    return client, acked


def prober(
    n: int,
    port: int,
    *,
    options: Options,
    rounds: int,
    sent: dict[str, float],
    seed: int,
    tag: str,
    pings: Sequence[float] = (),
    rto: list[float] | None = None,
    rtt: list[tuple[float, float]] | None = None,
) -> None:
    """One client on its own connection: quiet, publish, PUBACK, ``rounds`` times."""
    rng = random.Random(seed)
    client, acked = connected_client(f"bench-kernel-{tag}-{n}", port, options)
    try:
        for r in range(rounds):
            time.sleep(QUIET_S + rng.random())
            key = f"{tag}-{n}-{r}"
            acked.clear()
            sent[key] = time.monotonic()
            client.publish(f"{TOPIC}/{n}", key.encode() + b" " + b"x" * 600, qos=1)
            if rto is not None:
                sock = client.socket()
                if isinstance(sock, socket.socket):
                    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
                    fields = struct.unpack_from("8B17I", info)
                    rto.append(fields[8] / 1e6)
                    if rtt is not None:
                        rtt.append((fields[23] / 1e6, fields[24] / 1e6))
            last = 0.0
            for at in pings:
                if acked.wait(at - last):
                    break
                last = at
                client._send_pingreq()  # what agent.paho_loop.PahoOnLoop.ping() calls
            if not acked.wait(120):
                raise RuntimeError("no PUBACK over the lossy link")
    finally:
        client.disconnect()
        client.loop_stop()


def probe(
    link_port: int,
    arrivals: Arrivals,
    options: Options,
    *,
    samples: int,
    clients: int,
    seed: int,
    tag: str,
    pings: Sequence[float] = (),
) -> dict[str, Any]:
    """``samples`` messages from ``clients`` connections: how long each took to the subscriber."""
    sent: dict[str, float] = {}
    rto: list[float] = []
    rtt: list[tuple[float, float]] = []
    rounds = -(-samples // clients)
    threads = [
        threading.Thread(
            target=prober,
            args=(n, link_port),
            kwargs={
                "options": options,
                "rounds": rounds,
                "sent": sent,
                "seed": seed,
                "tag": tag,
                "pings": pings,
                "rto": rto,
                "rtt": rtt,
            },
        )
        for n in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    arrivals.wait(list(sent), 60)
    waits = [arrivals.at[k] - t for k, t in sent.items() if k in arrivals.at]
    within = sum(w <= TARGET_S for w in waits) / len(sent)
    return {
        "options": [list(o) for o in options],
        "to_subscriber_ms": summary_ms(waits),
        "within_2s": round(within, 3),
        "ci95": [round(x, 3) for x in wilson(within, len(sent))],
        "missing": len(set(sent) - set(arrivals.at)),
        "rto_at_publish_ms": summary_ms(rto),
        "srtt_at_publish_ms": summary_ms([r for r, _ in rtt]),
        "rttvar_at_publish_ms": summary_ms([v for _, v in rtt]),
    }


def blackout_prober(
    n: int,
    port: int,
    *,
    options: Options,
    probing: bool,
    go: Sequence[threading.Event],
    ready: threading.Barrier,
    sent: dict[str, float],
    seed: int,
    tag: str,
) -> None:
    """One client: at each ``go``, (the link already dark) publish within 0.3 s and wait for
    the PUBACK; with ``probing`` a PINGREQ 20 ms after and every 0.25 s until it, as the agent."""
    rng = random.Random(seed)
    client, acked = connected_client(f"bench-blackout-{tag}-{n}", port, options)
    try:
        ready.wait(120)
        for r, event in enumerate(go):
            if not event.wait(600):
                raise RuntimeError("the blackout round never started")
            time.sleep(rng.uniform(0, 0.3))
            key = f"{tag}-{n}-{r}"
            acked.clear()
            sent[key] = time.monotonic()
            client.publish(f"{TOPIC}/{n}", key.encode() + b" " + b"x" * 600, qos=1)
            wait, deadline = FIRST_LOSS_PROBE_S, time.monotonic() + 120
            while probing and not acked.wait(wait) and time.monotonic() < deadline:
                client._send_pingreq()  # what agent.paho_loop.PahoOnLoop.ping() calls
                wait = PROBE_EVERY_S
            if not acked.wait(max(0.0, deadline - time.monotonic())):
                raise RuntimeError("no PUBACK after the blackout")
    finally:
        client.disconnect()
        client.loop_stop()


async def blackout(
    link_port: int,
    arrivals: Arrivals,
    options: Options,
    *,
    probing: bool,
    seconds: float,
    rounds: int,
    clients: int,
    seed: int,
    tag: str,
) -> dict[str, Any]:
    """``rounds`` times: the link goes dark (netem loss 100 % in both directions), every client
    publishes in its first 0.3 s, after ``seconds`` the link is back (``BLACKOUT_LINK``). How
    long after the link came back each message reached the subscriber: what the kernel's
    retransmission schedule costs beyond the blackout itself."""
    go = [threading.Event() for _ in range(rounds)]
    ready = threading.Barrier(clients + 1)
    sent: dict[str, float] = {}
    after: list[float] = []
    threads = [
        threading.Thread(
            target=blackout_prober,
            args=(n, link_port),
            kwargs={
                "options": options,
                "probing": probing,
                "go": go,
                "ready": ready,
                "sent": sent,
                "seed": seed + n,
                "tag": tag,
            },
        )
        for n in range(clients)
    ]
    for thread in threads:
        thread.start()
    try:
        await asyncio.to_thread(ready.wait, 120)
        for r, event in enumerate(go):
            await asyncio.sleep(QUIET_S)
            await change_netem(f"{BLACKOUT_LINK} loss 100%")
            event.set()
            await asyncio.sleep(seconds)
            await change_netem(BLACKOUT_LINK)
            back = time.monotonic()
            keys = [f"{tag}-{n}-{r}" for n in range(clients)]
            await asyncio.to_thread(arrivals.wait, keys, 60)
            after += [arrivals.at[k] - back for k in keys if k in arrivals.at]
    finally:
        for event in go:
            event.set()
        await change_netem(BLACKOUT_LINK)
        for thread in threads:
            await asyncio.to_thread(thread.join)
    return {
        "blackout_s": seconds,
        "probing": probing,
        "options": [list(o) for o in options],
        "after_link_back_ms": summary_ms(after),
        "missing": len(sent) - len(after),
    }


async def run(
    calls: int,
    samples: int,
    clients: int,
    seed: int,
    *,
    only: Sequence[str] = (),
    blackouts: Sequence[float] = (),
    blackout_rounds: int = 4,
    blackout_clients: int = 10,
) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "spec": SPEC, "seed": seed}
    with tempfile.TemporaryDirectory(prefix="bench-kernel-", dir="/dev/shm") as tmp:
        async with Mosquitto() as broker, FakeGpsd() as gpsd:
            async with Link(broker.port) as link, port_netem(link.port, SPEC):
                arrivals = await asyncio.to_thread(Arrivals, broker.port)
                try:
                    for tag, (name, options, pings) in enumerate(PROBES):
                        if not samples or (only and name not in only):
                            continue
                        print(f"[kernel] {name}: {samples} messages", file=sys.stderr, flush=True)
                        results[name] = await asyncio.to_thread(
                            partial(
                                probe,
                                samples=samples,
                                clients=clients,
                                seed=seed + tag,
                                tag=f"{seed}.{tag}",
                                pings=pings,
                            ),
                            link.port,
                            arrivals,
                            options,
                        )
                    for seconds in blackouts:
                        for tag, (name, options, pings) in enumerate(PROBES):
                            if only and name not in only:
                                continue
                            print(
                                f"[kernel] {seconds:g} s blackouts: {name}",
                                file=sys.stderr,
                                flush=True,
                            )
                            results[f"blackout {seconds:g} s: {name}"] = await blackout(
                                link.port,
                                arrivals,
                                options,
                                probing=bool(pings),
                                seconds=seconds,
                                rounds=blackout_rounds,
                                clients=blackout_clients,
                                seed=seed + 100 * tag,
                                tag=f"{seed}.b{seconds:g}.{tag}",
                            )
                finally:
                    await asyncio.to_thread(arrivals.close)
            if calls:
                print(f"[kernel] the agent: {calls} calls", file=sys.stderr, flush=True)
                try:
                    results["agent calls"] = await condition(
                        Path(tmp), broker, gpsd, None, calls=calls, seed=seed, netem=SPEC
                    )
                except (OSError, RuntimeError, TimeoutError) as exc:  # the probes still count
                    results["agent calls"] = {"error": f"{type(exc).__name__}: {exc}"}
    return results


def rows(results: dict[str, Any]) -> list[str]:
    out = [
        f"netem {results['spec']} on the car's side only (UML kernel TCP); floor: the 200 ms "
        "one way netem adds (a message lost once costs at least a 400 ms round trip more)"
    ]
    for name in (*(probe[0] for probe in PROBES), "agent calls"):
        data = results.get(name)
        if data is None:
            continue
        if "error" in data:
            out.append(f"  {name:<22} failed: {data['error']}")
            continue
        key = "to_subscriber_ms" if "to_subscriber_ms" in data else "hold_to_backend_ms"
        s = data[key]
        if not s["n"]:
            out.append(f"  {name:<22} nothing arrived")
            continue
        low, high = wilson(data["within_2s"], s["n"])
        out.append(
            f"  {name:<22} n={s['n']:>4}  p50 {s['p50']:>7.0f}  p95 {s['p95']:>7.0f}  "
            f"max {s['max']:>7.0f} ms  within 2 s: {data['within_2s']:.1%} "
            f"(95 % CI {low:.1%}-{high:.1%})"
        )
        if data.get("rto_at_publish_ms", {}).get("n"):
            r = data["rto_at_publish_ms"]
            t, v = data["srtt_at_publish_ms"], data["rttvar_at_publish_ms"]
            out.append(
                f"  {'':<22} at publish: RTO p50 {r['p50']:.0f} p95 {r['p95']:.0f}, "
                f"srtt p50 {t['p50']:.0f}, rttvar p50 {v['p50']:.0f} ms"
            )
    blackouts = [(k, v) for k, v in results.items() if k.startswith("blackout ")]
    if blackouts:
        out.append(
            f"blackouts: the link dark (netem loss 100 %), then back at {BLACKOUT_LINK}; how long "
            "after it is back the message arrives; floor: the 200 ms one way"
        )
    for name, data in blackouts:
        s = data["after_link_back_ms"]
        if not s["n"]:
            out.append(f"  {name:<36} nothing arrived")
            continue
        out.append(
            f"  {name:<36} n={s['n']:>4}  p50 {s['p50']:>7.0f}  p95 {s['p95']:>7.0f}  "
            f"max {s['max']:>7.0f} ms  missing {data['missing']}"
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", action="append", default=[], help="only this probe")
    parser.add_argument(
        "--blackouts",
        type=lambda text: [float(x) for x in text.split(",") if x],
        default=[2.0, 5.0],
        help="s the link goes dark, comma-separated ('' for none)",
    )
    parser.add_argument("--blackout-rounds", type=int, default=4)
    parser.add_argument("--blackout-clients", type=int, default=10)
    args = parser.parse_args()
    if not in_uml():
        print("bench.links_kernel runs inside the UML kernel: make bench-kernel", file=sys.stderr)
        return 2
    results = asyncio.run(
        run(
            args.calls,
            args.samples,
            args.clients,
            args.seed,
            only=args.only,
            blackouts=args.blackouts,
            blackout_rounds=args.blackout_rounds,
            blackout_clients=args.blackout_clients,
        )
    )
    print("\n".join(rows(results)))
    if args.out:
        write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
