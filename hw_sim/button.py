"""The CONNECT button of a simulated module, whichever way it reports (CAN frame or serial
line): a state, a silent switch, and a timed hold."""

from __future__ import annotations

import asyncio
import time

from hw_sim.matrix import ButtonState


class SimulatedButton:
    """Mixed into a simulator that sends the button with ``_send_button()`` on a change."""

    button: ButtonState
    button_silent: bool

    def _send_button(self) -> None:
        raise NotImplementedError

    def set_button(self, state: int) -> None:
        state = ButtonState(state)
        changed = state != self.button
        self.button = state
        if changed and not self.button_silent:
            self._send_button()

    async def hold(self, ms: float) -> float:
        """Press CONNECT, hold it ``ms`` milliseconds, release; returns the press time."""
        pressed_at = time.monotonic()
        self.set_button(ButtonState.PRESSED)
        try:
            await asyncio.sleep(ms / 1000)
        finally:
            self.set_button(ButtonState.RELEASED)
        return pressed_at
