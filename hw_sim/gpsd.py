"""The GPS side of the car: a route to drive, a fake gpsd that reports it, NMEA for real gpsd.

* :class:`Route` (loaded by :func:`load_route` from ``hw_sim/routes/*.json``) is a polyline
  of WGS84 points driven at a constant speed; :meth:`Route.at` interpolates along it.
* :class:`FakeGpsd` serves gpsd's JSON protocol on TCP: VERSION on connect, DEVICES + WATCH
  for ``?WATCH``, then TPV and SKY every ``interval`` seconds while the car drives the route,
  and loops or holds at its end (the car stopped on the hard shoulder). Tests steer it with
  :meth:`~FakeGpsd.set_no_fix`, :meth:`~FakeGpsd.set_position`, :meth:`~FakeGpsd.send_raw`
  and :meth:`~FakeGpsd.disconnect_clients`.
* :func:`route_to_nmea` writes the same drive as $GPRMC/$GPGGA/$GPGSA sentences, so that the
  real gpsd, fed by ``gpsfake``, reports the very same positions.

This module stands on its own (no import from ``agent``): it is the other side of the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Final, Literal

__all__ = [
    "DEFAULT_ROUTE",
    "FakeGpsd",
    "Route",
    "RoutePoint",
    "RouteSample",
    "load_route",
    "nmea_sentence",
    "route_samples",
    "route_to_nmea",
    "run_fake_gpsd",
]

from hw_sim.service import Service, cancel_tasks

log = logging.getLogger("hw_sim.gpsd")

DEFAULT_ROUTE: Final = "a1-bern-kirchberg"
EARTH_RADIUS_M: Final = 6_371_008.8
KNOT_MS: Final = 1852.0 / 3600.0
# gpsd's own 95 % user equivalent range errors without DGPS (libgpsd_core.c): epx/epy are
# XDOP/YDOP times H_UERE, eph is HDOP times P_UERE, epv VDOP times V_UERE.
H_UERE_M: Final = 15.0
P_UERE_M: Final = 19.0
V_UERE_M: Final = 23.0
GPSD_RELEASE: Final = "3.22"


# -- routes ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoutePoint:
    lat: float
    lon: float
    alt_msl_m: float


@dataclass(frozen=True, slots=True)
class RouteSample:
    """Where the car is at one moment of the drive."""

    time: datetime
    lat: float
    lon: float
    alt_msl_m: float
    track_deg: float
    speed_ms: float


def _distance(a: RoutePoint, b: RoutePoint) -> float:
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    dp, dl = p2 - p1, math.radians(b.lon - a.lon)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def _bearing(a: RoutePoint, b: RoutePoint) -> float:
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    dl = math.radians(b.lon - a.lon)
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(y, x)) % 360.0


@dataclass(frozen=True, slots=True)
class Route:
    """A drive: points in order, a constant speed, and the geoid separation of the area."""

    name: str
    points: tuple[RoutePoint, ...]
    speed_kmh: float = 100.0
    geoid_separation_m: float = 0.0  # ellipsoid height minus sea-level height, for altHAE

    def __post_init__(self) -> None:
        if len(self.points) < 2:
            raise ValueError(f"route {self.name!r} needs at least two points")
        if not self.speed_kmh > 0:
            raise ValueError(f"route {self.name!r} needs a positive speed")
        for p in self.points:
            if not (-90 <= p.lat <= 90 and -180 <= p.lon <= 180):
                raise ValueError(f"route {self.name!r} has a point out of range")

    @property
    def legs(self) -> list[float]:
        return [_distance(a, b) for a, b in zip(self.points, self.points[1:], strict=False)]

    @property
    def length_m(self) -> float:
        return sum(self.legs)

    @property
    def speed_ms(self) -> float:
        return self.speed_kmh / 3.6

    def at(self, distance_m: float) -> tuple[float, float, float, float]:
        """``(lat, lon, alt_msl_m, track_deg)`` at ``distance_m`` along the route (clamped)."""
        remaining = max(0.0, distance_m)
        legs = self.legs
        for i, leg in enumerate(legs):
            a, b = self.points[i], self.points[i + 1]
            if remaining <= leg or i == len(legs) - 1:
                f = min(1.0, remaining / leg) if leg > 0 else 1.0
                return (
                    a.lat + (b.lat - a.lat) * f,
                    a.lon + (b.lon - a.lon) * f,
                    a.alt_msl_m + (b.alt_msl_m - a.alt_msl_m) * f,
                    _bearing(a, b),
                )
            remaining -= leg
        raise AssertionError("unreachable: a route has at least one leg")


def load_route(name_or_path: str | Path = DEFAULT_ROUTE) -> Route:
    """Load a route: a name in ``hw_sim/routes`` (without ``.json``) or a path to a file.

    The file is JSON: ``{"name", "speed_kmh", "geoid_separation_m", "points": [[lat, lon,
    alt_msl_m], ...]}`` (extra keys such as a description are documentation).
    """
    if isinstance(name_or_path, Path) or "/" in name_or_path or name_or_path.endswith(".json"):
        text = Path(name_or_path).read_text(encoding="utf-8")
        where = str(name_or_path)
    else:
        resource = resources.files("hw_sim").joinpath("routes").joinpath(f"{name_or_path}.json")
        text = resource.read_text(encoding="utf-8")
        where = f"hw_sim/routes/{name_or_path}.json"
    try:
        doc = json.loads(text)
        points = tuple(RoutePoint(float(p[0]), float(p[1]), float(p[2])) for p in doc["points"])
        return Route(
            name=str(doc["name"]),
            points=points,
            speed_kmh=float(doc.get("speed_kmh", 100.0)),
            geoid_separation_m=float(doc.get("geoid_separation_m", 0.0)),
        )
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"{where}: not a valid route: {exc}") from exc


def route_samples(
    route: Route,
    *,
    start: datetime,
    step_s: float = 1.0,
    hold_s: float = 0.0,
) -> Iterator[RouteSample]:
    """The drive sampled every ``step_s`` seconds from ``start``, then ``hold_s`` standing."""
    length, speed = route.length_m, route.speed_ms
    drive_s = length / speed
    steps = math.floor((drive_s + hold_s) / step_s + 1e-9)
    for i in range(steps + 1):
        t = i * step_s
        moving = t < drive_s
        lat, lon, alt, track = route.at(min(length, t * speed))
        yield RouteSample(
            start + timedelta(seconds=t), lat, lon, alt, track, speed if moving else 0.0
        )


# -- NMEA ------------------------------------------------------------------------------------


def nmea_sentence(body: str) -> str:
    """``$<body>*HH\\r\\n`` with HH the XOR of the body's bytes."""
    checksum = 0
    for byte in body.encode("ascii"):
        checksum ^= byte
    return f"${body}*{checksum:02X}\r\n"


def _nmea_angle(value: float, degree_digits: int, hemispheres: str) -> tuple[str, str]:
    hemisphere = hemispheres[0] if value >= 0 else hemispheres[1]
    minutes_total = round(abs(value) * 60.0, 5)
    degrees, minutes = divmod(minutes_total, 60.0)
    return f"{int(degrees):0{degree_digits}d}{minutes:08.5f}", hemisphere


def route_to_nmea(
    route: Route,
    *,
    start: datetime | None = None,
    step_s: float = 1.0,
    hold_s: float = 0.0,
    hdop: float = 0.9,
    satellites: int = 8,
) -> str:
    """The drive as NMEA 0183 for gpsfake: per epoch $GPRMC, $GPGGA and $GPGSA (3D fix).

    Positions have 5 decimals of minutes (about 2 cm), so gpsd reports them to within
    1e-7 degrees of :func:`route_samples` for the same arguments. ``start`` defaults to a
    fixed time so that the output is reproducible.
    """
    start = start or datetime(2026, 11, 24, 14, 16, 0, tzinfo=UTC)
    vdop = round(hdop * 1.4, 1)
    pdop = round(math.hypot(hdop, vdop), 1)
    prns = ",".join(f"{prn:02d}" for prn in range(1, satellites + 1)) + "," * (12 - satellites)
    out: list[str] = []
    for s in route_samples(route, start=start, step_s=step_s, hold_s=hold_s):
        t = s.time.astimezone(UTC)
        hhmmss = f"{t:%H%M%S}.{t.microsecond // 10000:02d}"
        lat, ns = _nmea_angle(s.lat, 2, "NS")
        lon, ew = _nmea_angle(s.lon, 3, "EW")
        knots = s.speed_ms / KNOT_MS
        out.append(
            nmea_sentence(
                f"GPRMC,{hhmmss},A,{lat},{ns},{lon},{ew},{knots:.2f},{s.track_deg:.1f},"
                f"{t:%d%m%y},,,A"
            )
        )
        out.append(
            nmea_sentence(
                f"GPGGA,{hhmmss},{lat},{ns},{lon},{ew},1,{satellites:02d},{hdop:.1f},"
                f"{s.alt_msl_m:.1f},M,{route.geoid_separation_m:.1f},M,,"
            )
        )
        out.append(nmea_sentence(f"GPGSA,A,3,{prns},{pdop:.1f},{hdop:.1f},{vdop:.1f}"))
    return "".join(out)


# -- the fake gpsd ---------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    u = moment.astimezone(UTC)
    return f"{u:%Y-%m-%dT%H:%M:%S}.{u.microsecond // 1000:03d}Z"


def _line(report: dict[str, object]) -> bytes:
    return json.dumps(report, separators=(",", ":")).encode() + b"\n"


def _utc_now() -> datetime:
    return datetime.now(UTC)


# A fixed sky: (PRN, elevation, azimuth, signal strength).
_SKY: Final = (
    (2, 67, 48, 44),
    (5, 22, 303, 35),
    (12, 41, 112, 40),
    (13, 15, 184, 31),
    (15, 55, 245, 42),
    (18, 33, 71, 38),
    (24, 12, 15, 29),
    (25, 48, 160, 41),
)


@dataclass(slots=True)
class _Client:
    writer: asyncio.StreamWriter
    watching: bool = False


class FakeGpsd(Service):
    """gpsd's JSON protocol on ``host:port`` while the context is entered (port 0: free port).

    Every ``interval`` seconds of wall time the car advances ``step_s`` seconds along the
    route (so ``interval=0.1`` replays the drive ten times faster than life) and watching
    clients get a TPV and a SKY report. At the end of the route it loops (``loop=True``) or
    stands at the last point with speed 0. ``hdop`` sets the reported accuracy the way gpsd
    computes it (``eph`` = HDOP * 19 m): above about 7.9 a fix is no longer trusted.
    """

    def __init__(
        self,
        route: Route | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        interval: float = 1.0,
        step_s: float = 1.0,
        loop: bool = False,
        hdop: float = 0.9,
        device: str = "/dev/ttyFAKE0",
        now: Callable[[], datetime] = _utc_now,
        max_write_buffer: int = 1024 * 1024,
    ) -> None:
        if not interval > 0:
            raise ValueError("interval must be positive")
        self.route = route if route is not None else load_route()
        self.host = host
        self.port = port
        self.interval = interval
        self.step_s = step_s
        self.loop = loop
        self.device = device
        self.hdop = hdop
        self.reports_sent = 0
        self._now = now
        self._max_write_buffer = max_write_buffer
        self._distance_m = 0.0
        self._mode: Literal["route", "fixed", "no_fix"] = "route"
        self._fixed = (0.0, 0.0)
        self._clients: dict[asyncio.StreamWriter, _Client] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None or self._closed:
            raise RuntimeError("FakeGpsd can be started once")
        self._server = await asyncio.start_server(self._handle_client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ticker = asyncio.create_task(self._tick_forever(), name="fake-gpsd-ticker")
        log.info("fake gpsd on %s:%d driving %r", self.host, self.port, self.route.name)

    async def aclose(self) -> None:
        """Stop serving and close every client; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await cancel_tasks(self._ticker)
        if self._server is not None:
            self._server.close()
        await self.disconnect_clients()
        if self._server is not None:
            await self._server.wait_closed()

    # -- steering -------------------------------------------------------------------------

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def watchers(self) -> int:
        return sum(c.watching for c in self._clients.values())

    def set_no_fix(self) -> None:
        """From the next report on: TPV mode 1, no position (a tunnel, a garage)."""
        self._mode = "no_fix"

    def set_position(self, lat: float, lon: float) -> None:
        """From the next report on: a 3D fix standing at ``lat``, ``lon`` (speed 0)."""
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise ValueError("position out of range")
        self._fixed = (lat, lon)
        self._mode = "fixed"

    def follow_route(self) -> None:
        """Drive on along the route from where the car was on it."""
        self._mode = "route"

    def set_hdop(self, hdop: float) -> None:
        self.hdop = hdop

    def send_raw(self, data: bytes) -> None:
        """Write ``data`` as is to every watching client (garbage for robustness tests)."""
        for client in list(self._clients.values()):
            if client.watching:
                self._write(client, data)

    async def disconnect_clients(self) -> None:
        """Close every client connection (as if gpsd restarted); the listener stays up."""
        tasks = set(self._tasks)
        for writer in list(self._clients):
            writer.close()
        if tasks:
            # Handlers end on their own once their transport is closed; one that does not
            # is cut off.
            _, pending = await asyncio.wait(tasks, timeout=2.0)
            for writer in list(self._clients):
                writer.transport.abort()
            if pending:
                await asyncio.wait(pending)

    # -- reports --------------------------------------------------------------------------

    def _advance(self) -> None:
        if self._mode != "route":
            return
        length = self.route.length_m
        self._distance_m += self.route.speed_ms * self.step_s
        if self._distance_m >= length:
            self._distance_m = self._distance_m % length if self.loop else length

    def reports(self) -> tuple[dict[str, object], dict[str, object]]:
        """The TPV and SKY reports for the car's current state."""
        now = _iso(self._now())
        base: dict[str, object] = {"device": self.device, "time": now}
        if self._mode == "no_fix":
            tpv: dict[str, object] = {"class": "TPV", **base, "mode": 1}
            return tpv, self._sky(now, used=False)
        if self._mode == "fixed":
            lat, lon = self._fixed
            _, _, alt, _ = self.route.at(self._distance_m)
            track: float | None = None
            speed = 0.0
        else:
            lat, lon, alt, track = self.route.at(self._distance_m)
            moving = self.loop or self._distance_m < self.route.length_m
            speed = self.route.speed_ms if moving else 0.0
        xdop, ydop, vdop = self.hdop * 0.6, self.hdop * 0.8, self.hdop * 1.4
        tpv = {
            "class": "TPV",
            **base,
            "mode": 3,
            "status": 1,
            "ept": 0.005,
            "lat": round(lat, 9),
            "lon": round(lon, 9),
            "altHAE": round(alt + self.route.geoid_separation_m, 3),
            "altMSL": round(alt, 3),
            "alt": round(alt, 3),
            "epx": round(xdop * H_UERE_M, 3),
            "epy": round(ydop * H_UERE_M, 3),
            "epv": round(vdop * V_UERE_M, 3),
            "speed": round(speed, 3),
            "climb": 0.0,
            "eph": round(self.hdop * P_UERE_M, 3),
            "geoidSep": self.route.geoid_separation_m,
        }
        if track is not None:
            tpv["track"] = round(track, 4)
        return tpv, self._sky(now, used=True)

    def _sky(self, now: str, *, used: bool) -> dict[str, object]:
        vdop = self.hdop * 1.4
        return {
            "class": "SKY",
            "device": self.device,
            "time": now,
            "xdop": round(self.hdop * 0.6, 2),
            "ydop": round(self.hdop * 0.8, 2),
            "vdop": round(vdop, 2),
            "tdop": 1.0,
            "hdop": round(self.hdop, 2),
            "gdop": round(math.hypot(self.hdop, vdop, 1.0), 2),
            "pdop": round(math.hypot(self.hdop, vdop), 2),
            "nSat": len(_SKY),
            "uSat": len(_SKY) if used else 0,
            "satellites": [
                {"PRN": prn, "el": el, "az": az, "ss": ss, "used": used, "gnssid": 0, "svid": prn}
                for prn, el, az, ss in _SKY
            ],
        }

    async def _tick_forever(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            tpv, sky = self.reports()
            data = _line(tpv) + _line(sky)
            for client in list(self._clients.values()):
                if client.watching:
                    self._write(client, data)
                    self.reports_sent += 1
            self._advance()
            due += self.interval
            await asyncio.sleep(max(0.0, due - loop.time()))  # pacing, not synchronisation

    # -- clients --------------------------------------------------------------------------

    def _write(self, client: _Client, data: bytes) -> None:
        writer = client.writer
        if writer.is_closing():
            return
        writer.write(data)
        if writer.transport.get_write_buffer_size() > self._max_write_buffer:
            log.warning("fake gpsd: a client does not read; dropping it")
            writer.transport.abort()

    def _version(self) -> dict[str, object]:
        return {
            "class": "VERSION",
            "release": GPSD_RELEASE,
            "rev": f"{GPSD_RELEASE} (hw_sim)",
            "proto_major": 3,
            "proto_minor": 14,
        }

    def _devices(self) -> dict[str, object]:
        return {
            "class": "DEVICES",
            "devices": [
                {
                    "class": "DEVICE",
                    "path": self.device,
                    "driver": "NMEA0183",
                    "activated": _iso(self._now()),
                    "native": 0,
                    "bps": 9600,
                    "parity": "N",
                    "stopbits": 1,
                    "cycle": 1.0,
                }
            ],
        }

    async def _handle_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._closed:
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        client = _Client(writer)
        self._clients[writer] = client
        try:
            self._write(client, _line(self._version()))
            while True:
                line = await reader.readline()
                if not line:
                    break
                for response in self._command(client, line.decode("utf-8", "replace")):
                    self._write(client, _line(response))
        except (ConnectionError, ValueError):  # reset, or a line over the stream limit
            pass
        finally:
            self._clients.pop(writer, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._tasks.discard(task)

    def _command(self, client: _Client, text: str) -> list[dict[str, object]]:
        """gpsd's commands that a client of ours may send: ?WATCH, ?VERSION, ?DEVICES, ?POLL."""
        text = text.strip().rstrip(";")
        if not text:
            return []
        name, _, argument = text.partition("=")
        if name == "?WATCH":
            try:
                options = json.loads(argument) if argument else {}
            except ValueError:
                options = None
            if not isinstance(options, dict):
                return [{"class": "ERROR", "message": "Invalid WATCH: " + argument[:60]}]
            client.watching = bool(options.get("enable", True))
            watch = {"class": "WATCH", "enable": client.watching, "json": True}
            return [self._devices(), {**watch, "nmea": False, "raw": 0, "scaled": False}]
        if name == "?VERSION":
            return [self._version()]
        if name == "?DEVICES":
            return [self._devices()]
        if name == "?POLL":
            tpv, sky = self.reports()
            return [{"class": "POLL", "time": tpv["time"], "active": 1, "tpv": [tpv], "sky": [sky]}]
        return [{"class": "ERROR", "message": "Unrecognized request '" + name[:40] + "'"}]


async def run_fake_gpsd(
    host: str = "127.0.0.1",
    port: int = 2947,
    *,
    route: str | Path = DEFAULT_ROUTE,
    interval: float = 1.0,
    loop: bool = False,
) -> None:
    """Serve a fake gpsd driving ``route`` until cancelled (for a command line or the demo)."""
    async with FakeGpsd(load_route(route), host=host, port=port, interval=interval, loop=loop):
        await asyncio.get_running_loop().create_future()
