"""agent.waiters: every waiter re-checks on every notification, and deadlines hold."""

from __future__ import annotations

import asyncio

import pytest

from agent.waiters import Waiters


@pytest.mark.asyncio
async def test_every_waiter_wakes_on_its_own_condition() -> None:
    waiters = Waiters()
    state = {"n": 0}
    done: list[int] = []

    async def until(k: int) -> None:
        await waiters.wait(lambda: state["n"] >= k, timeout=5)
        done.append(k)

    async with asyncio.TaskGroup() as tg:
        for k in (3, 1, 2, 1):
            tg.create_task(until(k))
        for _ in range(3):
            await asyncio.sleep(0)  # a yield, not a delay: the waiters run up to their wait
            state["n"] += 1
            waiters.notify()
    assert sorted(done) == [1, 1, 2, 3]
    assert done[-1] == 3


@pytest.mark.asyncio
async def test_a_condition_that_holds_returns_at_once() -> None:
    await Waiters().wait(lambda: True, timeout=0)


@pytest.mark.asyncio
async def test_timeout_and_next() -> None:
    waiters = Waiters()
    with pytest.raises(TimeoutError):
        await waiters.wait(lambda: False, timeout=0.01)
    with pytest.raises(TimeoutError):
        await waiters.next(timeout=0.01)
    nxt = asyncio.create_task(waiters.next(timeout=5))
    await asyncio.sleep(0)
    waiters.notify()
    await nxt
