"""Privacy checks of the installation (SPEC §6) that are not part of parsing the config.

The configuration file holds the driver's name, address, phone and e-mail: on the board it is
``root:connect-agent 0640``. :func:`config_file_warnings` says when it is readable or writable
by every user, or writable by its group (the agent's user could then rewrite where the
driver's data goes), so ``run`` and ``check-config`` can warn about it.
"""

from __future__ import annotations

import stat
from pathlib import Path

__all__ = ["config_file_warnings"]


def config_file_warnings(path: Path) -> list[str]:
    """What is wrong with the permissions of the configuration file at ``path``; [] if nothing.

    Messages name the file and the fix, never the personal data in it.
    """
    try:
        mode = stat.S_IMODE(Path(path).stat().st_mode)
    except OSError:
        return []  # loading the configuration reports an unreadable file
    warnings: list[str] = []
    if mode & stat.S_IROTH:
        warnings.append(
            f"{path} contains the driver's personal data and is readable by every user "
            f"(mode {mode:04o}); chmod o-rwx {path} (e.g. root:connect-agent 0640)"
        )
    if mode & (stat.S_IWOTH | stat.S_IWGRP):
        warnings.append(
            f"{path} is writable by {'every user' if mode & stat.S_IWOTH else 'its group'} "
            f"(mode {mode:04o}): whoever can write it decides where the driver's data is sent; "
            f"chmod go-w {path}"
        )
    return warnings
