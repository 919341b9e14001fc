#!/usr/bin/env python3
"""Load kernel modules without modprobe, for the UML init (hil/uml-init.sh).

usage: loadmod.py MODDIR NAME...      e.g. loadmod.py /…/modules/7.2.7 can can-raw vcan ?ipv6

MODDIR is the unpacked /usr/lib/uml/modules/<version> directory of the UML
kernel. Each NAME ("can-raw" or "can_raw") is looked up in MODDIR/modules.dep;
its dependencies are loaded first, in the order modules.dep gives. A NAME
written "?name" is optional: skipped when modules.dep does not list it (e.g.
built into the kernel). Loading
uses finit_module(2) through ctypes (x86-64 syscall 313). A module that is
already loaded (EEXIST) counts as success. Exit status: 0 when every module is
loaded, 1 otherwise (with a message on stderr).
"""

import ctypes
import errno
import os
import sys

SYS_FINIT_MODULE = 313  # x86-64

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _norm(name: str) -> str:
    return name.replace("-", "_")


def read_deps(moddir: str) -> dict[str, tuple[str, list[str]]]:
    """Map normalised module name -> (relative path, [dependency paths])."""
    deps: dict[str, tuple[str, list[str]]] = {}
    with open(os.path.join(moddir, "modules.dep"), encoding="utf-8") as fh:
        for line in fh:
            path, _, rest = line.partition(":")
            path = path.strip()
            if not path:
                continue
            base = os.path.basename(path)
            for suffix in (".ko", ".ko.xz", ".ko.gz", ".ko.zst"):
                if base.endswith(suffix):
                    base = base[: -len(suffix)]
                    break
            deps[_norm(base)] = (path, rest.split())
    return deps


def finit_module(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        ret = _libc.syscall(SYS_FINIT_MODULE, fd, b"", 0)
        if ret != 0:
            err = ctypes.get_errno()
            if err != errno.EEXIST:
                raise OSError(err, f"finit_module({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    moddir, names = argv[1], argv[2:]
    try:
        deps = read_deps(moddir)
    except OSError as exc:
        print(f"loadmod: cannot read modules.dep: {exc}", file=sys.stderr)
        return 1
    by_path = {path: name for name, (path, _) in deps.items()}
    done: set[str] = set()
    order: list[str] = []
    for arg in names:
        optional = arg.startswith("?")
        name = arg.lstrip("?")
        key = _norm(name)
        if key not in deps and optional:
            continue
        if key not in deps:
            print(f"loadmod: module {name!r} not found in {moddir}/modules.dep", file=sys.stderr)
            return 1
        path, dep_paths = deps[key]
        # modules.dep lists the dependencies so that the last one is loaded first.
        for rel in [*reversed(dep_paths), path]:
            if rel not in done:
                done.add(rel)
                order.append(rel)
    for rel in order:
        try:
            finit_module(os.path.join(moddir, rel))
        except OSError as exc:
            print(f"loadmod: {exc}", file=sys.stderr)
            return 1
        print(f"loadmod: loaded {by_path.get(rel, rel)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
