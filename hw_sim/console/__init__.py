"""See it work: the simulated car and the operator's console in a browser.

A local web page over the same simulators the tests use. The car panel presses CONNECT (mouse,
touch or keyboard), shows the LED as the roof module sees it on the CAN bus and sets the
signals the agent reads; the operator panel is the simulated assistance backend: each request
as a card with an offline map, the answers ``received``/``assigned``/``closed``/``rejected``,
and every agent's retained status.

* :class:`ConsoleServer` serves the page on top of running simulators.
* :func:`run_console` is ``hw-sim console``: its own backend on any broker, optionally a car
  on a CAN bus and a fake gpsd.
* :func:`run_web_demo` is ``hw-sim demo --web``: the whole loop and the page.

Built on aiohttp (HTTP and WebSocket in one asyncio package, no ASGI server); the page is plain
HTML, CSS and JavaScript served from ``static/``, with no build step and nothing from the
network.
"""

from hw_sim.console.run import run_console, run_web_demo, web_demo
from hw_sim.console.server import ConsoleServer

__all__ = ["ConsoleServer", "run_console", "run_web_demo", "web_demo"]
