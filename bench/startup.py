"""Start-up: from exec of ``connect-agent run`` to READY, and the resident memory after it.

    python -m bench.startup --out FILE [--runs 5]

Each run execs the installed ``connect-agent`` script (a virtual CAN bus: nothing else on it)
with ``NOTIFY_SOCKET`` pointing at an AF_UNIX datagram socket bound here, against a local
Mosquitto and the fake gpsd, and records when ``READY=1`` arrives there (sd_notify) and when
the raw subscriber sees the agent's first live ``online`` status (the fallback where the agent
sends no READY). VmRSS is read 1 s after that, then the agent gets SIGTERM. The state
directory is kept between runs, as across reboots of a car.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.agent_proc import AgentProcess
from bench.common import Gpsd, Subscriber, machine, rss_kib, wait_started, write_json
from hw_sim.mosquitto import Mosquitto, free_port
from hw_sim.scenario import config_text

SETTLE_S = 1.0


async def one_start(config: Path, sub: Subscriber) -> dict[str, Any]:
    agent = AgentProcess(config, stamped=False)
    await agent.start()
    try:
        started = await wait_started(sub, agent, timeout=30)
        await asyncio.sleep(SETTLE_S)
        rss = rss_kib(agent.pid)
        return {
            **started,
            "rss_kib": rss,
            "notify": [text.replace("\n", " ") for _, text in agent.notify_messages][:5],
        }
    finally:
        await agent.stop()


async def run(runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        directory = Path(tmp)
        gpsd_port = free_port()
        async with (
            Mosquitto(persistence=False) as broker,
            Gpsd(gpsd_port),
            Subscriber(broker.port, directory / "subscriber.jsonl", ack_status=None) as sub,
        ):
            config = directory / "agent.toml"
            config.write_text(
                config_text(directory / "state", broker.port, gpsd_port, channel="bench-startup")
            )
            results = [await one_start(config, sub) for _ in range(runs)]
    ready = [r["ready_s"] for r in results if r["ready_s"] is not None]
    online = [r["online_status_s"] for r in results]
    rss = [r["rss_kib"] for r in results]
    return {
        "machine": machine(),
        "runs": results,
        "sd_notify_ready": len(ready) == len(results),
        "ready_s": {"median": statistics.median(ready), "max": max(ready)} if ready else None,
        "online_status_s": {"median": statistics.median(online), "max": max(online)},
        "rss_kib_after_start": {"median": statistics.median(rss), "max": max(rss)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    write_json(args.out, asyncio.run(run(args.runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
