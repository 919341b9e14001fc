"""Bus load: other traffic at a fixed frame rate, from a thread or a separate process.

The mix (``common.MATRIX_SHARE``): a quarter of the frames are the matrix's cyclic frames
(VEHICLE_STATUS, TYRE_PRESSURE, SAFETY_STATUS with the simulated car's own values, so the
vehicle state does not change), which pass the agent's filter and are decoded; the rest carry
IDs the agent filters out. CONNECT_BUTTON is never sent (its alive counter is the car's).

* :class:`ThreadLoad` sends on a python-can bus from a thread (the ``virtual`` bus exists only
  inside one process).
* ``python -m bench.busgen --channel vcan0 --rate 4000 --frames ID:HEX,...`` sends on a raw
  SocketCAN socket from a process of its own until SIGTERM, then prints
  ``{"sent", "elapsed_s", "rate", "enobufs"}``.

Pacing: every ~0.5 ms it sends what is due since the start (at most a burst of 64), so a
sender that cannot keep up sends flat out and reports the rate it reached.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence

from bench.common import MATRIX_SHARE

Frame = tuple[int, bytes]
TICK_S = 0.0005
MAX_BURST = 64
# IDs no one in the matrix uses (the agent's kernel filter drops them).
OTHER_IDS = (0x0C0, 0x120, 0x1A0, 0x210, 0x2F0, 0x340, 0x3C8, 0x410, 0x5E0, 0x612, 0x6A0)


def frame_mix() -> list[Frame]:
    """The repeating frame sequence: matrix cyclic frames and foreign IDs, interleaved."""
    from agent.core.frames import SAFETY_STATUS, TYRE_PRESSURE, VEHICLE_STATUS  # noqa: PLC0415
    from hw_sim.car import (  # noqa: PLC0415
        HEALTHY_SAFETY,
        HEALTHY_STATUS,
        HEALTHY_TYRES,
        SimulatedCar,
    )

    class _Null:
        def send(self, *args: object) -> None: ...

    matrix = SimulatedCar(_Null()).matrix  # type: ignore[arg-type]
    cyclic = [
        (VEHICLE_STATUS, matrix.encode_vehicle_status(HEALTHY_STATUS)),
        (TYRE_PRESSURE, matrix.encode_tyres(HEALTHY_TYRES)),
        (SAFETY_STATUS, matrix.encode_safety(HEALTHY_SAFETY)),
    ]
    others_per_matrix = round((1 - MATRIX_SHARE) / MATRIX_SHARE)
    frames: list[Frame] = []
    other = 0
    for i in range(len(OTHER_IDS)):  # 11 rounds: every foreign ID appears 3 times
        frames.append(cyclic[i % len(cyclic)])
        for _ in range(others_per_matrix):
            fid = OTHER_IDS[other % len(OTHER_IDS)]
            frames.append((fid, bytes([other & 0xFF, 0x55, 0xAA, 0, 1, 2, 3, 4])))
            other += 1
    return frames


def pace(
    send: Callable[[int], None], n_frames: int, rate: float, stop: threading.Event
) -> tuple[int, float]:
    """Call ``send(i)`` for frame i round-robin at ``rate`` per second until ``stop``.

    Returns (frames sent, seconds elapsed).
    """
    start = time.monotonic()
    sent = 0
    while not stop.is_set():
        due = math.floor((time.monotonic() - start) * rate)
        burst = min(due - sent, MAX_BURST)
        for i in range(burst):
            send((sent + i) % n_frames)
        sent += max(burst, 0)
        if burst < MAX_BURST:
            time.sleep(TICK_S)
    return sent, time.monotonic() - start


class ThreadLoad:
    """Bus load from a thread of this process, on a python-can bus of its own."""

    def __init__(self, bus: object, rate: float, frames: Sequence[Frame] | None = None) -> None:
        import can  # noqa: PLC0415

        self.bus = bus
        self.rate = rate
        self._messages = [
            can.Message(arbitration_id=fid, data=data, is_extended_id=False)
            for fid, data in (frames or frame_mix())
        ]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-busload", daemon=True)
        self.sent = 0
        self.elapsed_s = 0.0
        self.native_id: int | None = None
        self.errors = 0

    def _run(self) -> None:
        self.native_id = threading.get_native_id()
        messages = self._messages

        def send(i: int) -> None:
            try:
                self.bus.send(messages[i])  # type: ignore[attr-defined]
            except Exception:  # a full queue or a closed bus: count, go on
                self.errors += 1

        self.sent, self.elapsed_s = pace(send, len(messages), self.rate, self._stop)

    def start(self) -> ThreadLoad:
        self._thread.start()
        while self.native_id is None:
            time.sleep(0.001)
        return self

    def stop(self) -> dict[str, float | int]:
        self._stop.set()
        self._thread.join()
        return {
            "sent": self.sent,
            "elapsed_s": round(self.elapsed_s, 3),
            "rate": round(self.sent / self.elapsed_s) if self.elapsed_s else 0,
            "errors": self.errors,
        }


def encode_frames(frames: Sequence[Frame]) -> str:
    return ",".join(f"{fid:X}:{data.hex()}" for fid, data in frames)


def decode_frames(text: str) -> list[Frame]:
    out = []
    for item in text.split(","):
        fid, data = item.split(":")
        out.append((int(fid, 16), bytes.fromhex(data)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description="bus load on a SocketCAN interface")
    parser.add_argument("--channel", default="vcan0")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--frames", required=True, help="ID:HEX,... as encode_frames() writes")
    args = parser.parse_args()
    frames = decode_frames(args.frames)

    sock = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
    sock.setsockopt(socket.SOL_CAN_RAW, socket.CAN_RAW_FILTER, b"")  # receive nothing
    sock.bind((args.channel,))
    packed = [struct.pack("=IB3x8s", fid, len(data), data.ljust(8, b"\0")) for fid, data in frames]
    enobufs = 0

    def send(i: int) -> None:
        nonlocal enobufs
        try:
            sock.send(packed[i])
        except OSError:  # ENOBUFS: the interface queue is full; the frame is lost
            enobufs += 1

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("running", flush=True)
    sent, elapsed = pace(send, len(packed), args.rate, stop)
    print(
        json.dumps(
            {
                "sent": sent - enobufs,
                "elapsed_s": round(elapsed, 3),
                "rate": round((sent - enobufs) / elapsed) if elapsed else 0,
                "enobufs": enobufs,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
