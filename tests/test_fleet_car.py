"""A fleet car against a scripted broker: a SUBACK 0x80 (NATS when its JetStream consumer for the
subscription is not created within its 4 s, under load) makes the car SUBSCRIBE again on the same
connection; without that the session has no subscription and no ack ever comes."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from hw_sim.fleet import FleetCar
from hw_sim.mqtt_codec import PacketType, decode_subscribe, encode_packet, read_packet


class ScriptedBroker:
    """CONNACK to every CONNECT; SUBACK with ``codes[n]`` to the n-th SUBSCRIBE (then 0x01)."""

    def __init__(self, codes: list[int]) -> None:
        self.codes = codes
        self.subscribes: list[str] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        finally:
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                kind, _, body = await read_packet(reader, 1 << 16)
                if kind == PacketType.CONNECT:
                    writer.write(encode_packet(PacketType.CONNACK, 0, b"\x00\x00"))
                elif kind == PacketType.SUBSCRIBE:
                    subscribe = decode_subscribe(body, 4)
                    code = self.codes.pop(0) if self.codes else 1
                    self.subscribes.append(subscribe.requests[0].topic_filter)
                    writer.write(
                        encode_packet(
                            PacketType.SUBACK,
                            0,
                            subscribe.packet_id.to_bytes(2, "big") + bytes([code]),
                        )
                    )


async def run_car(
    codes: list[int], want: int, **options: object
) -> tuple[FleetCar, ScriptedBroker]:
    broker = ScriptedBroker(codes)
    server = await asyncio.start_server(broker.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    car = FleetCar("VIN0001", [("127.0.0.1", port)], **options)  # type: ignore[arg-type]
    task = asyncio.create_task(car.run())
    try:
        for _ in range(500):  # 5 s at most
            if car.subacks >= want:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        car.stop()
        server.close()
        await server.wait_closed()
    return car, broker


@pytest.mark.asyncio
async def test_a_refused_subscribe_is_sent_again_until_granted() -> None:
    car, broker = await run_car([0x80, 0x80, 0x01], 3, suback_retry_s=(0.01, 0.02))
    assert broker.subscribes == ["assistance/v1/VIN0001/ack"] * 3
    assert (car.connects, car.suback_failures, car.suback_retries) == (1, 2, 2)
    assert car.suback_codes == [0x80, 0x80, 0x01]


@pytest.mark.asyncio
async def test_without_the_retry_a_refused_subscribe_stays_refused() -> None:
    car, broker = await run_car([0x80], 1, suback_retry=False)
    assert broker.subscribes == ["assistance/v1/VIN0001/ack"]
    assert (car.suback_failures, car.suback_retries) == (1, 0)
    assert car._suback_timer is None  # nothing scheduled: no second SUBSCRIBE will come
