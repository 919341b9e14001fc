"""Replay of recorded CAN traces (candump ``.log``, Vector ``.asc``, ``.blf``) onto a bus.

``hw-sim replay FILE`` reads the trace with python-can's :class:`can.LogReader` and paces it
with :class:`can.MessageSync`: the recorded gaps are kept, divided by ``speed``. The
E2E-protected frames (SPEC §2: byte 0 the CRC-8/SAE-J1850 of bytes 1..7, an alive counter in
byte 1 bits 0-3) get a fresh alive counter per ID and a fresh CRC from :mod:`hw_sim.matrix`, so
an old trace, a looped one or one spliced from two recordings stays valid for the receivers;
every other bit is sent as recorded. Error frames in a trace are controller reports, not
frames: they are counted and skipped.

MessageSync sleeps between frames, so the playing runs in a worker thread
(:func:`replay_async`); the thread stops at the next frame once asked to.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import can

from hw_sim.matrix import E2E_FRAMES, MatrixError, SimMatrix

log = logging.getLogger("hw_sim.replay")

#: The example trace: the simulated car for a few seconds, a puncture, CONNECT held 2.2 s.
SIMULATED_CAR_TRACE = Path(__file__).resolve().parent / "data" / "traces" / "simulated-car.log"
PROGRESS_EVERY_S = 1.0  # how often -v reports while playing


@dataclass
class ReplayReport:
    """What a replay did: frames sent per ID, frames re-protected, frames not sent."""

    path: Path
    speed: float = 1.0
    frames: int = 0  # sent
    per_id: Counter[int] = field(default_factory=Counter)
    reprotected: int = 0  # E2E frames sent with a fresh alive counter and CRC
    bad_e2e_in_trace: int = 0  # of those, how many had a wrong CRC as recorded
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> frames not sent
    loops: int = 0  # passes over the file completed
    trace_span_s: float = 0.0  # first to last timestamp of one pass, as recorded
    started: float | None = None  # time.monotonic() of the first frame's pass
    ended: float | None = None

    @property
    def duration_s(self) -> float:
        """Wall time of the replay (so far, while it plays)."""
        if self.started is None:
            return 0.0
        return (self.ended if self.ended is not None else time.monotonic()) - self.started

    def ids_text(self) -> str:
        return ", ".join(f"0x{i:03X}: {n}" for i, n in sorted(self.per_id.items())) or "none"

    def lines(self) -> list[str]:
        ids = self.ids_text()
        skipped = ", ".join(f"{reason} {n}" for reason, n in sorted(self.skipped.items()))
        return [
            f"replayed {self.frames} frames from {self.path.name} in {self.duration_s:.2f} s "
            f"(trace {self.trace_span_s:.2f} s, speed {self.speed:g}, {self.loops} pass(es))",
            f"per id: {ids}",
            f"re-protected (alive counter + CRC): {self.reprotected}"
            + (
                f", {self.bad_e2e_in_trace} had a bad CRC as recorded"
                if self.bad_e2e_in_trace
                else ""
            ),
            f"not sent: {skipped or 'none'}",
        ]


class Reprotector:
    """The sender's side of SPEC §2's E2E for replayed frames: one alive counter an ID."""

    def __init__(self, matrix: SimMatrix | None = None) -> None:
        self.matrix = matrix or SimMatrix()

    def protect(self, message: can.Message) -> tuple[can.Message, bool | None]:
        """The frame to send, and whether its recorded CRC was right (None: not an E2E frame,
        or not one of the matrix's shape, sent as recorded)."""
        frame_id = message.arbitration_id
        if message.is_extended_id or message.is_remote_frame or frame_id not in E2E_FRAMES:
            return message, None
        data = bytes(message.data)
        try:
            fresh = self.matrix.reprotect(frame_id, data)
        except MatrixError:  # a wrong DLC in the trace: a receiver's test case, keep it
            return message, None
        recorded_ok = self.matrix.crc_ok(data)
        replaced = can.Message(
            timestamp=message.timestamp,
            arbitration_id=frame_id,
            is_extended_id=False,
            dlc=len(fresh),
            data=fresh,
        )
        return replaced, recorded_ok


def read_trace(path: Path, speed: float = 1.0) -> Iterator[can.Message]:
    """The trace's frames with their timestamps divided by ``speed`` (MessageSync keeps the
    gaps between timestamps, so this scales the pace)."""
    with can.LogReader(path) as reader:
        for message in reader:
            message.timestamp = message.timestamp / speed
            yield message


def replay(
    bus: can.BusABC,
    path: Path,
    *,
    speed: float = 1.0,
    loop: bool = False,
    reprotect: bool = True,
    skip_ids: Iterable[int] = (),
    stop: threading.Event | None = None,
    report: ReplayReport | None = None,
) -> ReplayReport:
    """Play ``path`` onto ``bus`` (blocking: MessageSync sleeps); once, or until ``stop``.

    ``report`` (a fresh one if not given) is filled in as frames go, so a caller that stops
    the replay still has it.
    """
    if speed <= 0:
        raise ValueError(f"speed must be above 0, not {speed}")
    path = Path(path)
    stop = stop or threading.Event()
    skip = frozenset(skip_ids)
    protector = Reprotector() if reprotect else None
    report = report or ReplayReport(path=path, speed=speed)
    report.started = started = time.monotonic()
    next_progress = started + PROGRESS_EVERY_S
    try:
        while not stop.is_set():
            first: float | None = None
            last = 0.0
            for message in can.MessageSync(read_trace(path, speed), timestamps=True):
                if stop.is_set():
                    break
                first = message.timestamp if first is None else first
                last = message.timestamp
                _play_one(bus, message, report, protector, skip)
                if time.monotonic() >= next_progress:
                    next_progress += PROGRESS_EVERY_S
                    log.info(
                        "playing: %d frames in %.1f s (%s), %d re-protected",
                        report.frames,
                        report.duration_s,
                        report.ids_text(),
                        report.reprotected,
                    )
            else:
                report.loops += 1
            if first is not None:
                report.trace_span_s = (last - first) * speed
            if not loop or first is None:
                break
    finally:
        report.ended = time.monotonic()
    return report


def _play_one(
    bus: can.BusABC,
    message: can.Message,
    report: ReplayReport,
    protector: Reprotector | None,
    skip: frozenset[int],
) -> None:
    if message.is_error_frame:
        report.skipped["error frames"] += 1
        return
    if message.arbitration_id in skip:
        report.skipped["--skip-id"] += 1
        return
    recorded_ok: bool | None = None
    if protector is not None:
        message, recorded_ok = protector.protect(message)
    try:
        bus.send(message)
    except (can.CanError, OSError) as exc:
        if not report.skipped["send failed"]:
            log.warning("could not send 0x%03X: %s", message.arbitration_id, exc)
        report.skipped["send failed"] += 1
        return
    report.frames += 1
    report.per_id[message.arbitration_id] += 1
    if recorded_ok is not None:
        report.reprotected += 1
        report.bad_e2e_in_trace += not recorded_ok


async def replay_async(
    bus: can.BusABC,
    path: Path,
    *,
    speed: float = 1.0,
    loop: bool = False,
    reprotect: bool = True,
    skip_ids: Iterable[int] = (),
    report: ReplayReport | None = None,
) -> ReplayReport:
    """:func:`replay` in a worker thread; cancelling this stops it at the next frame (what
    was played by then is in ``report``, when one is given)."""
    stop = threading.Event()
    report = report or ReplayReport(path=Path(path), speed=speed)

    def play() -> ReplayReport:
        return replay(
            bus,
            path,
            speed=speed,
            loop=loop,
            reprotect=reprotect,
            skip_ids=skip_ids,
            stop=stop,
            report=report,
        )

    try:
        return await asyncio.to_thread(play)
    finally:
        stop.set()
