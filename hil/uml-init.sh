#!/bin/bash
# PID 1 inside the User-Mode Linux kernel booted by hil/run-in-uml.sh (via hil/lib.sh).
# Not meant to be run by hand.
#
# The kernel passes HIL_RUNDIR (a host directory, seen through hostfs) in our
# environment. That directory holds, written by the host side:
#   params   bash: HIL_CWD, HIL_CMD=(...), HIL_MODDIR, HIL_HIL_DIR, HIL_TMP,
#            HIL_INTERACTIVE, HIL_OUT_TTY, HIL_ERR_TTY, HIL_ROWS, HIL_COLS,
#            HIL_EXTRA_MODULES, HIL_HOSTNAME, HIL_UBD0_MOUNT, HIL_UBD0_FSTYPE
#   env      bash: "export NAME=value" lines, the caller's variables to pass on
# and we write into it:
#   booted       as soon as we run (proves the kernel booted and hostfs works)
#   setup-error  one line, if preparing the machine failed (CMD then not run)
#   status       CMD's exit status, once it has finished
# Our own stdout/stderr is the kernel console (tty1), which the host logs to a
# file; CMD's stdout goes to tty0 and its stderr to tty2, which the host wires
# to its own stdout and stderr.

# shellcheck disable=SC2153  # the HIL_* variables come from $R/params
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
R=${HIL_RUNDIR:?HIL_RUNDIR not set on the kernel command line}

poweroff() {
    sync
    python3 -c 'import ctypes, os; os.sync(); ctypes.CDLL(None, use_errno=True).reboot(0x4321fedc)'
    echo o >/proc/sysrq-trigger 2>/dev/null
    sleep 5
    exit 1 # last resort: the kernel panics and the UML process ends anyway
}

fail() {
    echo "HIL init: setup failed: $*"
    printf '%s\n' "$*" >&8
    poweroff
}

echo booted >"$R/booted" || poweroff
exec 8>"$R/setup-error" || poweroff
echo "HIL init: running, rundir $R"

# Read everything we need from the run directory now: some of the mounts
# below (tmpfs on /tmp) may hide it later.
# shellcheck source=/dev/null
source "$R/params" || fail "cannot read $R/params"
ENVDATA=$(<"$R/env") || fail "cannot read $R/env"
exec 9>"$R/status" || fail "cannot create $R/status"

mountpoint -q /proc || mount -t proc proc /proc || fail "mount /proc"
mountpoint -q /sys || mount -t sysfs sysfs /sys || fail "mount /sys"
# CONFIG_DEVTMPFS_MOUNT normally gives us a devtmpfs on /dev; never write
# into the host's /dev (hostfs) below.
if [ "$(stat -f -c %T /dev)" != devtmpfs ] && [ "$(stat -f -c %T /dev)" != tmpfs ]; then
    mount -t devtmpfs devtmpfs /dev || fail "mount devtmpfs on /dev"
fi
mount -t tmpfs -o mode=0755 tmpfs /run || fail "mount tmpfs on /run"
mkdir -p /dev/shm /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm || fail "mount tmpfs on /dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts || fail "mount devpts"
ln -sf pts/ptmx /dev/ptmx || fail "symlink /dev/ptmx"
if [ "$HIL_TMP" = tmpfs ]; then
    mount -t tmpfs -o mode=1777 tmpfs /tmp || fail "mount tmpfs on /tmp"
fi
mkdir -p /run/lock
hostname "${HIL_HOSTNAME:-hil-uml}" 2>/dev/null

# shellcheck disable=SC2086  # HIL_EXTRA_MODULES is a word list
python3 "$HIL_HIL_DIR/loadmod.py" "$HIL_MODDIR" can can-raw can-bcm can-dev vcan "?ipv6" "?sch_netem" "?sch_prio" "?cls_u32" $HIL_EXTRA_MODULES ||
    fail "loading CAN modules from $HIL_MODDIR (see console log)"
ip link set lo up || fail "ip link set lo up"
ip link add dev vcan0 type vcan || fail "ip link add dev vcan0 type vcan"
ip link set up vcan0 || fail "ip link set up vcan0"
if [ -n "${HIL_UBD0_MOUNT:-}" ]; then
    # The kernel replays the journal of a filesystem that was not unmounted (a power cut).
    mkdir -p "$HIL_UBD0_MOUNT" || fail "mkdir $HIL_UBD0_MOUNT"
    mount -t "$HIL_UBD0_FSTYPE" /dev/ubda "$HIL_UBD0_MOUNT" ||
        fail "mount -t $HIL_UBD0_FSTYPE /dev/ubda $HIL_UBD0_MOUNT (see console log)"
fi
echo "HIL init: machine ready; running: ${HIL_CMD[*]}"

if [ "$HIL_INTERACTIVE" = 1 ]; then
    # The host terminal is in raw mode and wired to tty0 both ways; keep onlcr.
    OUT=/dev/tty0 ERR=/dev/tty0 IN=/dev/tty0
else
    # The host side reads tty0/tty2 through pipes: send bytes as they are.
    stty -F /dev/tty0 -onlcr -echo 2>/dev/null
    stty -F /dev/tty2 -onlcr -echo 2>/dev/null
    OUT=/dev/tty0 ERR=/dev/tty2 IN=/dev/null
fi
if [ -n "$HIL_ROWS" ]; then # the caller's terminal size
    stty -F /dev/tty0 rows "$HIL_ROWS" cols "$HIL_COLS" 2>/dev/null
fi

# When the caller's stdout/stderr is not a terminal, CMD must not see one
# either (colours, progress bars, buffering): give it pipes, copied to the
# tty by cat. When it is a terminal, CMD writes to the tty directly.
pids=()
if [ "$HIL_INTERACTIVE" != 1 ] && [ "$HIL_OUT_TTY" != 1 ]; then
    mkfifo /run/hil-stdout && { cat </run/hil-stdout >"$OUT" & pids+=($!); } && OUT=/run/hil-stdout
fi
if [ "$HIL_INTERACTIVE" != 1 ] && [ "$HIL_ERR_TTY" != 1 ]; then
    mkfifo /run/hil-stderr && { cat </run/hil-stderr >"$ERR" & pids+=($!); } && ERR=/run/hil-stderr
fi

(
    # Only the variables the host chose to pass on.
    for v in $(compgen -e); do unset "$v" 2>/dev/null; done
    eval "$ENVDATA"
    cd "$HIL_CWD" || { echo "HIL: cannot cd to $HIL_CWD inside UML" >&2; exit 125; }
    if [ "$HIL_INTERACTIVE" = 1 ]; then
        exec setsid -c -w -- "${HIL_CMD[@]}"
    fi
    exec "${HIL_CMD[@]}"
) <"$IN" >"$OUT" 2>"$ERR"
rc=$?
echo "HIL init: command exited with status $rc"

# Let the copies drain; a daemon that CMD left running may still hold the
# pipes open, so do not wait for it for ever.
for _ in $(seq 50); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
done
[ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null
# Wait until the console has handed everything to the host.
python3 - <<'EOF' 2>/dev/null
import os, termios
for tty in ("/dev/tty0", "/dev/tty2"):
    fd = os.open(tty, os.O_WRONLY | os.O_NOCTTY)
    termios.tcdrain(fd)
    os.close(fd)
EOF

if [ -n "${HIL_UBD0_MOUNT:-}" ]; then
    umount "$HIL_UBD0_MOUNT" || { echo "HIL init: umount $HIL_UBD0_MOUNT failed"; rc=125; }
fi
echo "$rc" >&9
exec 9>&-
poweroff
