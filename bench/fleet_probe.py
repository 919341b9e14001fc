"""Which moved sessions lose their acks after a NATS node kill, and does a revive help?

    python -m bench.fleet_probe [--cars 300] [--kills 1] [--revive ""|resubscribe|clean]

Every car calls once before the kills and once after each (with its node restarted); the
acks at the cars are counted within ``--wait`` s (repeats and revives after ``--ack-timeout``).
For the cars without an ack, the NATS subscriptions and ``$MQTT_msgs`` consumers behind their
``ack`` filter are dumped from every node's monitoring port, to ``--dump``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
import urllib.request
from typing import Any

from bench.fleet import raise_fd_limit, until
from hw_sim.backend import SimulatedBackend
from hw_sim.fleet import Fleet, FleetCar
from hw_sim.fleet_wire import fleet_vin
from hw_sim.nats_cluster import NatsCluster

KINDS = ("subscribe", "resubscribe", "clean")


def monitor(cluster: NatsCluster, index: int, path: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{cluster.nodes[index].http_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            result: dict[str, Any] = json.loads(answer.read())
            return result
    except (OSError, ValueError) as exc:
        return {"error": str(exc)}


def snapshot(cluster: NatsCluster, vins: list[str]) -> dict[str, Any]:
    """Per VIN: each node's connection with its subscriptions, and the ack consumers."""
    out: dict[str, Any] = {vin: {} for vin in vins}
    for index, node in enumerate(cluster.nodes):
        if not node.running:
            continue
        connz = monitor(cluster, index, "/connz?subs=detail&limit=100000")
        jsz = monitor(cluster, index, "/jsz?consumers=1&config=1&accounts=1&limit=100000")
        for conn in connz.get("connections", []):
            client = conn.get("mqtt_client", "")
            for vin in vins:
                if client == f"connect-agent-{vin}":
                    out[vin][f"{node.name} conn"] = {
                        "cid": conn.get("cid"),
                        "subs": conn.get("subscriptions_list_detail"),
                        "in_msgs": conn.get("in_msgs"),
                        "out_msgs": conn.get("out_msgs"),
                    }
        for account in jsz.get("account_details", []):
            for stream in account.get("stream_detail", []):
                for consumer in stream.get("consumer_detail", []) or []:
                    config = consumer.get("config", {})
                    subject = config.get("filter_subject", "")
                    for vin in vins:
                        if f".{vin}." in subject:
                            out[vin].setdefault(f"{node.name} consumers", []).append(
                                {
                                    "stream": stream.get("name"),
                                    "name": consumer.get("name"),
                                    "deliver_subject": config.get("deliver_subject"),
                                    "filter": subject,
                                    "delivered": consumer.get("delivered"),
                                    "ack_floor": consumer.get("ack_floor"),
                                    "num_pending": consumer.get("num_pending"),
                                    "num_ack_pending": consumer.get("num_ack_pending"),
                                    "push_bound": consumer.get("push_bound"),
                                    "cluster": consumer.get("cluster"),
                                }
                            )
    return out


async def calls_round(cars: list[FleetCar], wait: float) -> tuple[list[FleetCar], float]:
    incidents = {car: car.call() for car in cars}
    started = time.monotonic()

    def missing() -> list[FleetCar]:
        return [
            car
            for car, incident in incidents.items()
            if all(str(a.get("incident_id")) != incident for a in car.acks)
        ]

    with contextlib.suppress(TimeoutError):
        await until(lambda: not missing(), wait, "every ack")
    return missing(), time.monotonic() - started


def describe(
    cluster: NatsCluster, cars: list[FleetCar], lost: list[FleetCar], path: str, kill: int
) -> None:
    print(
        f"  SUBACK failures (0x80): lost cars {sum(c.suback_failures for c in lost)}, "
        f"all cars {sum(c.suback_failures for c in cars)} "
        f"({sum(c.suback_failures > 0 for c in cars)} cars)"
    )
    if not lost:
        return
    for car in lost[:5]:
        print(
            f"  {car.vin}: node {car.broker[1]} connects {car.connects} "
            f"subacks {car.subacks} failed {car.suback_failures} acks {len(car.acks)}"
        )
    good = [c.vin for c in cars if c not in lost][:1]
    vins = [c.vin for c in lost[:5]] + good
    with open(path, "a") as dump:
        json.dump(
            {
                "kill": kill,
                "good": good,
                "snapshot": snapshot(cluster, vins),
                "ports": [n.mqtt_port for n in cluster.nodes],
            },
            dump,
            indent=1,
        )
        dump.write("\n")


async def main_async(args: argparse.Namespace) -> int:
    raise_fd_limit(4 * args.cars + 1024)
    rng = random.Random(args.seed)
    async with NatsCluster() as cluster:
        nodes = [(cluster.host, node.mqtt_port) for node in cluster.nodes]
        async with SimulatedBackend(
            cluster.host, nodes[2][1], protocol="3.1.1", client_id="fleet-backend-nats"
        ) as backend:
            pair = [nodes[0], nodes[1]]
            cars = [
                FleetCar(
                    fleet_vin(i),
                    pair[i % 2 :] + pair[: i % 2],
                    ack_timeout=args.ack_timeout,
                    revive=args.revive,
                    suback_retry=args.suback_retry,
                    suback_retry_s=(args.retry_min, args.retry_max),
                    rng=random.Random(rng.random()),
                )
                for i in range(args.cars)
            ]
            async with Fleet(cars) as fleet:
                await fleet.wait_connected(300)
                await until(lambda: len(backend.status) >= len(cars), 300, "every status")
                lost, took = await calls_round(cars, args.wait)
                print(f"before kills: {len(cars) - len(lost)}/{len(cars)} acks in {took:.1f} s")
                describe(cluster, cars, lost, args.dump, 0)
                total_lost = len(lost)  # of the last round
                if lost and args.try_revives:
                    for number, car in enumerate(lost):
                        car.revive = KINDS[number % len(KINDS)]
                        car.revive_delivery()
                    await asyncio.sleep(5)
                    again, took = await calls_round(lost, args.wait)
                    total_lost = len(again)
                    for kind in KINDS:
                        tried = [c for c in lost if c.revive == kind]
                        print(
                            f"  revive {kind}: {len(tried) - len(set(again) & set(tried))}"
                            f"/{len(tried)} acked after it"
                        )
                    describe(cluster, cars, again, args.dump, -1)
                    for kind in KINDS:
                        vins = [c.vin for c in lost if c.revive == kind][:3]
                        shot = snapshot(cluster, vins)
                        counts = {
                            vin: {k: len(v) for k, v in d.items() if "consumers" in k}
                            for vin, d in shot.items()
                        }
                        print(f"  {kind}: $MQTT_msgs consumers per node after it: {counts}")
                    for car in cars:
                        car.revive = args.revive
                for kill in range(args.kills):
                    victim = kill % 2
                    port = cluster.nodes[victim].mqtt_port
                    moved = [c for c in cars if c.broker[1] == port]
                    connects = {c: c.connects for c in moved}
                    await cluster.kill(victim)
                    started = time.monotonic()
                    with contextlib.suppress(TimeoutError):
                        await until(
                            lambda: all(c.connects > connects[c] for c in moved),  # noqa: B023
                            120,
                            "the moved cars back",
                        )
                    back = time.monotonic() - started
                    await cluster.start_node(victim, timeout=120)
                    print(f"kill {kill + 1}: {len(moved)} moved, back in {back:.1f} s")
                    lost, took = await calls_round(cars, args.wait)
                    moved_lost = [c for c in lost if c in connects]
                    total_lost = len(lost)
                    print(
                        f"after kill {kill + 1}: {len(cars) - len(lost)}/{len(cars)} acks in "
                        f"{took:.1f} s; without: {len(lost)} ({len(moved_lost)} moved); "
                        f"repeats {sum(c.repeats for c in cars)}, "
                        f"revives {sum(c.revives for c in cars)}",
                        flush=True,
                    )
                    describe(cluster, cars, lost, args.dump, kill + 1)
                jsz = monitor(cluster, 2, "/jsz?streams=1&accounts=1")
                for account in jsz.get("account_details", []):
                    for stream in account.get("stream_detail", []):
                        print(
                            f"n3: stream {stream.get('name')}: "
                            f"{stream.get('state', {}).get('consumer_count')} consumers "
                            f"for {len(cars)} cars"
                        )
                for node in cluster.nodes:
                    log = node.conf.parent / f"{node.name}.log"
                    text = log.read_text(errors="replace") if log.exists() else ""
                    lines = [x for x in text.splitlines() if "JetStream consumer" in x]
                    print(f"{node.name} log: {len(lines)} 'Unable to add JetStream consumer'")
                    if lines:
                        print(f"  e.g. {lines[0][:400]}")
                await fleet.aclose()
    print(f"probe: revive {args.revive or 'none'}, cars without ack at the end: {total_lost}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cars", type=int, default=300)
    parser.add_argument("--kills", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--revive", default="")
    parser.add_argument("--ack-timeout", type=float, default=15.0)
    parser.add_argument("--wait", type=float, default=40.0)
    parser.add_argument("--try-revives", action="store_true")
    parser.add_argument("--no-suback-retry", dest="suback_retry", action="store_false")
    parser.add_argument("--retry-min", type=float, default=1.0)
    parser.add_argument("--retry-max", type=float, default=30.0)
    parser.add_argument("--dump", default="/tmp/fleet_probe.json")
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
