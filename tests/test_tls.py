"""Mutual TLS: the file checks, and the real agent against a real Mosquitto TLS listener.

Certificates are made at test time with the ``openssl`` command: a CA, a broker certificate
for localhost/127.0.0.1, one for another host name, client certificates (good, expired, not
yet valid, from another CA). Mosquitto listens three times on loopback: plain TCP for the
simulated backend (it has no TLS), mutual TLS with the right broker certificate, and mutual
TLS with a certificate for the wrong host.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from peers import free_port, require, wait_listening

from agent import config as config_module
from agent.config import Config
from agent.core.frames import LedMode
from agent.errors import ConfigError, UplinkError
from agent.tls import CertificateTimeError, certificate_validity, check_tls_files, client_context
from hw_sim.gpsd import FakeGpsd
from hw_sim.link import Link
from hw_sim.observed import ObservedAgent as Agent
from hw_sim.scenario import VIN, Scenario, config_text

TIMEOUT = 15.0

OPENSSL_CNF = """\
[req]
distinguished_name = req_dn
prompt = no
[req_dn]
CN = unused

[ca]
default_ca = CA_default
[CA_default]
database = $ENV::CA_DIR/index.txt
new_certs_dir = $ENV::CA_DIR
serial = $ENV::CA_DIR/serial
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
[policy_any]
commonName = supplied

[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[wronghost_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:broker.invalid
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclasses.dataclass(frozen=True)
class Pki:
    directory: Path

    def __getattr__(self, name: str) -> Path:
        # pki.client_crt -> <dir>/client.crt
        stem, _, suffix = name.rpartition("_")
        if not stem or suffix not in ("crt", "key"):
            raise AttributeError(name)
        return self.directory / f"{stem}.{suffix}"


class OpenSsl:
    def __init__(self, directory: Path) -> None:
        self.binary = require("openssl")
        self.directory = directory
        self.cnf = directory / "openssl.cnf"
        self.cnf.write_text(OPENSSL_CNF)

    def run(self, *args: str, ca_dir: Path | None = None) -> None:
        env = {**os.environ, "CA_DIR": str(ca_dir or self.directory)}
        subprocess.run(
            [self.binary, *args],
            cwd=self.directory,
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
        )

    def new_key(self, name: str) -> None:
        self.run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-out", f"{name}.key")  # fmt: skip

    def ca(self, name: str) -> None:
        self.new_key(name)
        (self.directory / f"{name}-db").mkdir()
        (self.directory / f"{name}-db/index.txt").write_text("")
        (self.directory / f"{name}-db/serial").write_text("1000\n")
        self.run("req", "-x509", "-new", "-config", str(self.cnf), "-extensions", "ca_ext",
                 "-key", f"{name}.key", "-subj", f"/CN=connect-agent test {name}",
                 "-days", "30", "-out", f"{name}.crt")  # fmt: skip

    def leaf(self, name: str, ca: str, ext: str, cn: str, *dates: str) -> None:
        self.new_key(name)
        self.run("req", "-new", "-config", str(self.cnf), "-key", f"{name}.key",
                 "-subj", f"/CN={cn}", "-out", f"{name}.csr")  # fmt: skip
        validity = list(dates) if dates else ["-days", "30"]
        self.run("ca", "-batch", "-config", str(self.cnf), "-notext", "-cert", f"{ca}.crt",
                 "-keyfile", f"{ca}.key", "-extensions", ext, "-in", f"{name}.csr",
                 "-out", f"{name}.crt", *validity,
                 ca_dir=self.directory / f"{ca}-db")  # fmt: skip


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    """Every certificate the tests need, in a directory the mosquitto user can read."""
    directory = Path(tempfile.mkdtemp(prefix="connect-agent-pki-"))
    try:
        directory.chmod(0o755)  # mosquitto started as root drops to user mosquitto
        o = OpenSsl(directory)
        o.ca("ca")
        o.ca("otherca")
        o.leaf("server", "ca", "server_ext", "localhost")
        o.leaf("wronghost", "ca", "wronghost_ext", "broker.invalid")
        o.leaf("notyet", "ca", "server_ext", "localhost",
               "-startdate", "20991231000000Z", "-enddate", "21000101000000Z")  # fmt: skip
        o.leaf("client", "ca", "client_ext", VIN)
        o.leaf("expired", "ca", "client_ext", VIN,
               "-startdate", "20200101000000Z", "-enddate", "20200201000000Z")  # fmt: skip
        o.leaf("future", "ca", "client_ext", VIN,
               "-startdate", "20991231000000Z", "-enddate", "21000101000000Z")  # fmt: skip
        o.leaf("stranger", "otherca", "client_ext", VIN)
        for path in directory.glob("*.key"):
            # the broker's keys must be readable by the mosquitto user; the agent's are 0600
            client = path.stem in ("client", "expired", "future", "stranger")
            path.chmod(0o600 if client else 0o644)
        yield Pki(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- check_tls_files --------------------------------------------------------------------------


def test_good_files_pass(pki: Pki) -> None:
    check_tls_files(pki.ca_crt, pki.client_crt, pki.client_key)


def test_validity_is_read_as_openssl_reads_it(pki: Pki) -> None:
    openssl = require("openssl")
    for name in ("ca", "client", "expired", "future", "server"):
        crt = pki.directory / f"{name}.crt"
        out = subprocess.run(
            [openssl, "x509", "-in", str(crt), "-noout", "-startdate", "-enddate"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        dates = dict(line.split("=", 1) for line in out.splitlines())
        expected = tuple(
            datetime.strptime(dates[k], "%b %d %H:%M:%S %Y GMT").replace(tzinfo=UTC)
            for k in ("notBefore", "notAfter")
        )
        assert certificate_validity(crt.read_bytes()) == expected, name
    _, not_after = certificate_validity(pki.future_crt.read_bytes())
    assert not_after.year == 2100  # GeneralizedTime (from 2050 on), not UTCTime


def copy_with_mode(source: Path, directory: Path, mode: int) -> Path:
    target = directory / source.name
    shutil.copyfile(source, target)
    target.chmod(mode)
    return target


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing_ca", "key 'mqtt.ca_file': .*missing.crt does not exist"),
        ("missing_cert", "key 'mqtt.cert_file': .*missing.crt does not exist"),
        ("missing_key", "key 'mqtt.key_file': .*missing.key does not exist"),
        ("none_key", "key 'mqtt.key_file' is required"),
        ("directory", "key 'mqtt.ca_file': .* is not a regular file"),
        ("key_0644", r"accessible to group or others \(mode 0644\)"),
        ("key_0640", r"accessible to group or others \(mode 0640\)"),
        ("expired", "expired on 2020-02-01 00:00 UTC"),
        ("future", "not valid before 2099-12-31 00:00 UTC .*clock"),
        ("other_key", "does not belong to the certificate"),
        ("rsa_key", "does not belong to the certificate"),
        ("encrypted_key", "pass phrase"),
        ("key_as_cert", "key 'mqtt.cert_file': .* holds no usable PEM certificate"),
        ("garbage_ca", "key 'mqtt.ca_file': .* holds no usable PEM certificate"),
    ],
)
def test_bad_files_are_named_with_the_problem(
    pki: Pki, tmp_path: Path, case: str, expected: str
) -> None:
    ca, cert, key = pki.ca_crt, pki.client_crt, pki.client_key
    if case == "missing_ca":
        ca = tmp_path / "missing.crt"
    elif case == "missing_cert":
        cert = tmp_path / "missing.crt"
    elif case == "missing_key":
        key = tmp_path / "missing.key"
    elif case == "none_key":
        key = None  # type: ignore[assignment]
    elif case == "directory":
        ca = tmp_path
    elif case.startswith("key_0"):
        key = copy_with_mode(pki.client_key, tmp_path, int(case[4:], 8))
    elif case in ("expired", "future"):
        cert, key = pki.directory / f"{case}.crt", pki.directory / f"{case}.key"
    elif case == "other_key":
        key = pki.stranger_key
    elif case == "rsa_key":
        key = tmp_path / "rsa.key"
        subprocess.run(
            [require("openssl"), "genpkey", "-algorithm", "RSA", "-out", str(key)],
            check=True,
            capture_output=True,
        )
        key.chmod(0o600)
    elif case == "encrypted_key":
        key = tmp_path / "encrypted.key"
        subprocess.run(
            [require("openssl"), "pkey", "-in", str(pki.client_key), "-aes256",
             "-passout", "pass:secret", "-out", str(key)],
            check=True,
            capture_output=True,
        )  # fmt: skip
        key.chmod(0o600)
    elif case == "key_as_cert":
        cert = pki.client_key
    elif case == "garbage_ca":
        ca = tmp_path / "garbage.crt"
        ca.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match=expected):
        check_tls_files(ca, cert, key, source=Path("/etc/connect-agent/agent.toml"))


def test_messages_start_with_the_config_file(pki: Pki) -> None:
    with pytest.raises(CertificateTimeError, match=r"^/etc/connect-agent/agent.toml: key "):
        check_tls_files(
            pki.ca_crt,
            pki.expired_crt,
            pki.expired_key,
            source=Path("/etc/connect-agent/agent.toml"),
        )


def test_validity_is_checked_against_the_given_time(pki: Pki) -> None:
    check_tls_files(
        pki.ca_crt, pki.expired_crt, pki.expired_key, now=datetime(2020, 1, 15, tzinfo=UTC)
    )


@pytest.mark.parametrize("name", ["expired", "future"])
def test_the_time_check_can_be_left_to_the_caller(pki: Pki, name: str) -> None:
    cert, key = pki.directory / f"{name}.crt", pki.directory / f"{name}.key"
    check_tls_files(pki.ca_crt, cert, key, check_time=False)
    with pytest.raises(CertificateTimeError):
        check_tls_files(pki.ca_crt, cert, key)


def test_an_unreadable_key_is_reported(pki: Pki, tmp_path: Path) -> None:
    """As the agent's unprivileged user meets a key it may not read.

    Root reads everything: as root, the check runs in a child without the capabilities that
    bypass file permissions (setpriv, util-linux), on a key owned by nobody.
    """
    key = copy_with_mode(pki.client_key, tmp_path, 0o600)
    if os.geteuid() != 0:
        key.chmod(0)
        with pytest.raises(ConfigError, match=r"key 'mqtt\.key_file': cannot read .*denied"):
            check_tls_files(pki.ca_crt, pki.client_crt, key)
        return
    os.chown(key, 65534, 65534)
    code = (
        "import sys; from pathlib import Path; from agent.tls import check_tls_files\n"
        "from agent.errors import ConfigError\n"
        "try: check_tls_files(*map(Path, sys.argv[1:]))\n"
        "except ConfigError as e: print(e)\n"
    )
    result = subprocess.run(
        [require("setpriv"), "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search",
         sys.executable, "-c", code, str(pki.ca_crt), str(pki.client_crt), str(key)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        check=False,
        timeout=60,
    )  # fmt: skip
    assert "key 'mqtt.key_file': cannot read" in result.stdout, result
    assert "Permission denied" in result.stdout


def test_client_context_is_strict(pki: Pki) -> None:
    context = client_context(pki.ca_crt, pki.client_crt, pki.client_key)
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    with pytest.raises(UplinkError, match="cannot set up TLS"):
        client_context(pki.ca_crt, pki.client_crt, pki.stranger_key)


# -- against Mosquitto ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Broker:
    plain: int  # the simulated backend's way in
    tls: int  # mutual TLS, broker certificate for localhost and 127.0.0.1
    wrong_host: int  # mutual TLS, broker certificate for broker.invalid
    not_yet: int  # mutual TLS, broker certificate valid from 2099 on


@pytest.fixture
def broker(pki: Pki) -> Iterator[Broker]:
    binary = require("mosquitto")
    ports = Broker(free_port(), free_port(), free_port(), free_port())
    conf = pki.directory / f"mosquitto-{ports.tls}.conf"

    def tls_listener(port: int, server: str) -> list[str]:
        return [
            f"listener {port} 127.0.0.1",
            f"cafile {pki.ca_crt}",
            f"certfile {pki.directory / server}.crt",
            f"keyfile {pki.directory / server}.key",
            "require_certificate true",
            "tls_version tlsv1.2",
        ]

    lines = [
        "per_listener_settings false",
        "allow_anonymous true",
        "persistence false",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        f"listener {ports.plain} 127.0.0.1",
        *tls_listener(ports.tls, "server"),
        *tls_listener(ports.wrong_host, "wronghost"),
        *tls_listener(ports.not_yet, "notyet"),
    ]
    conf.write_text("\n".join(lines) + "\n")
    conf.chmod(0o644)
    log = (pki.directory / f"mosquitto-{ports.tls}.log").open("wb")  # its refusals, if needed
    process = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=log)
    try:
        for port in (ports.plain, ports.tls, ports.wrong_host, ports.not_yet):
            wait_listening(port)
        yield ports
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def tls_overrides(pki: Pki, port: int, host: str = "localhost") -> dict[str, str]:
    return {
        "mqtt.host": host,
        "mqtt.port": str(port),
        "mqtt.tls": "true",
        "mqtt.allow_insecure": "false",
        "mqtt.ca_file": str(pki.ca_crt),
        "mqtt.cert_file": str(pki.client_crt),
        "mqtt.key_file": str(pki.client_key),
    }


@pytest.mark.asyncio
@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_a_call_is_delivered_over_mutual_tls(
    tmp_path: Path, pki: Pki, broker: Broker, fake_gpsd: FakeGpsd, host: str
) -> None:
    overrides = tls_overrides(pki, broker.tls, host)
    async with Scenario(tmp_path, broker.plain, fake_gpsd.port, overrides=overrides) as sim:
        assert sim.config.mqtt.tls and sim.config.mqtt.port == broker.tls
        await sim.car.hold(2100)
        [request] = await sim.backend.wait_for("request", 1, timeout=TIMEOUT)
        await sim.led.wait_for(LedMode.CONNECTED, timeout=TIMEOUT)
        assert sim.agent.outbox.count() == 0
    assert request.payload["vehicle"]["vin"] == VIN
    assert sim.backend.invalid == []


class Warnings(logging.Handler):
    """Collects one logger's warnings and wakes a waiter on each."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self._loop.call_soon_threadsafe(self.changed.set)

    async def wait_for(self, text: str, count: int) -> list[str]:
        async with asyncio.timeout(TIMEOUT):
            while len(found := [m for m in self.messages if text in m]) < count:
                self.changed.clear()
                await self.changed.wait()
        return found


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[tuple[Agent, asyncio.Task[None], Warnings]]:
    agent = Agent(config)
    warnings = Warnings()
    logger = logging.getLogger("agent.uplink")
    logger.addHandler(warnings)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop), name="agent")
    try:
        yield agent, task, warnings
    finally:
        stop.set()
        try:
            async with asyncio.timeout(TIMEOUT):
                await task
        finally:
            logger.removeHandler(warnings)


def tls_config(tmp_path: Path, pki: Pki, port: int, **mqtt: object) -> Config:
    path = tmp_path / "agent.toml"
    path.write_text(
        config_text(tmp_path / "state", port, free_port(), channel=f"tls-{tmp_path.name}")
    )
    config = config_module.load(path, environ={}, overrides=tls_overrides(pki, port))
    # Built after loading: the files are broken on purpose, past the config checks.
    mqtt = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.2, **mqtt}
    return dataclasses.replace(config, mqtt=dataclasses.replace(config.mqtt, **mqtt))


# case: (listener, changes to the mqtt config, what the agent's log says). The broker speaks
# TLS 1.3 (Mosquitto's tls_version is a minimum): it checks our certificate after our side of
# the handshake is done, so those refusals arrive as an alert on the first read.
REFUSALS = {
    "wrong_ca": ("tls", {"ca_file": "otherca.crt"}, "certificate verify failed"),
    "hostname_mismatch": ("wrong_host", {}, "Hostname mismatch"),
    "expired_client_cert": (
        "tls",
        {"cert_file": "expired.crt", "key_file": "expired.key"},
        "alert certificate expired",
    ),
    "client_cert_from_another_ca": (
        "tls",
        {"cert_file": "stranger.crt", "key_file": "stranger.key"},
        "alert unknown ca",
    ),
    "no_client_cert": ("tls", {"cert_file": None, "key_file": None}, "certificate required"),
    "plain_broker": ("plain", {}, "Connection reset by peer"),
}
BROKER_REFUSALS = ("expired_client_cert", "client_cert_from_another_ca", "no_client_cert")


async def refused(tmp_path: Path, pki: Pki, broker: Broker, case: str) -> list[str]:
    """Run the agent against a TLS setup that must fail; returns its uplink warnings."""
    listener, changes, expected = REFUSALS[case]
    mqtt = {k: None if v is None else pki.directory / str(v) for k, v in changes.items()}
    config = tls_config(tmp_path, pki, getattr(broker, listener), **mqtt)
    async with running(config) as (agent, task, warnings):
        await warnings.wait_for(expected, 1)
        await agent.wait_until(lambda: agent.uplink.attempts >= 3, TIMEOUT)
        assert not task.done(), "the agent must keep running"
        assert not agent.uplink.connected
        assert agent.uplink.connects == 0
    return warnings.messages


@pytest.mark.asyncio
@pytest.mark.parametrize("case", list(REFUSALS))
async def test_a_refused_tls_connection_is_reported_and_retried(
    tmp_path: Path, pki: Pki, broker: Broker, case: str
) -> None:
    await refused(tmp_path, pki, broker, case)


@pytest.mark.asyncio
async def test_the_shipped_uplink_closes_the_socket_of_a_failed_handshake(
    tmp_path: Path, pki: Pki, broker: Broker
) -> None:
    await refused(tmp_path, pki, broker, "wrong_ca")
    leaked = [
        sock for sock in gc.get_objects() if isinstance(sock, ssl.SSLSocket) and sock.fileno() != -1
    ]
    for sock in leaked:
        sock.close()  # so that no ResourceWarning lands in another test
    assert leaked == []


@pytest.mark.asyncio
@pytest.mark.parametrize("case", BROKER_REFUSALS)
async def test_the_uplink_warning_names_the_broker_refusal(
    tmp_path: Path, pki: Pki, broker: Broker, case: str
) -> None:
    messages = await refused(tmp_path, pki, broker, case)
    [unavailable] = [m for m in messages if "unavailable" in m]
    assert REFUSALS[case][2] in unavailable


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"mqtt.tls": "false"}, "plain TCP sends the driver's data unencrypted"),
        (
            {"mqtt.tls": "false", "mqtt.allow_insecure": "true", "mqtt.host": "broker.example"},
            "only allowed to a broker on loopback",
        ),
    ],
)
def test_plain_tcp_needs_allow_insecure_and_loopback(
    tmp_path: Path, changes: dict[str, str], expected: str
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(config_text(tmp_path / "state", 1883, 2947))
    base = {"mqtt.allow_insecure": "false"}
    with pytest.raises(ConfigError, match=expected):
        config_module.load(path, environ={}, overrides={**base, **changes})
    allowed = config_module.load(
        path, environ={}, overrides={"mqtt.tls": "false", "mqtt.allow_insecure": "true"}
    )
    assert not allowed.mqtt.tls


@pytest.mark.asyncio
async def test_a_reconnection_resumes_the_tls_session(
    tmp_path: Path, pki: Pki, broker: Broker, fake_gpsd: FakeGpsd
) -> None:
    """A link cut (RST) under a TLS connection: the next handshake resumes the session (one
    round trip fewer, no certificates sent), and a call still gets through."""
    async with Link(broker.tls) as link:
        overrides = tls_overrides(pki, link.port)
        async with Scenario(tmp_path, broker.plain, fake_gpsd.port, overrides=overrides) as sim:
            uplink = sim.agent.uplink
            connects = uplink.connects
            assert link.cut() >= 1
            await sim.agent.wait_until(lambda: uplink.connects > connects, TIMEOUT)
            assert uplink.counters.get("tls_resumed", 0) >= 1
            await sim.car.hold(2100)
            await sim.backend.wait_for("request", 1, timeout=TIMEOUT)
            await sim.led.wait_for(LedMode.CONNECTED, timeout=TIMEOUT)


@pytest.mark.asyncio
@pytest.mark.parametrize("synchronised", [False, True])
async def test_a_broker_certificate_refused_on_its_dates_by_an_untrusted_clock_is_a_clock_problem(
    tmp_path: Path, pki: Pki, broker: Broker, synchronised: bool
) -> None:
    """systemd-timesyncd runs (its directory exists) and has not set the clock yet: OpenSSL's
    "not yet valid" is then reported as the clock's problem, with the hint; once the flag is
    there, the same refusal is the certificate's own and reported as before."""
    timesync = tmp_path / "timesync"
    timesync.mkdir()
    if synchronised:
        (timesync / "synchronized").touch()
    config = tls_config(tmp_path, pki, broker.not_yet)
    clock = dataclasses.replace(config.clock, synchronized_file=timesync / "synchronized")
    config = dataclasses.replace(config, clock=clock)
    async with running(config) as (agent, task, warnings):
        await agent.wait_until(lambda: agent.uplink.attempts >= 3, TIMEOUT)
        assert not task.done() and agent.uplink.connects == 0
        source = agent.clock.source
        errors = agent.presenter.status("online")["counters"].get("tls_clock_errors", 0)
    if synchronised:
        assert source == "system" and errors == 0
        [unavailable] = [m for m in warnings.messages if "unavailable" in m]
        assert "certificate is not yet valid" in unavailable
    else:
        assert source == "unsynced" and errors >= 3
        [problem] = [m for m in warnings.messages if "clock problem" in m]  # once an outage
        assert "the broker's certificate is not yet valid by the system clock" in problem
        assert "not trusted" in problem and "docs/deploy.md" in problem
        assert not [m for m in warnings.messages if "unavailable" in m]
