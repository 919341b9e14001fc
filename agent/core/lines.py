"""The serial button protocol (SPEC §3): ASCII lines <-> typed values.

A line is ``$<body>*<HH>\\r\\n``: ``HH`` is the XOR of every byte of ``<body>`` as two
upper-case hex digits (as in NMEA 0183), and the whole line, ``$`` and ``\\r\\n`` included, is at
most :data:`MAX_LINE_BYTES` long. Bodies:

* module -> agent: ``CNBTN,<P|R|F>,<counter 0-15>`` (a button sample) and ``CNCAT,<code>`` (the
  driver's category, codes as ASSIST_CATEGORY);
* agent -> module: ``CNLED,<mode>`` (modes as CONNECT_LED).

Pure, like :mod:`agent.core.frames`: :class:`LineSplitter` cuts a byte stream into candidate
lines with bounded memory, :class:`ModuleLineDecoder` turns each into a :class:`ButtonLine`, a
:class:`CategoryLine` or a :class:`LineRejected` whose ``reason`` is the counter it is counted
under, and the ``encode_*`` functions build lines for both directions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from agent.core.frames import CATEGORY_BY_NAME, CATEGORY_CODES, ButtonState, LedMode

MAX_LINE_BYTES: Final = 82  # "$" through "\r\n", as NMEA 0183
_HEX: Final = frozenset(b"0123456789ABCDEF")
_STATES: Final = {"P": ButtonState.PRESSED, "R": ButtonState.RELEASED, "F": ButtonState.FAULT}
_LETTERS: Final = {state: letter for letter, state in _STATES.items()}
_LED_CODES: Final = frozenset(int(mode) for mode in LedMode)

#: Every reason a line can be rejected for: the adapter's counter names.
REJECT_REASONS: Final = (
    "too_long",  # over MAX_LINE_BYTES before its end: skipped up to the next "$" or newline
    "non_ascii",  # a byte >= 0x80 (line noise, wrong baud rate)
    "bad_framing",  # not "$...*HH\r\n": no "$", no "*", no CR LF, control characters, a fragment
    "bad_checksum",  # HH missing, not two upper-case hex digits, or not the XOR of the body
    "unknown_body",  # a sentence this side does not receive, or the wrong number of fields
    "bad_value",  # a known sentence with an unknown state letter, category or LED mode
    "bad_counter",  # CNBTN counter not a number from 0 to 15
    "repeated_counter",  # CNBTN counter equal to the previous one (as CAN's alive counter)
)


@dataclass(frozen=True, slots=True)
class ButtonLine:
    state: ButtonState
    counter: int


@dataclass(frozen=True, slots=True)
class CategoryLine:
    category: str | None  # None: the driver chose nothing


@dataclass(frozen=True, slots=True)
class LedLine:
    mode: LedMode


@dataclass(frozen=True, slots=True)
class LineRejected:
    """A line that was dropped; ``reason`` is one of :data:`REJECT_REASONS`."""

    reason: str


ModuleLine = ButtonLine | CategoryLine


# -- encoding ---------------------------------------------------------------------------------


def checksum(body: bytes) -> int:
    """XOR of every byte of ``body``."""
    value = 0
    for byte in body:
        value ^= byte
    return value


def encode_line(body: str) -> bytes:
    """``$<body>*HH\\r\\n``; raises ValueError for a body that cannot be sent as one line."""
    raw = body.encode("ascii")
    if not all(0x20 <= b < 0x7F for b in raw) or b"$" in raw or b"*" in raw:
        raise ValueError(f"a line body is printable ASCII without '$' or '*': {body!r}")
    line = b"$" + raw + b"*" + b"%02X\r\n" % checksum(raw)
    if len(line) > MAX_LINE_BYTES:
        raise ValueError(f"a line is at most {MAX_LINE_BYTES} bytes, this one {len(line)}")
    return line


def encode_button(state: ButtonState, counter: int) -> bytes:
    if state not in _LETTERS:
        raise ValueError(f"the serial protocol has no button state {state!r}")
    return encode_line(f"CNBTN,{_LETTERS[state]},{counter & 0x0F}")


def encode_category(category: str | None) -> bytes:
    code = 0 if category is None else CATEGORY_BY_NAME[category]
    return encode_line(f"CNCAT,{code}")


def encode_led(mode: LedMode) -> bytes:
    return encode_line(f"CNLED,{int(mode)}")


# -- splitting a byte stream into lines -------------------------------------------------------


class LineSplitter:
    """Cuts arbitrary byte chunks into candidate lines, holding at most one line's bytes.

    :meth:`feed` returns, in order, each complete line (up to and including its ``\\n``), each
    unterminated fragment that a new ``$`` cut off (a module that restarted mid-line; the
    decoder rejects it as ``bad_framing``), and a ``LineRejected("too_long")`` for each stretch
    that grew past :data:`MAX_LINE_BYTES` without ending; such a stretch is discarded as it
    arrives, up to the next ``$`` or ``\\n``.
    """

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._max = max_line
        self._buf = bytearray()
        self._skipping = False

    def reset(self) -> None:
        """Forget a partial line (the port was reopened)."""
        self._buf.clear()
        self._skipping = False

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[bytes | LineRejected]:
        out: list[bytes | LineRejected] = []
        data = bytes(chunk)
        start = 0
        while start < len(data):
            dollar = data.find(b"$", start)
            newline = data.find(b"\n", start)
            ends = [i for i in (dollar, newline) if i >= 0]
            if not ends:
                self._append(data[start:], out)
                break
            cut = min(ends)
            if cut == dollar:
                self._append(data[start:cut], out)
                if self._buf:
                    out.append(bytes(self._buf))  # a fragment: cut off by the next line
                self._buf.clear()
                self._skipping = False
                self._append(b"$", out)
            else:
                self._append(data[start : cut + 1], out)
                if self._buf:
                    out.append(bytes(self._buf))
                self._buf.clear()
                self._skipping = False
            start = cut + 1
        return out

    def _append(self, piece: bytes, out: list[bytes | LineRejected]) -> None:
        if self._skipping or not piece:
            return
        if len(self._buf) + len(piece) > self._max:
            self._buf.clear()
            self._skipping = True
            out.append(LineRejected("too_long"))
            return
        self._buf += piece


# -- decoding ---------------------------------------------------------------------------------


def parse_line(line: bytes) -> list[str] | LineRejected:
    """Check one line's length, characters, framing and checksum; return its body's fields."""
    if len(line) > MAX_LINE_BYTES:
        return LineRejected("too_long")
    if any(b >= 0x80 for b in line):
        return LineRejected("non_ascii")
    if not line.startswith(b"$") or not line.endswith(b"\r\n"):
        return LineRejected("bad_framing")
    star = line.rfind(b"*")
    if star < 0:
        return LineRejected("bad_framing")
    body, given = line[1:star], line[star + 1 : -2]
    if any(b < 0x20 or b == 0x7F for b in body) or b"$" in body or b"*" in body:
        return LineRejected("bad_framing")
    if len(given) != 2 or not _HEX.issuperset(given) or int(given, 16) != checksum(body):
        return LineRejected("bad_checksum")
    return body.decode("ascii").split(",")


def _small_int(text: str, high: int) -> int | None:
    """A decimal number 0..high written with one or two digits, else None."""
    if not (1 <= len(text) <= 2 and text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= high else None


class ModuleLineDecoder:
    """The agent's side: decodes CNBTN and CNCAT lines, checking the button counter.

    A counter equal to the previous accepted one is rejected (as CAN's alive counter); a jump
    (lost lines) is accepted. Call :meth:`reset` when the port is reopened.
    """

    __slots__ = ("_last_counter",)

    def __init__(self) -> None:
        self._last_counter: int | None = None

    def reset(self) -> None:
        self._last_counter = None

    def decode(self, line: bytes | LineRejected) -> ModuleLine | LineRejected:
        if isinstance(line, LineRejected):
            return line
        fields = parse_line(line)
        if isinstance(fields, LineRejected):
            return fields
        kind = fields[0]
        if kind == "CNBTN" and len(fields) == 3:
            state = _STATES.get(fields[1])
            if state is None:
                return LineRejected("bad_value")
            counter = _small_int(fields[2], 15)
            if counter is None:
                return LineRejected("bad_counter")
            if counter == self._last_counter:
                return LineRejected("repeated_counter")
            self._last_counter = counter
            return ButtonLine(state, counter)
        if kind == "CNCAT" and len(fields) == 2:
            code = _small_int(fields[1], 15)
            if code is None or code not in CATEGORY_CODES:
                return LineRejected("bad_value")
            return CategoryLine(CATEGORY_CODES[code])
        return LineRejected("unknown_body")


def decode_agent_line(line: bytes | LineRejected) -> LedLine | LineRejected:
    """The module's side: decodes CNLED lines from the agent."""
    if isinstance(line, LineRejected):
        return line
    fields = parse_line(line)
    if isinstance(fields, LineRejected):
        return fields
    if fields[0] == "CNLED" and len(fields) == 2:
        code = _small_int(fields[1], 15)
        if code is None or code not in _LED_CODES:
            return LineRejected("bad_value")
        return LedLine(LedMode(code))
    return LineRejected("unknown_body")
