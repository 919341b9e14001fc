"""The serial button protocol (SPEC §3): checksums, the decoder table, the splitter, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.frames import ButtonState, LedMode
from agent.core.lines import (
    MAX_LINE_BYTES,
    REJECT_REASONS,
    ButtonLine,
    CategoryLine,
    LedLine,
    LineRejected,
    LineSplitter,
    ModuleLineDecoder,
    checksum,
    decode_agent_line,
    encode_button,
    encode_category,
    encode_led,
    encode_line,
    parse_line,
)


def line(body: str, hh: str | None = None) -> bytes:
    """A line with the right checksum, or with ``hh`` in its place."""
    sum_ = f"{checksum(body.encode()):02X}" if hh is None else hh
    return f"${body}*{sum_}\r\n".encode()


def test_checksum_is_the_nmea_xor() -> None:
    # The NMEA 0183 example sentence: its published checksum is 47.
    body = b"GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
    assert checksum(body) == 0x47
    assert encode_line("CNBTN,P,3") == b"$CNBTN,P,3*%02X\r\n" % checksum(b"CNBTN,P,3")


def test_encoders_round_trip() -> None:
    decoder = ModuleLineDecoder()
    assert decoder.decode(encode_button(ButtonState.PRESSED, 7)) == ButtonLine(
        ButtonState.PRESSED, 7
    )
    assert decoder.decode(encode_button(ButtonState.FAULT, 8)) == ButtonLine(ButtonState.FAULT, 8)
    assert decoder.decode(encode_category("fire")) == CategoryLine("fire")
    assert decoder.decode(encode_category(None)) == CategoryLine(None)
    for mode in LedMode:
        assert decode_agent_line(encode_led(mode)) == LedLine(mode)
    assert encode_led(LedMode.CALLING) == line("CNLED,2")


def test_encoders_refuse_what_the_protocol_cannot_carry() -> None:
    with pytest.raises(ValueError, match="no button state"):
        encode_button(ButtonState.NOT_AVAILABLE, 0)
    with pytest.raises(ValueError, match="without"):
        encode_line("CN*X")
    with pytest.raises(ValueError, match="at most 82"):
        encode_line("X" * 80)


OK_P = line("CNBTN,P,1")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (line("CNBTN,P,1"), ButtonLine(ButtonState.PRESSED, 1)),
        (line("CNBTN,R,0"), ButtonLine(ButtonState.RELEASED, 0)),
        (line("CNBTN,F,15"), ButtonLine(ButtonState.FAULT, 15)),
        (line("CNBTN,P,07"), ButtonLine(ButtonState.PRESSED, 7)),
        (line("CNCAT,5"), CategoryLine("accident")),
        (line("CNCAT,15"), CategoryLine("other")),
        (line("CNCAT,0"), CategoryLine(None)),
        # checksum
        (line("CNBTN,P,1", "00"), LineRejected("bad_checksum")),
        (line("CNCAT,5", "ZZ"), LineRejected("bad_checksum")),
        (line("CNBTN,P,1", "5"), LineRejected("bad_checksum")),
        (line("CNBTN,P,1", ""), LineRejected("bad_checksum")),
        (line("CNBTN,P,1", "0AB"), LineRejected("bad_checksum")),
        # upper-case hex only: "CNBTN,F,9" sums to 0x2A
        (b"$CNBTN,F,9*2A\r\n", ButtonLine(ButtonState.FAULT, 9)),
        (b"$CNBTN,F,9*2a\r\n", LineRejected("bad_checksum")),
        # framing
        (OK_P[:-2] + b"\n", LineRejected("bad_framing")),
        (OK_P[:-2], LineRejected("bad_framing")),
        (OK_P[1:], LineRejected("bad_framing")),
        (b"$CNBTN,P,1\r\n", LineRejected("bad_framing")),
        (b"\r\n", LineRejected("bad_framing")),
        (line("CN\tBTN,P,1"), LineRejected("bad_framing")),
        (line("CNBTN,P,1").replace(b",P", b"*P"), LineRejected("bad_framing")),
        (b"noise " + OK_P, LineRejected("bad_framing")),
        # body
        (line("CNXYZ,1"), LineRejected("unknown_body")),
        (line("CNBTN,P"), LineRejected("unknown_body")),
        (line("CNBTN,P,1,2"), LineRejected("unknown_body")),
        (line("CNLED,2"), LineRejected("unknown_body")),  # agent -> module only
        (line(""), LineRejected("unknown_body")),
        (line("CNBTN,X,1"), LineRejected("bad_value")),
        (line("CNBTN,p,1"), LineRejected("bad_value")),
        (line("CNCAT,9"), LineRejected("bad_value")),
        (line("CNCAT,16"), LineRejected("bad_value")),
        (line("CNCAT,"), LineRejected("bad_value")),
        # counter
        (line("CNBTN,P,16"), LineRejected("bad_counter")),
        (line("CNBTN,P,-1"), LineRejected("bad_counter")),
        (line("CNBTN,P,"), LineRejected("bad_counter")),
        (line("CNBTN,P,0x1"), LineRejected("bad_counter")),
        (line("CNBTN,P,001"), LineRejected("bad_counter")),
        (line("CNBTN,P, 1"), LineRejected("bad_counter")),
        # size and bytes
        (line("CNBTN,P,1," + "X" * 70), LineRejected("too_long")),
        (line("CNBTN,\xe9,1"), LineRejected("non_ascii")),
        (b"$CNBTN,\xc3\xa9,1*00\r\n", LineRejected("non_ascii")),
    ],
)
def test_decoder_table(raw: bytes, expected: object) -> None:
    assert ModuleLineDecoder().decode(raw) == expected


def test_the_longest_line_is_82_bytes() -> None:
    body = "CNXYZ," + "A" * (MAX_LINE_BYTES - 6 - 6)  # "$" + body + "*HH\r\n"
    assert len(line(body)) == MAX_LINE_BYTES
    assert parse_line(line(body)) == body.split(",")
    assert parse_line(line(body + "A")) == LineRejected("too_long")


def test_a_repeated_counter_is_rejected_like_can_alive_counter() -> None:
    decoder = ModuleLineDecoder()
    assert decoder.decode(line("CNBTN,P,3")) == ButtonLine(ButtonState.PRESSED, 3)
    assert decoder.decode(line("CNBTN,P,3")) == LineRejected("repeated_counter")
    assert decoder.decode(line("CNBTN,R,3")) == LineRejected("repeated_counter")
    assert decoder.decode(line("CNBTN,P,9")) == ButtonLine(ButtonState.PRESSED, 9)  # a jump is ok
    assert decoder.decode(line("CNBTN,P,x")) == LineRejected("bad_counter")
    assert decoder.decode(line("CNBTN,P,10")) == ButtonLine(ButtonState.PRESSED, 10)
    assert decoder.decode(line("CNCAT,1")) == CategoryLine("breakdown")  # not counted
    assert decoder.decode(line("CNBTN,P,11")) == ButtonLine(ButtonState.PRESSED, 11)
    decoder.reset()  # the port was reopened: the module may restart anywhere
    assert decoder.decode(line("CNBTN,P,11")) == ButtonLine(ButtonState.PRESSED, 11)


def test_agent_line_decoder() -> None:
    assert decode_agent_line(line("CNLED,4")) == LedLine(LedMode.FAILED)
    assert decode_agent_line(line("CNLED,6")) == LineRejected("bad_value")
    assert decode_agent_line(line("CNBTN,P,1")) == LineRejected("unknown_body")
    assert decode_agent_line(line("CNLED,4", "00")) == LineRejected("bad_checksum")
    assert decode_agent_line(LineRejected("too_long")) == LineRejected("too_long")


# -- the splitter -----------------------------------------------------------------------------


def decode_stream(chunks: list[bytes]) -> list[object]:
    splitter, decoder = LineSplitter(), ModuleLineDecoder()
    return [decoder.decode(item) for chunk in chunks for item in splitter.feed(chunk)]


A, B, C = line("CNBTN,P,1"), line("CNBTN,P,2"), line("CNCAT,8")
DECODED = [
    ButtonLine(ButtonState.PRESSED, 1),
    ButtonLine(ButtonState.PRESSED, 2),
    CategoryLine("fire"),
]


def test_split_chunks_give_the_same_lines() -> None:
    stream = A + B + C
    assert decode_stream([stream]) == DECODED
    assert decode_stream([bytes([b]) for b in stream]) == DECODED
    for cut in range(1, len(stream)):
        assert decode_stream([stream[:cut], stream[cut:]]) == DECODED, cut


def test_garbage_between_lines_is_rejected_and_the_lines_survive() -> None:
    out = decode_stream([b"\x00\xffnoise", A, b"half a li", B, b"\r\n\r\n", C])
    assert out == [
        LineRejected("non_ascii"),  # "\x00\xffnoise", cut off by A's "$"
        DECODED[0],
        LineRejected("bad_framing"),  # "half a li"
        DECODED[1],
        LineRejected("bad_framing"),  # an empty line
        LineRejected("bad_framing"),
        DECODED[2],
    ]


def test_a_line_cut_by_a_restarting_module_does_not_eat_the_next() -> None:
    assert decode_stream([A[:7] + B]) == [LineRejected("bad_framing"), DECODED[1]]


def test_overlong_garbage_is_discarded_as_it_arrives() -> None:
    splitter = LineSplitter()
    results: list[object] = []
    for _ in range(1000):  # 100 kB without a newline or a "$"
        results += splitter.feed(b"x" * 100)
        assert len(splitter._buf) <= MAX_LINE_BYTES
    assert results == [LineRejected("too_long")]
    after = splitter.feed(b"more garbage\r\n" + A)
    assert [ModuleLineDecoder().decode(r) for r in after] == [DECODED[0]]


def test_an_overlong_line_is_one_rejection() -> None:
    long_line = line("CNBTN,P,1," + "A" * 200)
    assert decode_stream([long_line, B]) == [LineRejected("too_long"), DECODED[1]]
    assert decode_stream([long_line[:50], long_line[50:] + B]) == [
        LineRejected("too_long"),
        DECODED[1],
    ]


# -- fuzzing ----------------------------------------------------------------------------------

VALID = (A, B, C, line("CNBTN,R,3"), line("CNCAT,0"))


@given(st.lists(st.one_of(st.binary(max_size=120), st.sampled_from(VALID)), max_size=20))
def test_the_decoder_never_raises(pieces: list[bytes]) -> None:
    decoder = ModuleLineDecoder()
    for piece in pieces:
        result = decoder.decode(piece)
        if isinstance(result, LineRejected):
            assert result.reason in REJECT_REASONS
        assert isinstance(decode_agent_line(piece), LedLine | LineRejected)


@given(
    st.lists(st.one_of(st.binary(max_size=200), st.sampled_from(VALID)), max_size=30),
    st.data(),
)
def test_the_splitter_never_raises_never_grows_and_keeps_clean_lines(
    pieces: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    splitter, decoder = LineSplitter(), ModuleLineDecoder()
    out: list[object] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        for item in splitter.feed(stream[start:end]):
            out.append(decoder.decode(item))
        assert len(splitter._buf) <= MAX_LINE_BYTES
    for result in out:
        assert isinstance(result, ButtonLine | CategoryLine | LineRejected)
    # A valid line that follows a newline arrives intact, whatever garbage came before it.
    tail = splitter.feed(b"\n" + B)
    assert ModuleLineDecoder().decode(tail[-1]) == DECODED[1]
