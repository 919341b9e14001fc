"""Configuration: precedence, and errors that name the file, the key and the expectation."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from agent import config
from agent.cli import main
from agent.config import checks
from agent.config.checks import Ctx
from agent.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DBC = ROOT / "config" / "connect.dbc"

GOOD = f"""
[can]
interface = "virtual"
channel = "test"
dbc = "{DBC}"

[mqtt]
host = "127.0.0.1"
port = 1883
tls = false
allow_insecure = true

[vehicle]
vin = "YSMFD3KA5PL012345"
registration_country = "CH"
first_registration = 2024-03-15

[contact]
name = "Anna Muster"
phone = "+41 79 123 45 67"
email = "anna.muster@example.ch"

[state]
directory = "state"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_good_config_loads_with_defaults(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, GOOD), environ={})
    assert cfg.button.hold_ms == 2000
    assert cfg.button.cancel_window_s == 8.0
    assert cfg.button.deliver_timeout_s == 60.0
    assert cfg.mqtt.protocol == "5"
    assert cfg.mqtt.topic_root == "assistance/v1"
    assert cfg.state_dir == tmp_path / "state"  # relative to the file
    assert cfg.vehicle.first_registration is not None
    assert cfg.vehicle.first_registration.isoformat() == "2024-03-15"


def test_precedence_cli_over_env_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    env = {"CONNECT_AGENT__MQTT__PORT": "1884", "CONNECT_AGENT__BUTTON__HOLD_MS": "2500"}
    cfg = config.load(path, environ=env, overrides={"mqtt.port": "1885"})
    assert cfg.mqtt.port == 1885
    assert cfg.button.hold_ms == 2500


def test_the_example_config_is_complete_and_valid_but_for_its_certificates() -> None:
    example = ROOT / "config" / "connect-agent.example.toml"
    with pytest.raises(ConfigError, match=r"mqtt\.ca_file"):
        config.load(example, environ={})
    cfg = config.load(
        example,
        environ={},
        overrides={"mqtt.tls": "false", "mqtt.allow_insecure": "true", "mqtt.host": "::1"},
    )
    assert cfg.contact.phone and cfg.contact.email
    assert cfg.vehicle.vin == "YSMFD3KA5PL012345"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("[mqtt]", "[mqtt]\nhots = 'x'"), "unknown key 'mqtt.hots'"),
        (("[mqtt]", "[mqtt]\nkeepalive_s = 'soon'"), "key 'mqtt.keepalive_s': expected an integer"),
        (
            ("[mqtt]", "[mqtt]\nkeepalive_s = 60"),
            "key 'mqtt.keepalive_s': expected an integer from 5 to 30",
        ),
        (
            ("YSMFD3KA5PL012345", "YSMFD3KA5PL01234O"),
            "key 'vehicle.vin': expected a valid 17-character VIN",
        ),
        (("YSMFD3KA5PL012345", "1M8GDM9A1KP042788"), "check digit"),
        (
            ('phone = "+41 79 123 45 67"\nemail = "anna.muster@example.ch"', ""),
            "at least one of them",
        ),
        ((str(DBC), "/nonexistent/matrix.dbc"), "key 'can.dbc': cannot read DBC file"),
        (('host = "127.0.0.1"', 'host = "bad host!"'), "key 'mqtt.host': expected a host name"),
        (("port = 1883", "port = 70000"), "key 'mqtt.port': expected an integer from 1 to 65535"),
        (
            ('host = "127.0.0.1"', 'host = "broker.example.com"'),
            "only allowed to a broker on loopback",
        ),
        (("allow_insecure = true", "allow_insecure = false"), "unencrypted"),
        (('registration_country = "CH"', 'registration_country = "Schweiz"'), "ISO 3166-1"),
        (("first_registration = 2024-03-15", 'first_registration = "15.03.2024"'), "a date"),
        (("[vehicle]", "vehicle = 1\n[vehicle2]"), "unknown key"),
        (("[can]", "[can\n"), "not valid TOML"),
    ],
)
def test_errors_name_file_key_and_expectation(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    old, new = change
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        config.load(path, environ={})
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_personal_data_never_in_error_messages(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('"anna.muster@example.ch"', '"anna.muster-at-example"'))
    with pytest.raises(ConfigError) as info:
        config.load(path, environ={})
    assert "anna.muster" not in str(info.value)
    assert "contact.email" in str(info.value)


def test_unknown_env_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'mqtt\.hots'"):
        config.load(write(tmp_path, GOOD), environ={"CONNECT_AGENT__MQTT__HOTS": "x"})


def test_check_config_prints_masked_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONNECT_AGENT__MQTT__HOST", raising=False)
    assert main(["check-config", "--config", str(write(tmp_path, GOOD))]) == 0
    out = capsys.readouterr().out
    shown = json.loads(out)
    assert shown["mqtt"]["host"] == "127.0.0.1"
    for secret in ("Anna Muster", "79 123 45 67", "anna.muster@example.ch"):
        assert secret not in out
    assert shown["contact"]["name"] == "A***"


def test_check_config_exits_2_on_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, GOOD.replace("[mqtt]", "[mqtt]\nbogus = 1"))
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err
    assert "unknown key 'mqtt.bogus'" in err
    assert main(["check-config", "--config", str(tmp_path / "missing.toml")]) == 2
    assert main(["check-config", "--config", str(path), "--set", "nonsense"]) == 2


@pytest.mark.parametrize(
    "host",
    ["broker", "mqtt.connectassistance.example.com", "a-b.c0.example.", "x" * 63 + ".example"],
)
def test_host_names_accepted(host: str) -> None:
    assert config.is_hostname(host)


@pytest.mark.parametrize(
    "host",
    [
        "",
        "-a.example",
        "a-.example",
        "a..b",
        "x" * 64 + ".example",
        "1.2.3",
        "a_b.example",
        "host:8883",
        ("a" * 60 + ".") * 5,
    ],
)
def test_host_names_refused(host: str) -> None:
    assert not config.is_hostname(host)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"broker.example.com"', [("broker.example.com", 1883)]),
        ('"broker.example.com:8883"', [("broker.example.com", 8883)]),
        ('["n1:8883", "n2", "10.0.0.3:1884"]', [("n1", 8883), ("n2", 1883), ("10.0.0.3", 1884)]),
        ('["::1", "[::1]:1884"]', [("::1", 1883), ("::1", 1884)]),
    ],
)
def test_host_is_one_broker_or_a_list_of_nodes(
    tmp_path: Path, value: str, expected: list[tuple[str, int | None]]
) -> None:
    # the check itself: a remote broker needs TLS files, which this test does not make
    parsed = checks.brokers(tomllib.loads(f"host = {value}")["host"], Ctx(tmp_path, "h", False))
    assert [(b.host, b.port or 1883) for b in parsed] == expected


def test_host_list_from_the_environment_is_comma_separated(tmp_path: Path) -> None:
    loaded = config.load(
        write(tmp_path, GOOD),
        environ={"CONNECT_AGENT__MQTT__HOST": "127.0.0.1:1884, localhost"},
    )
    assert list(loaded.mqtt.endpoints()) == [("127.0.0.1", 1884), ("localhost", 1883)]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"broker.example.com:0"', "a port from 1 to 65535"),
        ('"broker.example.com:http"', "a port from 1 to 65535 after ':'"),
        ('["n1", "n1"]', "each broker once (n1 is listed twice)"),
        ("[]", "at least one broker"),
        ('["n1", 5]', "a non-empty string"),
        ("[" + ", ".join(f'"n{i}"' for i in range(17)) + "]", "at most 16 brokers"),
        ('"[::1"', "a host name or IP address"),
        ("5", "a list of them"),
    ],
)
def test_bad_host_lists_are_refused_with_the_key(tmp_path: Path, value: str, message: str) -> None:
    path = write(tmp_path, GOOD.replace('host = "127.0.0.1"', f"host = {value}"))
    with pytest.raises(ConfigError, match=r"key 'mqtt.host'") as info:
        config.load(path, environ={})
    assert message in str(info.value)


def test_plain_tcp_needs_every_node_on_loopback(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('host = "127.0.0.1"', 'host = ["127.0.0.1", "n2:1883"]'))
    with pytest.raises(ConfigError, match=r"only allowed to a broker on loopback, got 'n2:1883'"):
        config.load(path, environ={})


def test_host_check_is_linear_in_the_length(tmp_path: Path) -> None:
    # The old single regex backtracked exponentially on a long dotted name (22 s before the
    # error). Each label is now checked by one bounded regex, so the work is linear. The check
    # is structural (a subprocess would time the host).
    long_bad = "a." * 120 + "example.com:8883"
    assert not config.is_hostname(long_bad)
    assert not config.is_hostname("a." * 200 + "-bad")


@pytest.mark.parametrize(
    ("value", "from_text", "expected"),
    [(0, False, 0.0), (0.25, False, 0.25), ("0", True, 0.0), ("0.0", True, 0.0), ("5", True, 5.0)],
)
def test_off_or_a_number(tmp_path: Path, value: object, from_text: bool, expected: float) -> None:
    check = checks.off_or_number(0.05, 5)
    assert check(value, Ctx(tmp_path, "mqtt.loss_probe_s", from_text)) == expected


@pytest.mark.parametrize(
    ("value", "from_text"), [(0.01, False), (6, False), (True, False), ("x", True), ("0", False)]
)
def test_off_or_a_number_refuses(tmp_path: Path, value: object, from_text: bool) -> None:
    check = checks.off_or_number(0.05, 5)
    expected = r"key 'k': expected 0 \(off\) or a number from 0.05 to 5"
    with pytest.raises(ConfigError, match=expected):
        check(value, Ctx(tmp_path, "k", from_text))
