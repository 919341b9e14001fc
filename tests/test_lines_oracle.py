"""The agent's serial-line codec held against the roof module's (SPEC §3, issue 16).

``agent.core.lines`` (the agent's reader and writer) against ``hw_sim.lines`` (the simulated
module's, written apart from it): each side's lines read by the other, byte-exact where both
write the same sentence, checksum errors refused by both, and both cutting a byte stream into
the same lines however it is chunked. Hand-made lines from SPEC §3 anchor both.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core import lines as agent
from agent.core.frames import ButtonState as AgentButton
from agent.core.frames import LedMode as AgentLed
from hw_sim import lines as sim
from hw_sim.matrix import CATEGORIES, ButtonState, LedMode

SETTINGS = settings(max_examples=300, deadline=None)
SENT_STATES = [ButtonState.PRESSED, ButtonState.RELEASED, ButtonState.FAULT]
categories = st.sampled_from([None, *CATEGORIES])
HEX = "0123456789ABCDEF"

# -- SPEC §3 by hand ------------------------------------------------------------------------------

HAND = [
    (b"$CNBTN,P,0*35\r\n", sim.Button(ButtonState.PRESSED, 0)),
    (b"$CNBTN,R,15*03\r\n", sim.Button(ButtonState.RELEASED, 15)),
    (b"$CNCAT,8*4F\r\n", sim.Category("fire")),
    (b"$CNCAT,0*47\r\n", sim.Category(None)),
    (b"$CNLED,5*59\r\n", sim.Led(LedMode.CANCELLED)),
]


@pytest.mark.parametrize(("line", "meaning"), HAND)
def test_spec_lines(line: bytes, meaning: sim.Parsed) -> None:
    assert sim.parse(line) == meaning
    if isinstance(meaning, sim.Button):
        assert sim.button_line(meaning.state, meaning.counter) == line
        assert agent.encode_button(AgentButton(meaning.state), meaning.counter) == line
        decoded = agent.ModuleLineDecoder().decode(line)
        assert decoded == agent.ButtonLine(AgentButton(meaning.state), meaning.counter)
    elif isinstance(meaning, sim.Category):
        assert sim.category_line(meaning.category) == line
        assert agent.encode_category(meaning.category) == line
        assert agent.ModuleLineDecoder().decode(line) == agent.CategoryLine(meaning.category)
    else:
        assert isinstance(meaning, sim.Led)
        assert sim.led_line(meaning.mode) == line
        assert agent.encode_led(AgentLed(meaning.mode)) == line
        assert agent.decode_agent_line(line) == agent.LedLine(AgentLed(meaning.mode))


# -- the module writes, the agent reads; and back -------------------------------------------------


@SETTINGS
@given(samples=st.lists(st.tuples(st.sampled_from(SENT_STATES), st.integers(0, 15)), max_size=30))
def test_button_lines_both_ways(samples: list[tuple[ButtonState, int]]) -> None:
    """Each side reads the other's CNBTN; both drop exactly the repeated counters."""
    agent_reader = agent.ModuleLineDecoder()
    last: int | None = None
    for state, counter in samples:
        line = sim.button_line(state, counter)
        assert agent.encode_button(AgentButton(state), counter) == line
        assert sim.parse(line) == sim.Button(state, counter)
        got = agent_reader.decode(line)
        if counter == last:
            assert got == agent.LineRejected("repeated_counter")
        else:
            assert got == agent.ButtonLine(AgentButton(state), counter)
            last = counter


@SETTINGS
@given(category=categories, mode=st.sampled_from(list(LedMode)))
def test_category_and_led_lines_both_ways(category: str | None, mode: LedMode) -> None:
    line = sim.category_line(category)
    assert agent.ModuleLineDecoder().decode(line) == agent.CategoryLine(category)
    assert sim.parse(agent.encode_category(category)) == sim.Category(category)
    led = agent.encode_led(AgentLed(mode))
    assert sim.parse(led) == sim.Led(mode)
    assert agent.decode_agent_line(sim.led_line(mode)) == agent.LedLine(AgentLed(mode))


# -- checksum errors ------------------------------------------------------------------------------

sentences = st.one_of(
    st.tuples(st.sampled_from("PRF"), st.integers(0, 15)).map(lambda s: f"CNBTN,{s[0]},{s[1]}"),
    categories.map(lambda c: f"CNCAT,{0 if c is None else CATEGORIES[c]}"),
    st.sampled_from(list(LedMode)).map(lambda m: f"CNLED,{m.value}"),
)


def agent_reads(line: bytes) -> object:
    if line.startswith(b"$CNLED"):
        return agent.decode_agent_line(line)
    return agent.ModuleLineDecoder().decode(line)


@SETTINGS
@given(body=sentences, check=st.text(HEX + "abcdef", min_size=2, max_size=2))
def test_wrong_check_digits_are_refused_by_both(body: str, check: str) -> None:
    right = sim.checksum(body)
    assert right == f"{agent.checksum(body.encode()):02X}"
    line = sim.line(body, check=check)
    if check == right:
        assert not isinstance(sim.parse(line), sim.Bad)
        assert not isinstance(agent_reads(line), agent.LineRejected)
    else:  # lower-case digits of the right value too: SPEC §3 says upper-case
        assert sim.parse(line) == sim.Bad("bad_checksum")
        assert agent_reads(line) == agent.LineRejected("bad_checksum")


@SETTINGS
@given(body=sentences, data=st.data())
def test_one_changed_body_byte_is_a_checksum_error_on_both_sides(
    body: str, data: st.DataObject
) -> None:
    at = data.draw(st.integers(0, len(body) - 1))
    other = data.draw(st.sampled_from([c for c in "ABCNPRF,0123456789 " if c != body[at]]))
    damaged = body[:at] + other + body[at + 1 :]
    for line in (sim.line(body), agent.encode_line(body)):
        bad = line.replace(body.encode(), damaged.encode())
        assert sim.parse(bad) == sim.Bad("bad_checksum")
        assert agent_reads(bad) == agent.LineRejected("bad_checksum")


# -- any body: the two readers agree on what they accept ------------------------------------------

fields = st.sampled_from(["P", "R", "F", "N", "0", "7", "07", "15", "16", "99", "123", "", "x"])


@SETTINGS
@given(
    name=st.sampled_from(["CNBTN", "CNCAT", "CNLED", "CNXYZ", "GPGGA", ""]),
    args=st.lists(fields, max_size=3),
)
def test_readers_agree_on_any_body(name: str, args: list[str]) -> None:
    body = ",".join([name, *args])
    line = sim.line(body)
    assert line == agent.encode_line(body)
    mine = sim.parse(line)
    theirs = agent_reads(line)
    if isinstance(theirs, agent.ButtonLine):
        assert mine == sim.Button(ButtonState(theirs.state), theirs.counter)
    elif isinstance(theirs, agent.CategoryLine):
        assert mine == sim.Category(theirs.category)
    elif isinstance(theirs, agent.LedLine):
        assert mine == sim.Led(LedMode(theirs.mode))
    else:
        assert isinstance(mine, sim.Bad), (body, mine, theirs)


@pytest.mark.parametrize("size", [81, 82, 83, 120])
def test_lines_over_82_bytes_are_refused_by_both(size: int) -> None:
    body = "CNXYZ," + "A" * (size - len("$CNXYZ,*HH\r\n"))
    line = f"${body}*{sim.checksum(body)}\r\n".encode()
    assert len(line) == size
    if size <= 82:
        assert line == sim.line(body) == agent.encode_line(body)
        assert sim.parse(line) == sim.Bad("unknown_body")
        assert agent_reads(line) == agent.LineRejected("unknown_body")
    else:
        assert sim.parse(line) == sim.Bad("too_long")
        assert agent_reads(line) == agent.LineRejected("too_long")
        with pytest.raises(ValueError, match="at most 82"):
            sim.line(body)


# -- byte streams ---------------------------------------------------------------------------------


@SETTINGS
@given(bodies=st.lists(sentences, max_size=12), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_both_cut_a_stream_into_the_same_lines(bodies: list[str], cuts: list[int]) -> None:
    stream = b"".join(sim.line(body) for body in bodies)
    edges = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(edges)]
    splitter, buffer = agent.LineSplitter(), sim.LineBuffer()
    by_agent = [item for chunk in chunks for item in splitter.feed(chunk)]
    by_sim = [item for chunk in chunks for item in buffer.feed(chunk)]
    expected = [sim.line(body) for body in bodies]
    assert by_agent == expected
    assert by_sim == expected
    assert buffer.dropped == 0


def as_sim(decoded: object) -> object:
    """The agent's reading of a line in hw_sim's terms (None for a refused one)."""
    if isinstance(decoded, agent.ButtonLine):
        return sim.Button(ButtonState(decoded.state), decoded.counter)
    if isinstance(decoded, agent.CategoryLine):
        return sim.Category(decoded.category)
    if isinstance(decoded, agent.LedLine):
        return sim.Led(LedMode(decoded.mode))
    return None


@SETTINGS
@given(
    parts=st.lists(st.tuples(st.binary(max_size=90), sentences), max_size=10),
    cuts=st.lists(st.integers(0, 2000), max_size=8),
)
def test_both_find_the_same_lines_in_line_noise(
    parts: list[tuple[bytes, str]], cuts: list[int]
) -> None:
    """Noise (a cut-off line, bytes over 0x7F, stray ``$`` and newlines) between good lines:
    both keep every good line and make the same of the rest."""
    stream = b"".join(noise + sim.line(body) for noise, body in parts)
    edges = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(edges)]
    splitter, buffer = agent.LineSplitter(), sim.LineBuffer()
    by_agent = [
        as_sim(agent_reads(item) if isinstance(item, bytes) else item)
        for chunk in chunks
        for item in splitter.feed(chunk)
    ]
    by_sim = [sim.parse(line) for chunk in chunks for line in buffer.feed(chunk)]
    kept_by_agent = [item for item in by_agent if item is not None]
    kept_by_sim = [item for item in by_sim if not isinstance(item, sim.Bad)]
    assert kept_by_agent == kept_by_sim
    good = [sim.parse(sim.line(body)) for _, body in parts]
    assert all(item in kept_by_sim for item in good)
