"""What a board install weighs: ``python -m bench.install_size``.

Builds fresh venvs in a temporary directory and installs the package from this checkout into
them, bare (what the board gets) and with ``[sim]`` (the simulators, the demo, the console).
Prints each distribution's installed size (the files its RECORD lists, bytecode included) and
whether its wheel is native (holds a ``.so``). Uses pip's cache or the configured index.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASE = {"pip", "setuptools"}  # what `python -m venv` puts there anyway
SOURCES = ("pyproject.toml", "README.md", "agent", "hw_sim", "config")  # what the build reads

PROBE = """
import json, importlib.metadata as md
out = {}
for dist in md.distributions():
    files = [f for f in dist.files or () if f.locate().is_file()]
    out[dist.metadata["Name"]] = {
        "bytes": sum(f.locate().stat().st_size for f in files),
        "native": any(f.suffix == ".so" for f in files),
    }
print(json.dumps(out))
"""


def measure(work: Path, name: str, target: str) -> dict[str, dict[str, object]]:
    env_dir = work / name
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, target], check=True, cwd=work)
    done = subprocess.run([str(python), "-c", PROBE], check=True, capture_output=True, text=True)
    sizes: dict[str, dict[str, object]] = json.loads(done.stdout)
    return {k: v for k, v in sizes.items() if k not in BASE}


def mb(n: float) -> str:
    return f"{n / 1e6:6.2f} MB"


def report(title: str, dists: dict[str, dict[str, object]]) -> int:
    total = sum(int(str(d["bytes"])) for d in dists.values())
    print(f"\n{title}: {len(dists)} distributions, {mb(total)}")
    for name, d in sorted(dists.items(), key=lambda kv: -int(str(kv[1]["bytes"]))):
        print(f"  {name:<26}{mb(int(str(d['bytes'])))}{'  native' if d['native'] else ''}")
    return total


def copy_sources(to: Path) -> None:
    """A clean copy, so that pip's in-tree build leaves no build/ in the checkout."""
    to.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(REPO / name, to / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(REPO / name, to / name)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="install-size-") as tmp:
        work = Path(tmp)
        copy_sources(work / "src")
        bare = measure(work, "bare", str(work / "src"))
        sim = measure(work, "sim", f"{work / 'src'}[sim]")
    report("bare (pip install .)", bare)
    report("[sim] adds", {k: v for k, v in sim.items() if k not in bare})
    return 0


if __name__ == "__main__":
    sys.exit(main())
