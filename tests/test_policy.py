"""The call policy and the incident restore: pure, driven with a clock of our own."""

from __future__ import annotations

from datetime import UTC, datetime

from agent.core.incident import Ack, IncidentController, SendCancel, SendRequest, resumed
from agent.core.policy import CallPolicy

T0 = datetime(2026, 12, 2, 21, 30, tzinfo=UTC)
PLACE = {"lat": 47.37, "lon": 8.54, "fix": "3d", "trusted": True}


def opened(policy: CallPolicy, now: float = 100.0) -> SendRequest:
    [action] = policy.incidents.on_hold(now, T0, 2000, "can")
    assert isinstance(action, SendRequest)
    payload = {
        "incident_id": action.incident_id,
        "sequence": action.sequence,
        "created_at": "2026-12-02T21:30:00.000Z",
        "trigger": {"source": "can", "held_ms": 2000, "driver_category": None},
        "location": dict(PLACE),
        "vehicle_state": {"speed_kmh": 0},
    }
    sent = policy.request_sent(payload, now)
    assert (sent.kind, sent.incident_id, sent.sequence) == ("request", action.incident_id, 1)
    return action


def new_policy() -> CallPolicy:
    controller = IncidentController(cancel_window_s=10, deliver_timeout_s=15)
    return CallPolicy(controller, ack_timeout_s=30, update_interval_s=10)


def test_a_request_is_repeated_only_after_the_ack_timeout_and_until_an_ack() -> None:
    policy = new_policy()
    action = opened(policy)
    assert policy.repeat(101.0) is None  # not delivered yet: the outbox resends, not us
    policy.incidents.on_delivered(action.incident_id, 1)
    policy.request_delivered(101.0)
    assert policy.repeat(130.0) is None  # 29 s without an answer
    repeat = policy.repeat(131.5)
    assert repeat is not None
    assert (repeat.kind, repeat.incident_id, repeat.sequence) == ("request", action.incident_id, 1)
    assert repeat.payload["location"] == PLACE  # the same request, byte for byte
    assert policy.repeat(140.0) is None  # the next one after another ack_timeout_s
    assert policy.repeat(161.5) is not None
    policy.incidents.on_ack(Ack(action.incident_id, "received"), 162.0)
    assert policy.repeat(500.0) is None


def test_updates_count_up_and_wait_for_a_change_and_the_interval() -> None:
    policy = new_policy()
    action = opened(policy)
    same = dict(PLACE)
    assert policy.update(150.0, T0, same, {"speed_kmh": 0}) is None  # nothing changed
    moved = {**PLACE, "lat": 47.38}  # about 1.1 km
    assert policy.update(105.0, T0, moved, {"speed_kmh": 0}) is None  # within 10 s
    first = policy.update(111.0, T0, moved, {"speed_kmh": 0})
    assert first is not None
    assert (first.kind, first.incident_id, first.sequence) == ("update", action.incident_id, 1)
    second = policy.update(125.0, T0, moved, {"speed_kmh": 3})
    assert second is not None and second.sequence == 2


def test_no_update_without_an_incident_and_the_cancel_has_the_incident_key() -> None:
    policy = new_policy()
    assert policy.update(100.0, T0, dict(PLACE), {}) is None
    action = opened(policy)
    [cancel] = policy.incidents.on_hold(103.0, T0, 2000, "can")
    assert isinstance(cancel, SendCancel)
    message = policy.cancel(cancel)
    assert (message.kind, message.incident_id, message.sequence) == (
        "cancel",
        action.incident_id,
        1,
    )
    assert policy.update(200.0, T0, {**PLACE, "lat": 48.0}, {}) is None


def test_a_restored_incident_keeps_its_age_and_what_was_undelivered() -> None:
    wall = T0.timestamp()
    incident = resumed(
        "id-1",
        3,
        opened_wall=wall - 120,
        acked=True,
        undelivered_wall={3: wall - 5},
        now=1000.0,
        wall_now=wall,
    )
    assert incident.opened_at == 880.0
    assert incident.opened_utc == datetime.fromtimestamp(wall - 120, UTC)
    assert (incident.sequence, incident.acked) == (3, True)
    assert incident.undelivered == {3: 995.0}
    # a wall clock that went back since: the age is zero, never negative
    back = resumed(
        "id-1", 1, opened_wall=wall + 60, acked=False, undelivered_wall={}, now=10, wall_now=wall
    )
    assert back.opened_at == 10


def test_after_a_restart_the_repeat_is_rebuilt_from_its_key_alone() -> None:
    """Nothing personal is kept on disk for a repeat (SPEC §6): the policy asks for the request
    to be gathered again, with the same key, created_at and trigger."""
    policy = new_policy()
    action = opened(policy)
    policy.incidents.on_delivered(action.incident_id, 1)
    key = policy.repeat_key()
    assert key is not None
    assert (key.incident_id, key.sequence, key.held_ms, key.source) == (
        action.incident_id,
        1,
        2000,
        "can",
    )
    assert key.created_at == datetime(2026, 12, 2, 21, 30, tzinfo=UTC)
    restarted = new_policy()
    restarted.incidents.incident = policy.incidents.incident
    restarted.restore(action.incident_id, 3, key, now=500.0)
    assert restarted.repeat(520.0) is None  # ack_timeout_s from the restart
    again = restarted.repeat(531.0)
    assert again == key  # to be built again
    assert restarted.update_sequence(action.incident_id) == 3
    policy.incidents.on_ack(Ack(action.incident_id, "received"), 600.0)
    assert policy.repeat_key() is None  # acknowledged: nothing to keep
