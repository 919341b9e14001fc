"""udsoncan as the oracle for UDS: its client over can-isotp's user-space stack, on a bus of
the caller's (python-can's virtual bus in tests/, vcan0 through the kernel in tests/hil/)."""

from __future__ import annotations

import can
import isotp
from udsoncan import AsciiCodec
from udsoncan.client import Client
from udsoncan.configs import default_client_config
from udsoncan.connections import PythonIsoTpConnection

from agent.inputs.uds import REQUEST_ID, RESPONSE_ID


def udsoncan_reads(bus: can.BusABC, mask: int, timeout: float) -> tuple[str, list[tuple[int, int]]]:
    """The VIN (0xF190) and the DTCs matching ``mask`` (0x19 02) as (id, status byte)."""
    stack = isotp.CanStack(
        bus,
        address=isotp.Address(
            isotp.AddressingMode.Normal_11bits, txid=REQUEST_ID, rxid=RESPONSE_ID
        ),
        params={"tx_padding": 0xCC},
    )
    config = default_client_config.copy()
    config["data_identifiers"] = {0xF190: AsciiCodec(17)}
    with Client(PythonIsoTpConnection(stack), config=config, request_timeout=timeout) as client:
        vin = client.read_data_by_identifier_first(0xF190)
        dtcs = client.get_dtc_by_status_mask(mask).service_data.dtcs
    return vin, [(d.id, d.status.get_byte_as_int()) for d in dtcs]
