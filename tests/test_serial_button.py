"""The serial button path end to end through a real pseudo-terminal.

``hw_sim.serial_button.SerialButtonModule`` is the roof module on the pty's master side;
``SerialButtonInput`` opens the slave side with pyserial, as it opens a UART in the car. Every
wait is for an event, bounded by ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent.core.button import ButtonTracker, HealthChanged, Held
from agent.core.frames import ButtonState, LedMode
from agent.inputs.serial_button import COUNTER_NAMES, SerialButtonInput
from hw_sim.lines import line as encode_line
from hw_sim.serial_button import SerialButtonModule, run_serial_button

TIMEOUT = 5.0


class Agentish:
    """What the agent does with the adapter's callbacks: samples into a ButtonTracker."""

    def __init__(self, hold_s: float = 2.0) -> None:
        self.tracker = ButtonTracker(hold_s)
        self.samples: list[tuple[ButtonState, float]] = []
        self.events: list[Held | HealthChanged] = []
        self.categories: list[str | None] = []
        self.states: list[str] = []

    def on_button(self, state: ButtonState, now: float) -> None:
        self.samples.append((state, now))
        self.events += self.tracker.sample(state, now)

    def on_category(self, category: str | None) -> None:
        self.categories.append(category)

    def on_state(self, state: str) -> None:
        self.states.append(state)

    @property
    def held(self) -> list[Held]:
        return [e for e in self.events if isinstance(e, Held)]

    def pressed_count(self) -> int:
        return sum(1 for state, _ in self.samples if state is ButtonState.PRESSED)


def adapter(port: str, agent: Agentish) -> SerialButtonInput:
    return SerialButtonInput(
        port,
        on_button=agent.on_button,
        on_category=agent.on_category,
        on_state=agent.on_state,
        backoff_base=0.01,
        backoff_cap=0.05,
        rng=random.Random(4),
    )


@contextlib.asynccontextmanager
async def running(src: SerialButtonInput) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``src`` for the block; it must still be running at the end, then it is cancelled."""
    task = asyncio.create_task(src.run(), name="serial-under-test")
    try:
        yield task
        assert not task.done(), "SerialButtonInput.run() ended on its own"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(src: SerialButtonInput, predicate: Callable[[SerialButtonInput], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        await src.wait_for(predicate)


@pytest.fixture
def link(tmp_path: Path) -> Path:
    return tmp_path / "ttyCONNECT"


@pytest.mark.asyncio
async def test_a_hold_of_2_2_s_is_one_held_event(link: Path) -> None:
    agent = Agentish(hold_s=2.0)
    async with SerialButtonModule(link) as module:
        src = adapter(module.port_path, agent)
        async with running(src):
            await until(src, lambda s: s.state == "ok" and len(agent.samples) >= 2)
            await module.hold(2200)
            await until(src, lambda s: agent.samples[-1][0] is ButtonState.RELEASED)
    assert src.counters["lines"] == len(agent.samples)
    assert agent.pressed_count() >= 20  # every 100 ms and on change, for 2.2 s
    assert len(agent.held) == 1
    assert 2000 <= agent.held[0].held_ms <= 2400  # at the first sample past 2 s
    assert agent.tracker.health == "ok"
    rejected = {k: v for k, v in src.counters.items() if k in COUNTER_NAMES[1:9] and v}
    assert rejected == {}
    assert agent.states == ["ok"]


@pytest.mark.asyncio
async def test_a_short_press_and_a_fault(link: Path) -> None:
    agent = Agentish(hold_s=2.0)
    async with SerialButtonModule(link) as module:
        src = adapter(module.port_path, agent)
        async with running(src):
            await until(src, lambda s: s.state == "ok" and len(agent.samples) >= 1)
            await module.hold(300)
            module.set_button(ButtonState.FAULT)
            await until(src, lambda s: agent.samples[-1][0] is ButtonState.FAULT)
    assert agent.pressed_count() >= 1
    assert agent.held == []
    assert agent.tracker.health == "fault"


@pytest.mark.asyncio
async def test_the_led_command_reaches_the_module_and_follows_a_reopen(link: Path) -> None:
    agent = Agentish()
    src = adapter(str(link), agent)
    assert src.send_led(LedMode.READY) is False  # nothing open yet: remembered
    assert src.counters["led_no_port"] == 1
    async with running(src):
        async with SerialButtonModule(link) as module:
            await module.wait_for_led(LedMode.READY, TIMEOUT)  # sent when the port opened
            assert src.send_led(LedMode.CALLING) is True
            await module.wait_for_led(LedMode.CALLING, TIMEOUT)
            assert src.send_led(LedMode.CONNECTED) is True
            await module.wait_for_led(LedMode.CONNECTED, TIMEOUT)
            assert [mode for _, mode in module.leds] == [
                LedMode.READY,
                LedMode.CALLING,
                LedMode.CONNECTED,
            ]
            assert module.rejected == {}
        await until(src, lambda s: s.state == "down")
        async with SerialButtonModule(link) as restarted:
            # The restarted module shows the right colour without waiting for a change.
            await restarted.wait_for_led(LedMode.CONNECTED, TIMEOUT)
    assert src.counters["led_sent"] == 4


@pytest.mark.asyncio
async def test_garbage_lines_are_counted_and_survived(
    link: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent = Agentish()
    async with SerialButtonModule(link) as module:
        src = adapter(module.port_path, agent)
        async with running(src):
            await until(src, lambda s: s.state == "ok" and s.counters["lines"] >= 1)
            module.send_raw(b"$CNBTN,P,3*00\r\n")  # bad checksum
            module.send_raw(b"$CNBTN,P,3*00\r\n")
            module.send_raw(b"\x00\xff\xfe line noise \x80\r\n")
            module.send_raw(b"$" + b"A" * 300 + b"\r\n")
            module.send_raw(encode_line("CNXYZ,1"))
            module.send_raw(encode_line("CNBTN,P,99"))
            module.send_raw(b"$CNBTN,P,")  # half a line, then the module goes on
            await until(
                src,
                lambda s: (
                    s.counters["bad_checksum"] == 2
                    and s.counters["non_ascii"] == 1
                    and s.counters["too_long"] == 1
                    and s.counters["unknown_body"] == 1
                    and s.counters["bad_counter"] == 1
                    and s.counters["bad_framing"] == 1
                ),
            )
            lines = src.counters["lines"]
            module.set_category("puncture")
            await until(src, lambda s: s.counters["lines"] >= lines + 3)
    assert agent.categories == ["puncture"]
    assert agent.states == ["ok"]
    warnings = [r for r in caplog.records if r.name == "agent.serial" and "dropped" in r.message]
    assert len(warnings) == 6  # once per kind, not once per line


@pytest.mark.asyncio
async def test_a_restarted_module_is_reopened(link: Path) -> None:
    agent = Agentish(hold_s=0.5)
    src = adapter(str(link), agent)
    async with running(src):
        async with SerialButtonModule(link):
            await until(src, lambda s: s.state == "ok" and len(agent.samples) >= 2)
        await until(src, lambda s: s.state == "down")
        assert src.counters["disconnects"] == 1
        await until(src, lambda s: s.counters["open_failures"] >= 2)  # the link is gone
        async with SerialButtonModule(link) as module:
            await until(src, lambda s: s.state == "ok")
            before = len(agent.samples)
            await module.hold(700)
            await until(src, lambda s: agent.samples[-1][0] is ButtonState.RELEASED)
            assert len(agent.samples) > before
    assert agent.states == ["ok", "down", "ok"]
    assert src.counters["opens"] == 2
    assert len(agent.held) == 1  # the counter restarting at 0 was not taken as a repeat


@pytest.mark.asyncio
async def test_a_port_that_is_not_there_yet_is_waited_for(link: Path) -> None:
    agent = Agentish()
    src = adapter(str(link), agent)
    async with running(src):
        await until(src, lambda s: s.counters["open_failures"] >= 3)
        assert agent.states == ["down"]
        async with SerialButtonModule(link):
            await until(src, lambda s: s.state == "ok" and s.counters["lines"] >= 1)
    assert agent.states == ["down", "ok"]


@pytest.mark.asyncio
async def test_a_second_reader_cannot_steal_the_port(link: Path) -> None:
    first, second = Agentish(), Agentish()
    async with SerialButtonModule(link):
        a, b = adapter(str(link), first), adapter(str(link), second)
        async with running(a):
            await until(a, lambda s: s.state == "ok")
            async with running(b):
                await until(b, lambda s: s.counters["open_failures"] >= 2)
    assert second.samples == []


@pytest.mark.asyncio
async def test_hw_sim_serial_button_command(link: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commands = asyncio.StreamReader()
    agent = Agentish(hold_s=0.2)
    src = adapter(str(link), agent)
    async with running(src):
        sim = asyncio.create_task(run_serial_button(str(link), commands=commands))
        await until(src, lambda s: s.state == "ok")
        src.send_led(LedMode.READY)
        commands.feed_data(b"category fire\nhold 400\nbogus\n")
        await until(src, lambda s: len(agent.held) == 1 and agent.categories == ["fire"])
        commands.feed_data(b"quit\n")
        async with asyncio.timeout(TIMEOUT):
            await sim
    out = capsys.readouterr().out
    assert f"serial button module on {link}" in out
    assert "held 400 ms" in out
    assert "unknown command 'bogus'" in out
    assert "LED ready" in out
