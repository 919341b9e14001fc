"""``hw-sim``: run the simulated car, LED observer, gpsd, backend or broker on real ports.

So that a laptop with vcan0 can drive a separately running agent:

    hw-sim broker --port 1883 &
    hw-sim gpsd --port 2947 &
    hw-sim backend --port 1883 &
    hw-sim car --channel vcan0            # then type: hold 2200
    hw-sim replay trace.log --speed 2     # a recorded trace (candump .log, .asc, .blf)

``hw-sim demo`` runs all of them and the real agent in one process (``make demo``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path

from hw_sim.matrix import ButtonState

LINK_HELP = """commands on standard input: pass | delay MS [JITTER_MS] | loss FRACTION |
  freeze | cut | status (see hw_sim/link.py)
"""

COMMANDS_HELP = """commands on standard input (one a line):
  hold MS                 press CONNECT for MS milliseconds
  press | release | fault the button state until changed
  silent on|off           stop/resume the button module's frames
  category NAME|none      the driver's choice (breakdown, puncture, ..., other)
  battery VOLTS           12 V battery voltage ('na' for not available)
  tyre fl|fr|rl|rr KPA    one tyre's pressure
  airbag on|off, crash 0-2, alarm on|off, tamper on|off, thermal on|off
  doors locked|unlocked, key on|off, ignition off|acc|on, trailer on|off
  quit
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hw-sim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--verbose", "-v", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def bus_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--interface", default="socketcan", help="python-can interface")
        p.add_argument("--channel", default="vcan0")

    def replay_bus_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--interface", choices=("socketcan", "virtual"), default="socketcan")
        p.add_argument("--channel", default="vcan0")

    def verbose_arg(p: argparse.ArgumentParser) -> None:
        # SUPPRESS: without it the subcommand's default would hide `hw-sim -v replay`
        p.add_argument(
            "--verbose", "-v", action="store_true", default=argparse.SUPPRESS, help="progress"
        )

    car = sub.add_parser(
        "car",
        help="the simulated car's ECUs on a CAN bus",
        epilog=COMMANDS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bus_args(car)
    car.add_argument("--hold", type=float, metavar="MS", help="hold CONNECT once, MS ms")
    car.add_argument(
        "--after", type=float, default=1.0, metavar="S", help="seconds before --hold (default 1)"
    )
    car.add_argument("--exit", action="store_true", help="exit 2 s after --hold")
    led = sub.add_parser("led", help="print the agent's LED modes as the roof module sees them")
    bus_args(led)
    gpsd = sub.add_parser("gpsd", help="a fake gpsd replaying a route")
    gpsd.add_argument("--host", default="127.0.0.1")
    gpsd.add_argument("--port", type=int, default=2947)
    backend = sub.add_parser("backend", help="the simulated assistance backend")
    backend.add_argument("--host", default="127.0.0.1")
    backend.add_argument("--port", type=int, default=1883)
    backend.add_argument("--root", default="assistance/v1")
    backend.add_argument("--protocol", choices=("5", "3.1.1"), default="5")
    backend.add_argument(
        "--ack",
        default="received",
        choices=("received", "assigned", "none"),
        help="the automatic answer to each request",
    )
    console = sub.add_parser(
        "console", help="the simulated car and the operator's console in a browser"
    )
    console.add_argument("--host", default="127.0.0.1", help="address of the page (loopback)")
    console.add_argument("--port", type=int, default=8080)
    console.add_argument("--broker-host", default="127.0.0.1")
    console.add_argument("--broker-port", type=int, default=1883)
    console.add_argument("--root", default="assistance/v1")
    console.add_argument("--protocol", choices=("5", "3.1.1"), default="5")
    console.add_argument("--interface", default="socketcan", help="python-can interface")
    console.add_argument("--channel", help="CAN channel of the car panel (none: operator only)")
    console.add_argument(
        "--gpsd-port", type=int, help="also serve a fake gpsd, steered from the page"
    )
    console.add_argument("--hold-ms", type=int, default=2000)
    serial = sub.add_parser(
        "serial-button", help="the UART roof module on a pseudo-terminal (stdin: hold MS)"
    )
    serial.add_argument("--link", help="also make this symlink to the pty, e.g. /tmp/ttyCONNECT")
    ecu = sub.add_parser("ecu", help="the gateway ECU answering UDS (VIN, DTCs)")
    bus_args(ecu)
    ecu.add_argument("--vin", default=None, help="the VIN it reports")
    broker = sub.add_parser("broker", help="the embedded MQTT broker (3.1.1 and 5)")
    broker.add_argument("--host", default="127.0.0.1")
    broker.add_argument("--port", type=int, default=1883)
    demo = sub.add_parser(
        "demo", help="the whole loop in one process: simulated car, gpsd, broker and backend"
    )
    demo.add_argument(
        "--embedded-broker",
        action="store_true",
        help="use the embedded MQTT broker even when Mosquitto is installed",
    )
    demo.add_argument("--protocol", choices=("5", "3.1.1"), default="5")
    demo.add_argument(
        # SUPPRESS: without it the subcommand's default would hide `hw-sim -v demo`
        "--verbose",
        "-v",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the agent's log",
    )
    demo.add_argument(
        "--web", action="store_true", help="drive the car and answer as the operator in a browser"
    )
    demo.add_argument("--web-port", type=int, default=8080)
    replay = sub.add_parser(
        "replay",
        help="play a recorded trace (candump .log, .asc, .blf) onto a bus",
        description="Plays FILE with the recorded timing (python-can's LogReader and "
        "MessageSync). CONNECT_BUTTON and CONNECT_LED get a fresh alive counter and CRC "
        "(SPEC §2), so an old or looped trace stays valid. Reports what it did at the end "
        "(and every second with -v).",
    )
    replay.add_argument("file", type=Path, metavar="FILE")
    replay_bus_args(replay)
    replay.add_argument(
        "--speed", type=_positive, default=1.0, metavar="X", help="X times as fast (default 1)"
    )
    replay.add_argument("--loop", action="store_true", help="start again at the end (Ctrl-C)")
    replay.add_argument(
        "--as-recorded",
        action="store_true",
        help="send the E2E frames' counter and CRC as recorded (no re-protection)",
    )
    replay.add_argument(
        "--skip-id",
        type=_frame_id,
        action="append",
        default=[],
        metavar="ID",
        help="do not send this ID (hex, e.g. 3A2: the agent's own LED frames); repeatable",
    )
    verbose_arg(replay)
    record = sub.add_parser(
        "record",
        help="record a bus into a trace file (.log candump, .asc, .blf)",
        description="Writes what the bus carries into FILE with python-can's Logger. "
        "--scene also runs the simulated car on the bus and records its puncture scene "
        "(how hw_sim/data/traces/simulated-car.log was made).",
    )
    record.add_argument("file", type=Path, metavar="FILE")
    replay_bus_args(record)
    record.add_argument("--seconds", type=_positive, metavar="S", help="stop after S s")
    record.add_argument(
        "--scene", action="store_true", help="drive the simulated car's puncture scene, then stop"
    )
    link = sub.add_parser(
        "link",
        help="a TCP link simulator (delay, loss, freeze, cut) in front of a broker",
        epilog=LINK_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    link.add_argument("--listen", type=int, required=True, metavar="PORT")
    link.add_argument("--to", required=True, metavar="HOST:PORT")
    link.add_argument("--mode", default="pass", help="first stdin command, e.g. 'delay 200 20'")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    runner = {
        "car": _car,
        "led": _led,
        "gpsd": _gpsd,
        "backend": _backend,
        "broker": _broker,
        "console": _console,
        "serial-button": _serial_button,
        "ecu": _ecu,
        "link": _link,
        "demo": _demo,
        "replay": _replay,
        "record": _record,
    }[args.command]
    try:
        status = asyncio.run(runner(args))
    except KeyboardInterrupt:
        return 0
    except Exception as exc:  # a simulator tool: report, don't dump a trace at the user
        print(f"hw-sim {args.command}: {exc}", file=sys.stderr)
        return 1
    return status or 0


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def _frame_id(text: str) -> int:
    try:
        return int(text, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a hex CAN ID: {text!r}") from None


def _out(text: str) -> None:
    print(text, flush=True)


def apply_command(car: object, line: str) -> str | None:
    """Apply one stdin command to the car; returns an error text or None."""
    from hw_sim.car import SimulatedCar  # noqa: PLC0415

    assert isinstance(car, SimulatedCar)
    words = line.split()
    if not words:
        return None
    cmd, rest = words[0].lower(), words[1:]
    flag = {"on": True, "off": False, "locked": True, "unlocked": False}
    try:
        if cmd in ("press", "release", "fault"):
            state = {
                "press": ButtonState.PRESSED,
                "release": ButtonState.RELEASED,
                "fault": ButtonState.FAULT,
            }[cmd]
            car.set_button(state)
        elif cmd == "silent":
            car.button_silent = flag[rest[0]]
        elif cmd == "category":
            car.set_category(None if rest[0] == "none" else rest[0])
        elif cmd == "battery":
            car.set_status(battery_12v_v=None if rest[0] == "na" else float(rest[0]))
        elif cmd == "tyre":
            car.set_tyres(**{rest[0]: None if rest[1] == "na" else int(rest[1])})
        elif cmd == "airbag":
            car.set_safety(airbag_deployed=flag[rest[0]])
        elif cmd == "crash":
            car.set_safety(crash_severity=int(rest[0]))
        elif cmd == "alarm":
            car.set_safety(alarm_triggered=flag[rest[0]])
        elif cmd == "tamper":
            car.set_safety(tamper_detected=flag[rest[0]])
        elif cmd == "thermal":
            car.set_safety(hv_thermal_event=flag[rest[0]])
        elif cmd == "doors":
            car.set_status(doors_locked=flag[rest[0]])
        elif cmd == "key":
            car.set_status(key_detected=flag[rest[0]])
        elif cmd == "ignition":
            car.set_status(ignition=rest[0])
        elif cmd == "trailer":
            car.set_status(trailer_connected=flag[rest[0]])
        else:
            return f"unknown command {cmd!r}"
    except (IndexError, KeyError, ValueError) as exc:
        return f"bad arguments for {cmd!r}: {exc}"
    return None


async def _car(args: argparse.Namespace) -> None:
    from hw_sim.car import SimulatedCar, open_sim_bus  # noqa: PLC0415

    bus = open_sim_bus(args.interface, args.channel)
    try:
        async with SimulatedCar(bus) as car:
            _out(f"car on {args.interface}:{args.channel}; type 'help' for commands")
            if args.hold is not None:
                await asyncio.sleep(args.after)
                _out(f"holding CONNECT for {args.hold:.0f} ms")
                await car.hold(args.hold)
                if args.exit:
                    await asyncio.sleep(2.0)
                    return
            reader = asyncio.StreamReader()
            loop = asyncio.get_running_loop()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            while line := (await reader.readline()).decode(errors="replace"):
                text = line.strip()
                if text in ("quit", "exit"):
                    return
                if text == "help":
                    _out(COMMANDS_HELP)
                elif text.startswith("hold"):
                    try:
                        ms = float(text.split()[1])
                    except (IndexError, ValueError):
                        _out("usage: hold MS")
                        continue
                    await car.hold(ms)
                    _out(f"held {ms:.0f} ms")
                elif error := apply_command(car, text):
                    _out(error)
            # stdin closed (e.g. started in the background): keep the car running
            await asyncio.Event().wait()
    finally:
        bus.shutdown()


async def _led(args: argparse.Namespace) -> None:
    from hw_sim.car import LedObserver, open_sim_bus  # noqa: PLC0415

    bus = open_sim_bus(args.interface, args.channel)
    observer = LedObserver(bus)
    await observer.start()
    try:
        seen = 0
        while True:
            await observer.next_change()
            for _, mode in observer.modes[seen:]:
                _out(
                    f"LED {mode.name.lower()}  (frames {observer.frames}, "
                    f"bad {observer.bad_frames})"
                )
            seen = len(observer.modes)
    finally:
        await observer.aclose()
        bus.shutdown()


async def _gpsd(args: argparse.Namespace) -> None:
    from hw_sim.gpsd import FakeGpsd  # noqa: PLC0415

    async with FakeGpsd(host=args.host, port=args.port) as gpsd:
        _out(f"fake gpsd on {args.host}:{gpsd.port}")
        await asyncio.Event().wait()


async def _backend(args: argparse.Namespace) -> None:
    from hw_sim.backend import SimulatedBackend  # noqa: PLC0415

    auto = None if args.ack == "none" else args.ack
    async with SimulatedBackend(
        args.host, args.port, root=args.root, protocol=args.protocol, auto_ack=auto
    ) as backend:
        _out(f"backend on {args.host}:{args.port}, root {args.root!r}, auto-ack {args.ack}")
        seen = 0
        while True:
            await backend.next_change()
            for item in backend.received[seen:]:
                _out(
                    f"{item.kind} from {item.vin}: " + json.dumps(item.payload, ensure_ascii=False)
                )
            seen = len(backend.received)


async def _broker(args: argparse.Namespace) -> None:
    from hw_sim.broker import EmbeddedBroker  # noqa: PLC0415

    async with EmbeddedBroker(host=args.host, port=args.port) as broker:
        _out(f"embedded MQTT broker on {args.host}:{broker.port}")
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()


async def _console(args: argparse.Namespace) -> None:
    from hw_sim.console import run_console  # noqa: PLC0415 - aiohttp only when asked for

    await run_console(
        args.host,
        args.port,
        args.broker_host,
        args.broker_port,
        root=args.root,
        protocol=args.protocol,
        interface=args.interface,
        channel=args.channel,
        gpsd_port=args.gpsd_port,
        hold_ms=args.hold_ms,
    )


async def _serial_button(args: argparse.Namespace) -> None:
    from hw_sim.serial_button import run_serial_button  # noqa: PLC0415

    await run_serial_button(args.link)


async def _ecu(args: argparse.Namespace) -> None:
    from hw_sim.ecu import DEFAULT_VIN, run_ecu  # noqa: PLC0415

    await run_ecu(args.interface, args.channel, vin=args.vin or DEFAULT_VIN)


async def _demo(args: argparse.Namespace) -> int:
    if args.web:
        from hw_sim.console import run_web_demo  # noqa: PLC0415 - aiohttp only when asked for

        await run_web_demo(
            args.web_port,
            embedded_broker=args.embedded_broker,
            protocol=args.protocol,
            verbose=args.verbose,
        )
        return 0
    from hw_sim.demo import run_demo  # noqa: PLC0415

    return await run_demo(
        embedded_broker=args.embedded_broker, protocol=args.protocol, verbose=args.verbose
    )


async def _link(args: argparse.Namespace) -> None:
    from hw_sim.link import Link, parse_command  # noqa: PLC0415

    host, _, port = args.to.rpartition(":")
    async with Link(int(port), upstream_host=host or "127.0.0.1", port=args.listen) as link:
        _out(f"link on 127.0.0.1:{link.port} -> {host}:{port}")
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        line = args.mode
        while True:
            command = parse_command(line, link.mode)
            if command == "freeze":
                _out(f"froze {link.freeze()} connection(s)")
            elif command == "cut":
                _out(f"reset {link.cut()} connection(s)")
            elif command == "status":
                _out(f"{len(link.connections)} open, {link.accepted} accepted, {link.counters}")
            elif command is not None and not isinstance(command, str):
                link.set_mode(command)
                _out(f"mode {command}")
            elif line.strip():
                _out(f"unknown command {line.strip()!r}")
            raw = await reader.readline()
            if not raw:  # stdin closed (started in the background): keep forwarding
                await asyncio.Event().wait()
            line = raw.decode(errors="replace")


async def _replay(args: argparse.Namespace) -> int:
    from hw_sim.car import open_sim_bus  # noqa: PLC0415
    from hw_sim.replay import ReplayReport, replay_async  # noqa: PLC0415

    if not args.file.is_file():
        raise FileNotFoundError(f"no trace {args.file}")
    bus = open_sim_bus(args.interface, args.channel)
    report = ReplayReport(path=args.file, speed=args.speed)
    # SIGINT and SIGTERM stop the replay and still print the report (--loop ends that way)
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    try:
        _out(f"replaying {args.file} on {args.interface}:{args.channel} at speed {args.speed:g}")
        await replay_async(
            bus,
            args.file,
            speed=args.speed,
            loop=args.loop,
            reprotect=not args.as_recorded,
            skip_ids=args.skip_id,
            report=report,
        )
    except asyncio.CancelledError:
        _out("replay stopped")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        for line in report.lines():
            _out(line)
        bus.shutdown()
    return 0 if report.frames else 1


async def _record(args: argparse.Namespace) -> None:
    from hw_sim.car import open_sim_bus  # noqa: PLC0415
    from hw_sim.recording import record  # noqa: PLC0415

    recorder = open_sim_bus(args.interface, args.channel)
    scene_bus = open_sim_bus(args.interface, args.channel) if args.scene else None
    try:
        _out(f"recording {args.interface}:{args.channel} into {args.file}")
        await record(args.file, recorder, seconds=args.seconds, scene_bus=scene_bus)
    finally:
        for bus in (recorder, scene_bus):
            if bus is not None:
                bus.shutdown()
        _out(f"recorded into {args.file}")
