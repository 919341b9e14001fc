"""The agent with an onlooker: the calls it stored, what it delivered, and waiting on its
state. For the scenario, the demo, the benchmarks and the tests; the daemon runs without."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from agent.app import Agent
from agent.inputs.can_bus import CanInput
from agent.inputs.uds import UdsClient
from agent.observer import CallRecord
from agent.waiters import Waiters
from hw_sim.matrix import LedMode

KEEP_RECORDS = 1000  # calls and deliveries remembered


class Recorder:
    def __init__(self) -> None:
        self.calls: deque[CallRecord] = deque(maxlen=KEEP_RECORDS)
        self.deliveries: dict[tuple[str, str, int], float] = {}  # (kind, id, seq) -> monotonic
        self._changed = Waiters()

    def call_stored(self, record: CallRecord) -> None:
        self.calls.append(record)
        self._changed.notify()

    def delivered(self, kind: str, incident_id: str, sequence: int, at: float) -> None:
        self.deliveries[(kind, incident_id, sequence)] = at
        if len(self.deliveries) > KEEP_RECORDS:
            del self.deliveries[next(iter(self.deliveries))]
        self._changed.notify()

    def changed(self) -> None:
        self._changed.notify()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until ``predicate()`` holds, re-checking on every state change."""
        await self._changed.wait(predicate, timeout)


class ObservedAgent(Agent):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.recorder = Recorder()
        super().__init__(*args, observer=self.recorder, **kwargs)

    # the car's side and the presenter's, as the simulators and tests know them
    @property
    def can(self) -> CanInput:
        return self.car.can

    @property
    def uds(self) -> UdsClient:
        return self.car.uds

    @property
    def matrix(self) -> Any:
        """The agent's own codec (for tests that watch what it decodes), not the simulators'."""
        return self.car.matrix

    @property
    def vin(self) -> str:
        return self.car.vin

    @property
    def vin_source(self) -> str:
        return self.car.vin_source

    @property
    def led_mode(self) -> LedMode:
        """The mode the agent shows, as the simulators' enum (SPEC §2 codes)."""
        return LedMode(int(self.presenter.led_mode))

    @property
    def update_interval_s(self) -> float:
        return self.policy.update_interval_s

    @update_interval_s.setter
    def update_interval_s(self, value: float) -> None:
        self.policy.update_interval_s = value

    @property
    def calls(self) -> deque[CallRecord]:
        return self.recorder.calls

    @property
    def deliveries(self) -> dict[tuple[str, str, int], float]:
        return self.recorder.deliveries

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        await self.recorder.wait_until(predicate, timeout)

    async def wait_gps_fix(self, timeout: float) -> bool:
        """Wait until gpsd reports a fix; False when none came within ``timeout``."""
        try:
            await self.wait_until(lambda: self.location.gps_state == "fix", timeout)
        except TimeoutError:
            return False
        return True
