"""E2E protection and the matrix codec, checked against bytes computed from the SPEC."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.core.e2e import AliveCounter, E2EReceiver, E2EResult, crc8_sae_j1850, protect
from agent.core.frames import (
    ASSIST_CATEGORY,
    CONNECT_BUTTON,
    SAFETY_STATUS,
    TYRE_PRESSURE,
    VEHICLE_STATUS,
    ButtonFrame,
    ButtonState,
    CategoryFrame,
    LedMode,
    Matrix,
    Rejected,
    SafetyStatus,
    TyrePressure,
    VehicleStatus,
    decode_led,
    load_dbc,
)
from agent.errors import ConfigError

DBC = Path(__file__).resolve().parent.parent / "config" / "connect.dbc"


@pytest.fixture
def matrix() -> Matrix:
    return Matrix.from_file(DBC)


def test_crc_check_value() -> None:
    assert crc8_sae_j1850(b"123456789") == 0x4B
    assert crc8_sae_j1850(b"") == 0x00  # init 0xFF xor-out 0xFF


def test_protect_sets_counter_and_crc() -> None:
    frame = protect(bytes([0x10, 0, 0, 0, 0, 0, 0]), 7)
    assert frame[1] == 0x17
    assert frame[0] == crc8_sae_j1850(frame[1:])


def test_receiver_rejects_bad_crc_and_repeated_counter() -> None:
    rx = E2EReceiver()
    first = protect(bytes([0x10, 0, 0, 0, 0, 0, 0]), 3)
    assert rx.check(first) is E2EResult.OK
    assert rx.check(first) is E2EResult.REPEATED_COUNTER
    assert rx.check(protect(bytes([0x10, 0, 0, 0, 0, 0, 0]), 9)) is E2EResult.OK  # jump is fine
    corrupt = bytearray(protect(bytes([0x10, 0, 0, 0, 0, 0, 0]), 10))
    corrupt[3] ^= 0x01
    assert rx.check(corrupt) is E2EResult.BAD_CRC


def test_alive_counter_wraps() -> None:
    counter = AliveCounter(14)
    assert [counter.next() for _ in range(4)] == [14, 15, 0, 1]


def test_button_frame_layout_matches_spec(matrix: Matrix) -> None:
    # byte1 bits 4-5 ConnectButton = 1 (pressed), alive counter 0 in bits 0-3.
    body = bytes([0x10, 0, 0, 0, 0, 0, 0])
    expected = bytes([crc8_sae_j1850(body), *body])
    assert matrix.encode_button(ButtonState.PRESSED) == expected
    assert matrix.decode(CONNECT_BUTTON, expected) == ButtonFrame(ButtonState.PRESSED)


def test_led_frame_layout_matches_spec(matrix: Matrix) -> None:
    frame = matrix.encode_led(LedMode.CANCELLED)
    assert frame[1] >> 4 == 5
    assert frame[0] == crc8_sae_j1850(frame[1:])
    assert decode_led(frame) is LedMode.CANCELLED
    assert decode_led(frame[:7]) is None


def test_vehicle_status_layout_and_not_available(matrix: Matrix) -> None:
    # 12.34 V -> 1234 = 0x04D2 little-endian; SoC n/a 0xFF; range 300 = 0x012C;
    # ignition on (2) | hazard (bit3) | key (bit5) = 0x2A; speed n/a 0xFF.
    data = bytes([0xD2, 0x04, 0xFF, 0x2C, 0x01, 0x2A, 0xFF, 0x00])
    decoded = matrix.decode(VEHICLE_STATUS, data)
    assert decoded == VehicleStatus(12.34, None, 300, "on", False, True, False, True, None)
    assert matrix.encode_vehicle_status(decoded) == data


def test_tyres_and_safety_layout(matrix: Matrix) -> None:
    assert matrix.decode(TYRE_PRESSURE, bytes([125, 126, 0xFF, 60])) == TyrePressure(
        250, 252, None, 120
    )
    data = bytes([0b0100_0101, 0x40, 0xE2, 0x01, 0x00, 3, 0, 0])  # airbag, major crash, immob.
    assert matrix.decode(SAFETY_STATUS, data) == SafetyStatus(
        True, 2, False, False, False, True, 123456, 3
    )


def test_category(matrix: Matrix) -> None:
    assert matrix.decode(ASSIST_CATEGORY, bytes([8, 0])) == CategoryFrame("fire")
    assert matrix.decode(ASSIST_CATEGORY, bytes([0, 0])) == CategoryFrame(None)
    assert matrix.decode(ASSIST_CATEGORY, bytes([9, 0])) == Rejected(ASSIST_CATEGORY, "bad_value")


@pytest.mark.parametrize(
    ("frame_id", "data", "reason"),
    [
        (CONNECT_BUTTON, bytes(7), "bad_dlc"),
        (TYRE_PRESSURE, bytes(8), "bad_dlc"),
        (CONNECT_BUTTON, bytes(8), "bad_crc"),
        (0x123, bytes(8), "unknown_id"),
        (0x3A2, bytes(8), "unknown_id"),  # our own LED frame is not an input
    ],
)
def test_garbage_is_rejected_not_raised(
    matrix: Matrix, frame_id: int, data: bytes, reason: str
) -> None:
    assert matrix.decode(frame_id, data) == Rejected(frame_id, reason)


def test_unreadable_or_incomplete_dbc(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_dbc(tmp_path / "missing.dbc")
    broken = tmp_path / "broken.dbc"
    broken.write_text("this is not a DBC {")
    with pytest.raises(ConfigError, match="not a valid DBC"):
        load_dbc(broken)
    partial = tmp_path / "partial.dbc"
    partial.write_text(DBC.read_text().split("BO_ 930")[0])
    with pytest.raises(ConfigError, match="lacks frame CONNECT_LED"):
        load_dbc(partial)
