"""The daemon apart from its simulators (issue 17): ``agent/`` imports nothing from ``hw_sim``,
and a bare ``pip install`` carries only what ``connect-agent run`` imports.

The static test reads every module under ``agent/`` with :mod:`ast`. The install test builds a
fresh venv and installs the bare package from a copy of the sources into it, as a board would:
about 20 s with a warm pip cache on 2 cores (pip fetches from the configured index otherwise).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AGENT = ROOT / "agent"

# Top-level import names of the bare `dependencies` in pyproject.toml.
BOARD_IMPORTS = {"can", "cantools", "paho", "serial", "isotp"}
# What the simulators, the console and the tests need, never the daemon.
NOT_ON_THE_BOARD = {"hw_sim", "aiohttp", "jsonschema", "rpds", "udsoncan", "playwright"}
# What the build needs: the rest of the checkout (tests, docs, bench, .venv) stays out.
SOURCES = ("pyproject.toml", "README.md", "agent", "hw_sim", "config")


def imports(path: Path) -> set[str]:
    """The top-level names ``path`` imports, at any depth (lazy imports in functions too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def agent_modules() -> list[Path]:
    return sorted(p for p in AGENT.rglob("*.py") if p.parent.name != "data")


def test_agent_imports_only_the_stdlib_itself_and_the_board_dependencies() -> None:
    modules = agent_modules()
    assert len(modules) > 20, modules
    allowed = set(sys.stdlib_module_names) | BOARD_IMPORTS | {"agent"}
    forbidden = {str(p.relative_to(ROOT)): imports(p) & NOT_ON_THE_BOARD for p in modules}
    assert {k: v for k, v in forbidden.items() if v} == {}
    foreign = {str(p.relative_to(ROOT)): imports(p) - allowed for p in modules}
    assert {k: v for k, v in foreign.items() if v} == {}
    mentions = [str(p.relative_to(ROOT)) for p in modules if "hw_sim" in p.read_text("utf-8")]
    assert mentions == []


def _run(*argv: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env | {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"},
    )


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with ``pip install <copy of the sources>``: no extras. Its ``bin/``."""
    work = tmp_path_factory.mktemp("bare")
    source = work / "src"
    source.mkdir()
    for name in SOURCES:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(
                origin,
                source / name,
                symlinks=True,
                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
            )
        else:
            shutil.copy2(origin, source / name)
    venv.create(work / "venv", with_pip=True)
    bin_dir = work / "venv" / "bin"
    done = _run(bin_dir / "python", "-m", "pip", "install", "--quiet", source)
    assert done.returncode == 0, done.stdout + done.stderr
    return bin_dir


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_a_bare_install_lacks_the_simulators_dependencies(bare_venv: Path) -> None:
    absent = sorted(NOT_ON_THE_BOARD - {"hw_sim"})  # hw_sim ships, its dependencies do not
    probe = "import importlib.util as u, sys; print([n for n in sys.argv[1:] if u.find_spec(n)])"
    done = _run(bare_venv / "python", "-c", probe, *absent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_bare_install_imports_every_agent_module(bare_venv: Path) -> None:
    """Everything ``connect-agent run`` may import (``run`` imports ``agent.app`` lazily)."""
    names = sorted(module_name(p) for p in agent_modules() if p.stem != "__main__")
    probe = "import importlib, sys; [importlib.import_module(n) for n in sys.argv[1:]]; print('ok')"
    done = _run(bare_venv / "python", "-c", probe, *names)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert {"agent.app", "agent.cli", "agent.uplink", "agent.inputs.can_bus"} <= set(names)


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_a_bare_install_runs_connect_agent(bare_venv: Path, command: str) -> None:
    done = _run(bare_venv / "connect-agent", command, "--help")
    assert done.returncode == 0, done.stderr
    assert "--config" in done.stdout


def test_a_bare_install_ships_the_example_trace_and_the_timed_dbc(bare_venv: Path) -> None:
    probe = (
        "import importlib.resources as r; d = r.files('hw_sim') / 'data'; "
        "print((d / 'traces' / 'simulated-car.log').read_text().count('3A1#'), "
        "(d / 'connect.dbc').read_text().count('BA_ \"GenMsgCycleTime\"'))"
    )
    done = _run(bare_venv / "python", "-c", probe)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == ["54", "6"]
