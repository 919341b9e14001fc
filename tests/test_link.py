"""The TCP link simulator on real loopback sockets: pass, delay/loss, freeze, cut."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from hw_sim.link import Link, LinkMode, parse_command

SILENCE_S = 0.5  # how long "nothing arrives" is watched for


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
    writer.close()


@pytest_asyncio.fixture
async def link() -> AsyncIterator[Link]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with Link(port, seed=7) as link:
        yield link
    server.close()


async def _open(link: Link) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", link.port)


async def _roundtrip(link: Link, payload: bytes) -> bytes:
    reader, writer = await _open(link)
    try:
        writer.write(payload)
        await writer.drain()
        async with asyncio.timeout(20):
            return await reader.readexactly(len(payload))
    finally:
        writer.close()


@pytest.mark.asyncio
async def test_pass_forwards_both_ways(link: Link) -> None:
    assert await _roundtrip(link, b"hello") == b"hello"


@pytest.mark.asyncio
async def test_delay_jitter_and_loss_keep_every_byte_in_order(link: Link) -> None:
    link.set_mode(LinkMode(delay_s=0.01, jitter_s=0.01, loss=0.2))
    reader, writer = await _open(link)
    sent = bytearray()
    got = bytearray()
    try:
        async with asyncio.timeout(60):
            for _ in range(25):  # one chunk a round trip, so each one rolls the dice
                chunk = os.urandom(100)
                sent += chunk
                writer.write(chunk)
                await writer.drain()
                got += await reader.readexactly(len(chunk))
    finally:
        writer.close()
    assert bytes(got) == bytes(sent)
    assert link.counters["lost_chunks"] > 0


@pytest.mark.asyncio
async def test_freeze_keeps_old_connections_silent_and_open_while_new_ones_work(
    link: Link,
) -> None:
    reader, writer = await _open(link)
    writer.write(b"before")
    await writer.drain()
    assert await reader.readexactly(6) == b"before"
    assert link.freeze() == 1
    writer.write(b"after")
    await writer.drain()
    with pytest.raises(TimeoutError):  # no data, no FIN (b""), no RST (an OSError)
        async with asyncio.timeout(SILENCE_S):
            await reader.read(100)
    assert not reader.at_eof()
    assert await _roundtrip(link, b"fresh") == b"fresh"  # a new connection gets through
    writer.close()


@pytest.mark.asyncio
async def test_cut_resets_open_connections(link: Link) -> None:
    reader, writer = await _open(link)
    writer.write(b"x")
    await writer.drain()
    assert await reader.readexactly(1) == b"x"
    assert link.cut() == 1
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(10):
            await reader.read(100)
            writer.write(b"y")  # a reset shows on the next read or write
            await writer.drain()
            await reader.read(100)
    writer.close()
    assert await _roundtrip(link, b"again") == b"again"


def test_stdin_commands() -> None:
    mode = LinkMode()
    assert parse_command("delay 200 20", mode) == LinkMode(delay_s=0.2, jitter_s=0.02)
    assert parse_command("loss 0.05", mode) == LinkMode(loss=0.05)
    assert parse_command("loss 2", mode) is None
    assert parse_command("freeze", mode) == "freeze"
    assert parse_command("bogus", mode) is None
