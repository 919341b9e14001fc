#!/usr/bin/env python3
"""Smoke test of the HIL machine: real SocketCAN on vcan0, can-utils, mosquitto, ptys.

Run it where vcan0 exists, normally through hil/smoke.sh, i.e.
    hil/run-in-uml.sh .venv/bin/python hil/smoke.py
Needs python-can (the project's .venv has it). Each check prints PASS/FAIL/
SKIP with details; the last line reads "smoke: N passed, N failed" and the
exit status is 0 only if nothing failed. A missing tool (can-utils,
mosquitto) is a FAIL with a clear message, since the integration suite needs
them.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import tty
from collections.abc import Callable

try:
    import can
except ImportError:  # reported by the checks
    can = None
try:
    import paho.mqtt.client as mqtt
except ImportError:  # the mosquitto check then only tests the listener
    mqtt = None

CHANNEL = os.environ.get("HIL_CAN_CHANNEL", "vcan0")
MOSQUITTO = os.environ.get("HIL_MOSQUITTO", "/usr/sbin/mosquitto")

results: list[tuple[str, str, str]] = []


def check(name: str) -> Callable[[Callable[[], str | None]], Callable[[], str | None]]:
    def wrap(fn: Callable[[], str | None]) -> Callable[[], str | None]:
        t0 = time.monotonic()
        try:
            detail = fn() or ""
            verdict = "PASS"
        except Skip as exc:
            verdict, detail = "SKIP", str(exc)
        except Exception as exc:  # report every failure
            verdict, detail = "FAIL", f"{type(exc).__name__}: {exc}"
            if os.environ.get("HIL_VERBOSE") == "1":
                traceback.print_exc()
        dt = time.monotonic() - t0
        results.append((verdict, name, detail))
        print(f"{verdict}  {name} ({dt:.2f}s){': ' + detail if detail else ''}", flush=True)
        return fn

    return wrap


class Skip(Exception):
    pass


def bus(**kw):  # type: ignore[no-untyped-def]
    if can is None:
        raise AssertionError("python-can is not installed (use the project's .venv)")
    return can.Bus(interface="socketcan", channel=CHANNEL, **kw)


def recv_id(b, arb_id: int, timeout: float):  # type: ignore[no-untyped-def]
    """Next frame with arb_id within timeout, or None (other IDs are skipped)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        msg = b.recv(timeout=left)
        if msg is not None and msg.arbitration_id == arb_id:
            return msg
    return None


print(
    f"HIL smoke: kernel {platform.release()}, python {platform.python_version()},"
    f" channel {CHANNEL}",
    flush=True,
)


@check(f"{CHANNEL} exists and is up")
def _link() -> str:
    with open(f"/sys/class/net/{CHANNEL}/operstate") as fh:
        state = fh.read().strip()
    with open(f"/sys/class/net/{CHANNEL}/flags") as fh:
        flags = int(fh.read().strip(), 16)
    if not flags & 0x1:  # IFF_UP
        raise AssertionError(f"{CHANNEL} is down (operstate {state})")
    return f"operstate {state}"


@check("python-can: frame sent on bus A arrives on bus B")
def _roundtrip() -> str:
    with bus() as a, bus() as b:
        sent = can.Message(
            arbitration_id=0x123, data=bytes([0xDE, 0xAD, 0xBE, 0xEF]), is_extended_id=False
        )
        a.send(sent)
        got = recv_id(b, 0x123, 2.0)
        if got is None:
            raise AssertionError("nothing received on bus B within 2 s")
        if bytes(got.data) != bytes(sent.data) or got.dlc != 4:
            raise AssertionError(f"received {got} instead of {sent}")
        # is_rx of frames from another local socket is not meaningful on vcan: not checked.
        return (
            f"got {got.arbitration_id:#x} [{bytes(got.data).hex()}] (python-can {can.__version__})"
        )


@check("python-can: kernel filter (can_filters) drops other IDs")
def _filter() -> str:
    with (
        bus() as a,
        bus(can_filters=[{"can_id": 0x200, "can_mask": 0x7FF, "extended": False}]) as c,
    ):
        a.send(
            can.Message(arbitration_id=0x100, data=b"\x01", is_extended_id=False)
        )  # filtered out
        a.send(can.Message(arbitration_id=0x200, data=b"\x02", is_extended_id=False))  # passes
        first = c.recv(timeout=2.0)
        if first is None:
            raise AssertionError("filtered bus received nothing, not even the matching 0x200")
        if first.arbitration_id != 0x200:
            raise AssertionError(
                f"filtered bus received {first.arbitration_id:#x}, expected only 0x200"
            )
        extra = c.recv(timeout=0.3)
        if extra is not None:
            raise AssertionError(f"filtered bus also received {extra.arbitration_id:#x}")
        if c.filters != [{"can_id": 0x200, "can_mask": 0x7FF, "extended": False}]:
            raise AssertionError(f"unexpected filters {c.filters}")
        return "0x100 not delivered, 0x200 delivered"


@check("can-utils: cansend -> candump, and cansend -> python-can")
def _canutils() -> str:
    missing = [t for t in ("cansend", "candump") if shutil.which(t) is None]
    if missing:
        raise AssertionError(
            f"{', '.join(missing)} not found: can-utils is not installed"
            " (apt-get install can-utils)"
        )
    with bus() as b:
        dump = subprocess.Popen(
            ["candump", "-n", "1", "-T", "3000", f"{CHANNEL},321:7FF"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(0.3)  # let candump bind before we send
        subprocess.run(["cansend", CHANNEL, "321#CAFE01"], check=True, timeout=5)
        out, _ = dump.communicate(timeout=10)
        if dump.returncode != 0 or "321" not in out or "CA FE 01" not in out.upper():
            raise AssertionError(f"candump (exit {dump.returncode}) printed {out!r}")
        got = recv_id(b, 0x321, 2.0)
        if got is None or bytes(got.data) != b"\xca\xfe\x01":
            raise AssertionError(f"python-can got {got} for cansend's frame")
    return f"candump: {out.strip()}"


@check("mosquitto listens on 127.0.0.1 (publish/subscribe round trip)")
def _mosquitto() -> str:
    if not os.access(MOSQUITTO, os.X_OK):
        raise AssertionError(
            f"{MOSQUITTO} not found: mosquitto is not installed (apt-get install mosquitto)"
        )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(
        prefix="hil-mosq-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    ) as d:
        os.chmod(d, 0o755)  # mosquitto started as root drops to user mosquitto
        conf = os.path.join(d, "mosquitto.conf")
        with open(conf, "w") as fh:
            fh.write(
                f"listener {port} 127.0.0.1\n"
                "allow_anonymous true\npersistence false\nlog_dest stderr\n"
            )
        proc = subprocess.Popen(
            [MOSQUITTO, "-c", conf], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError as exc:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log = proc.stdout.read() if proc.poll() is not None else ""
                        raise AssertionError(
                            f"mosquitto not listening (exit {proc.poll()}): {log}"
                        ) from exc
                    time.sleep(0.05)
            if mqtt is None:
                return f"listening on 127.0.0.1:{port} (paho-mqtt missing: no round trip)"
            got: queue.Queue[bytes] = queue.Queue()
            subscribed = threading.Event()
            sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="hil-smoke-sub")
            sub.on_message = lambda _c, _u, m: got.put(m.payload)
            sub.on_subscribe = lambda *_a: subscribed.set()
            pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="hil-smoke-pub")
            try:
                sub.connect("127.0.0.1", port, keepalive=10)
                sub.subscribe("hil/smoke", qos=1)
                sub.loop_start()
                if not subscribed.wait(5):
                    raise AssertionError("no SUBACK within 5 s")
                pub.connect("127.0.0.1", port, keepalive=10)
                pub.loop_start()
                pub.publish("hil/smoke", b"ping", qos=1).wait_for_publish(5)
                payload = got.get(timeout=5)
            finally:
                for c in (pub, sub):
                    c.disconnect()
                    c.loop_stop()
            if payload != b"ping":
                raise AssertionError(f"subscriber got {payload!r}")
            return f"127.0.0.1:{port}, paho-mqtt publish/subscribe round trip ok"
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()


@check("pty: os.openpty() works both ways")
def _pty() -> str:
    master, slave = os.openpty()
    try:
        name = os.ttyname(slave)
        tty.setraw(slave)  # no echo, no newline translation
        os.write(master, b"hello\n")
        line = os.read(slave, 100)
        os.write(slave, b"back\n")
        back = os.read(master, 100)
        if line != b"hello\n" or back != b"back\n":
            raise AssertionError(f"read {line!r} / {back!r}")
        return name
    finally:
        os.close(master)
        os.close(slave)


@check("multiprocessing semaphore (/dev/shm)")
def _shm() -> str:
    lock = multiprocessing.Lock()
    with lock:
        pass
    return "ok"


passed = sum(1 for v, _, _ in results if v == "PASS")
failed = sum(1 for v, _, _ in results if v == "FAIL")
skipped = sum(1 for v, _, _ in results if v == "SKIP")
print(
    f"smoke: {passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""),
    flush=True,
)
sys.exit(1 if failed else 0)
