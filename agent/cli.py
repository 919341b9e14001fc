"""Command line: ``connect-agent run | check-config`` (the demo is ``hw-sim demo``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from agent import __version__, config
from agent.config import Config, effective
from agent.errors import AgentError, ConfigError
from agent.privacy import config_file_warnings
from agent.tls import CLOCK_HINT, CertificateTimeError, check_tls_files
from agent.wallclock import SystemClock

log = logging.getLogger("agent")

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="connect-agent",
        description="The in-car agent behind the roadside-assistance CONNECT button.",
    )
    parser.add_argument("--version", action="version", version=f"connect-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def config_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", "-c", type=Path, required=True, help="the TOML configuration")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override one key, e.g. --set mqtt.host=127.0.0.1 (beats env and file)",
        )

    run = sub.add_parser("run", help="run the agent (the systemd service does this)")
    config_args(run)
    check = sub.add_parser("check-config", help="validate a configuration and print it")
    config_args(check)
    return parser


def _load(args: argparse.Namespace) -> Config:
    return config.load(args.config, overrides=config.parse_set(args.set))


# syslog priorities (sd-daemon(3)): journald reads a leading "<N>" on a stream line as the level.
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class JournalFormatter(logging.Formatter):
    """Prefix every line with its syslog priority, so `journalctl -p warning` works."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 7 if record.levelno < logging.INFO else 4)
        text = super().format(record)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines() or [""])


def setup_logging(level: str, environ: Mapping[str, str] = os.environ) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if environ.get("JOURNAL_STREAM"):
        # journald stamps its own time; the priority prefix sets the level.
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level), handlers=[handler])


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-config":
            cfg = _load(args)
            if cfg.mqtt.tls:
                check_tls_files(
                    cfg.mqtt.ca_file, cfg.mqtt.cert_file, cfg.mqtt.key_file, source=cfg.source
                )
            for warning in config_file_warnings(cfg.source):
                print(f"warning: {warning}", file=sys.stderr)
            print(json.dumps(effective(cfg), indent=2, default=str))
            print(f"{cfg.source}: OK", file=sys.stderr)
            return 0
        if args.command == "run":
            cfg = _load(args)
            setup_logging(cfg.log_level)
            for warning in config_file_warnings(cfg.source):
                log.warning("%s", warning)
            if cfg.mqtt.tls:
                try:
                    check_tls_files(
                        cfg.mqtt.ca_file, cfg.mqtt.cert_file, cfg.mqtt.key_file, source=cfg.source
                    )
                except CertificateTimeError as exc:
                    # The clock may be unset (no RTC, no NTP yet): start anyway, calls queue.
                    trusted = SystemClock(flag=cfg.clock.synchronized_file).source == "system"
                    hint = "" if trusted else f"; the system clock is not trusted: {CLOCK_HINT}"
                    log.warning("%s%s", exc, hint)
            return asyncio.run(_run(cfg))
    except ConfigError as exc:
        print(f"connect-agent: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except AgentError as exc:
        print(f"connect-agent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


async def _run(cfg: Config) -> int:
    from agent.app import Agent  # noqa: PLC0415 - keeps check-config fast

    agent = Agent(cfg)
    stop = asyncio.Event()
    agent.install_signal_handlers(stop)
    await agent.run(stop)
    return 0
