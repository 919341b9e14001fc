"""The roof module's side of the serial protocol (SPEC §3), written apart from the agent's.

A line is ``$<body>*<HH>\\r\\n``, ``HH`` the XOR of the body's bytes in upper-case hex, at most
82 bytes in all. The module writes ``CNBTN,<P|R|F>,<counter>`` and ``CNCAT,<code>`` and reads
``CNLED,<mode>``; :func:`parse` reads all three, so a test can also hold the agent's writer
against this reader. Nothing here comes from the agent's own line codec: the simulator and
the agent must not share a bug (``tests/test_lines_oracle.py`` holds the two against each
other).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import reduce
from operator import xor
from typing import Final

from hw_sim.matrix import CATEGORIES, ButtonState, LedMode

MAX_LINE: Final = 82  # "$" through "\r\n"
_LETTER: Final = {ButtonState.PRESSED: "P", ButtonState.RELEASED: "R", ButtonState.FAULT: "F"}
_STATE: Final = {letter: state for state, letter in _LETTER.items()}
_CATEGORY: Final = {code: name for name, code in CATEGORIES.items()}
_LINE: Final = re.compile(rb"\$([\x20-\x7e]*)\*([0-9A-F]{2})\r\n")
_FIELD: Final = re.compile(r"[0-9]{1,2}")


def checksum(body: str) -> str:
    """The two hex digits after ``*``: the XOR of every byte of ``body``."""
    return f"{reduce(xor, body.encode('ascii'), 0):02X}"


def line(body: str, *, check: str | None = None) -> bytes:
    """``$<body>*HH\\r\\n``; ``check`` writes other digits instead (a corrupted line)."""
    if "$" in body or "*" in body or not body.isascii() or not body.isprintable():
        raise ValueError(f"not a line body: {body!r}")
    data = f"${body}*{checksum(body) if check is None else check}\r\n".encode("ascii")
    if len(data) > MAX_LINE:
        raise ValueError(f"a line is at most {MAX_LINE} bytes: {body!r}")
    return data


def button_line(state: int, counter: int, *, check: str | None = None) -> bytes:
    """``$CNBTN``: P pressed, R released, F fault (n/a has no letter: a dead module is silent)."""
    letter = _LETTER[ButtonState(state)]
    return line(f"CNBTN,{letter},{counter % 16}", check=check)


def category_line(category: str | None, *, check: str | None = None) -> bytes:
    code = 0 if category is None else CATEGORIES[category]
    return line(f"CNCAT,{code}", check=check)


def led_line(mode: int, *, check: str | None = None) -> bytes:
    """``$CNLED``, as the agent should write it (for tests of the agent's reader)."""
    return line(f"CNLED,{LedMode(mode).value}", check=check)


@dataclass(frozen=True, slots=True)
class Button:
    state: ButtonState
    counter: int


@dataclass(frozen=True, slots=True)
class Category:
    category: str | None


@dataclass(frozen=True, slots=True)
class Led:
    mode: LedMode


@dataclass(frozen=True, slots=True)
class Bad:
    """A line that is dropped: ``too_long``, ``bad_framing``, ``bad_checksum``,
    ``unknown_body`` or ``bad_value``."""

    reason: str


Parsed = Button | Category | Led | Bad


def parse(data: bytes) -> Parsed:
    """One line, ``$`` through ``\\r\\n``, into what it says."""
    if len(data) > MAX_LINE:
        return Bad("too_long")
    match = _LINE.fullmatch(data)
    if match is None:
        # the right shape but for its two check digits is a checksum error, else framing
        shape = re.fullmatch(rb"\$([\x20-\x7e]*)\*([\x20-\x7e]*)\r\n", data)
        if shape is None or b"$" in shape[1] or b"*" in shape[1]:
            return Bad("bad_framing")
        return Bad("bad_checksum")
    body = match[1].decode("ascii")
    if "$" in body or "*" in body:
        return Bad("bad_framing")
    if match[2].decode("ascii") != checksum(body):
        return Bad("bad_checksum")
    name, *args = body.split(",")
    if name == "CNBTN" and len(args) == 2:
        state = _STATE.get(args[0])
        if state is None or not _FIELD.fullmatch(args[1]) or int(args[1]) > 15:
            return Bad("bad_value")
        return Button(state, int(args[1]))
    if name == "CNCAT" and len(args) == 1:
        if not _FIELD.fullmatch(args[0]):
            return Bad("bad_value")
        code = int(args[0])
        if code != 0 and code not in _CATEGORY:
            return Bad("bad_value")
        return Category(_CATEGORY.get(code))
    if name == "CNLED" and len(args) == 1:
        if not _FIELD.fullmatch(args[0]) or int(args[0]) not in LedMode._value2member_map_:
            return Bad("bad_value")
        return Led(LedMode(int(args[0])))
    return Bad("unknown_body")


class LineBuffer:
    """Collects a byte stream into lines: each ``$`` starts one, ``\\n`` ends it.

    Bytes before a ``$``, and a line that outgrows :data:`MAX_LINE`, are dropped
    (:attr:`dropped` counts them).
    """

    def __init__(self) -> None:
        self._pending = b""
        self.dropped = 0

    def clear(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        self._pending += chunk
        out: list[bytes] = []
        while True:
            start = self._pending.find(b"$")
            if start < 0:
                self.dropped += bool(self._pending.strip())
                self._pending = b""
                return out
            if start:
                self.dropped += bool(self._pending[:start].strip())
            self._pending = self._pending[start:]
            end = self._pending.find(b"\n")
            again = self._pending.find(b"$", 1)
            if 0 <= again < end or (end < 0 and again > 0):
                self.dropped += 1  # a fragment: the sender restarted mid-line
                self._pending = self._pending[again:]
                continue
            if end < 0:
                if len(self._pending) > MAX_LINE:
                    self.dropped += 1
                    self._pending = b""
                return out
            out.append(self._pending[: end + 1])
            self._pending = self._pending[end + 1 :]
