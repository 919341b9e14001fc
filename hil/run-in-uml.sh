#!/usr/bin/env bash
# Run a command on a Linux kernel with real SocketCAN and an up vcan0.
#
# usage: hil/run-in-uml.sh [--] CMD [ARG...]
#
# If this host already has vcan0, or can create it, CMD simply runs here.
# Otherwise a User-Mode Linux kernel (fetched and verified by hil/fetch-uml.sh)
# boots with the host's / as its root (hostfs), loads the CAN modules, brings
# up lo and vcan0, and runs CMD in the current directory. Exit status: CMD's;
# 124 if HIL_TIMEOUT ran out; 125 if the UML machine could not be prepared;
# 130 if interrupted. See hil/README.md for the environment variables.
#
# A disk: HIL_UBD0=IMAGE attaches the host file IMAGE as the block device
# /dev/ubda (always in UML, even on a host with vcan0); with HIL_UBD0_MOUNT=DIR
# (under /run inside) init mounts it there (HIL_UBD0_FSTYPE, default ext4) and
# unmounts it after CMD. A power cut: SIGUSR1 to this script SIGKILLs the whole
# UML process group at once (no sync, no unmount; the guest's page cache is
# lost) and it exits 137.
set -euo pipefail

HIL_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(dirname -- "$HIL_DIR")
CACHE=${HIL_CACHE:-$REPO/.cache/uml}

say() { printf 'HIL: %s\n' "$*" >&2; }
die() { rc=$1; shift; say "$*"; exit "$rc"; }

[ "${1:-}" = -- ] && shift
[ $# -gt 0 ] || die 2 "usage: $0 [--] CMD [ARG...]"

UBD0=${HIL_UBD0:-}
if [ -n "$UBD0" ]; then
    [ -f "$UBD0" ] || die 2 "HIL_UBD0: no such file: $UBD0"
    UBD0=$(cd -- "$(dirname -- "$UBD0")" && pwd -P)/$(basename -- "$UBD0")
    case $UBD0 in
    *[[:space:],:]*) die 2 "HIL_UBD0: a path with spaces, ',' or ':' cannot go on the kernel command line: $UBD0" ;;
    esac
fi
if [ -n "${HIL_UBD0_MOUNT:-}" ]; then
    [ -n "$UBD0" ] || die 2 "HIL_UBD0_MOUNT needs HIL_UBD0"
    case $HIL_UBD0_MOUNT in
    /run/[!/]*) ;;
    *) die 2 "HIL_UBD0_MOUNT must be a directory under /run (UML's own tmpfs), not '$HIL_UBD0_MOUNT'" ;;
    esac
fi

# --- 1. A host that has vcan itself needs no UML (unless a disk is asked for). --
if [ "${HIL_FORCE_UML:-0}" != 1 ] && [ -z "$UBD0" ] && command -v ip >/dev/null; then
    if ip link show vcan0 >/dev/null 2>&1; then
        ip link set up vcan0 2>/dev/null || true
        say "host has vcan0: running directly, without UML"
        exec "$@"
    elif ip link add dev vcan0 type vcan 2>/dev/null; then
        ip link set up vcan0 || die 125 "created vcan0 on the host but cannot set it up"
        say "created vcan0 on the host: running directly, without UML"
        exec "$@"
    fi
fi

# --- 2. A verified kernel. -------------------------------------------------
if [ -z "${HIL_UML_KERNEL:-}" ]; then
    "$HIL_DIR/fetch-uml.sh" --quiet || die 125 "UML kernel did not boot: hil/fetch-uml.sh found no usable kernel (see above)"
    # shellcheck source=/dev/null
    source "$CACHE/kernel.env"
fi
[ -x "${HIL_UML_KERNEL:-}" ] || die 125 "UML kernel did not boot: no kernel at '${HIL_UML_KERNEL:-}'"
[ -f "${HIL_UML_MODDIR:-}/modules.dep" ] || die 125 "UML kernel did not boot: no modules at '${HIL_UML_MODDIR:-}'"

TIMEOUT=${HIL_TIMEOUT:-1800}
MEM=${HIL_MEM:-1024M}
INTERACTIVE=${HIL_INTERACTIVE:-0}
if [ "$INTERACTIVE" = 1 ] && ! [ -t 0 ]; then
    die 2 "HIL_INTERACTIVE=1 needs a terminal on stdin"
fi

# UML's memory is a file in TMPDIR: tmpfs (and exec-capable) keeps it fast.
UML_TMPDIR=${HIL_UML_TMPDIR:-/dev/shm}
[ -d "$UML_TMPDIR" ] && [ -w "$UML_TMPDIR" ] || UML_TMPDIR=/tmp

mkdir -p "$CACHE"
CACHE=$(cd -- "$CACHE" && pwd -P)
RUNDIR=$(mktemp -d "$CACHE/run.XXXXXX")
UMLDIR=$(mktemp -d "$UML_TMPDIR/hil-uml.XXXXXX") # short path: UML puts sockets there
case "$RUNDIR$HIL_DIR" in
*[[:space:]]*) die 2 "paths with spaces cannot go on the kernel command line: $RUNDIR, $HIL_DIR" ;;
esac

UML_PID=
STTY_SAVED=
POWER_CUT=0
# shellcheck disable=SC2317  # called through trap
cleanup() {
    if [ -n "$UML_PID" ]; then
        kill -TERM "$UML_PID" 2>/dev/null # timeout passes it on to UML's group
        wait "$UML_PID" 2>/dev/null
    fi
    [ -n "$STTY_SAVED" ] && stty "$STTY_SAVED" 2>/dev/null
    if [ -f "$RUNDIR/console.log" ]; then
        cp -f "$RUNDIR/console.log" "${HIL_CONSOLE_LOG:-$CACHE/last-console.log}" 2>/dev/null || true
    fi
    rm -rf -- "$RUNDIR" "$UMLDIR"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM HUP
# shellcheck disable=SC2317  # called through trap
power_cut() {
    [ -n "$UML_PID" ] || return 0
    POWER_CUT=1
    # linux.uml (timeout's child) makes itself a session and process-group leader:
    # one kill(2) on that group stops the kernel and all its helper processes at once.
    UML_SID=$(pgrep -P "$UML_PID" | head -n 1) || UML_SID=
    [ -n "$UML_SID" ] && kill -KILL -- "-$UML_SID" 2>/dev/null
    kill -KILL -- "-$UML_PID" 2>/dev/null # timeout's own group
}
trap power_cut USR1

# --- 3. What the init inside needs (hil/uml-init.sh). ----------------------
CWD=$(pwd -P)
tmpmode=${HIL_TMP:-tmpfs}
case $tmpmode in tmpfs | host) ;; *) die 2 "HIL_TMP must be 'tmpfs' or 'host', not '$tmpmode'" ;; esac
for p in "$CWD" "$RUNDIR" "$HIL_DIR" "$HIL_UML_MODDIR"; do
    case "$p/" in
    /tmp/*) tmpmode=host ;; # a tmpfs on /tmp would hide what we need there
    esac
done
out_tty=0 err_tty=0
[ -t 1 ] && out_tty=1
[ -t 2 ] && err_tty=1
rows='' cols=''
if [ -t 1 ]; then
    exec 4>&1
    size=$(stty size <&4 2>/dev/null) || size=
    exec 4>&-
    read -r rows cols <<<"$size" || true
fi
{
    printf 'HIL_CWD=%q\n' "$CWD"
    printf 'HIL_CMD=('; printf ' %q' "$@"; printf ' )\n'
    printf 'HIL_MODDIR=%q\n' "$HIL_UML_MODDIR"
    printf 'HIL_HIL_DIR=%q\n' "$HIL_DIR"
    printf 'HIL_TMP=%q\n' "$tmpmode"
    printf 'HIL_INTERACTIVE=%q\n' "$INTERACTIVE"
    printf 'HIL_OUT_TTY=%q\nHIL_ERR_TTY=%q\n' "$out_tty" "$err_tty"
    printf 'HIL_ROWS=%q\nHIL_COLS=%q\n' "$rows" "$cols"
    printf 'HIL_EXTRA_MODULES=%q\n' "${HIL_MODULES:-}"
    printf 'HIL_HOSTNAME=%q\n' "$(hostname 2>/dev/null || cat /proc/sys/kernel/hostname)"
    printf 'HIL_UBD0_MOUNT=%q\nHIL_UBD0_FSTYPE=%q\n' "${HIL_UBD0_MOUNT:-}" "${HIL_UBD0_FSTYPE:-ext4}"
} >"$RUNDIR/params"

# The caller's variables that matter inside; nothing else is passed on.
pass_re='^(PATH|HOME|CI|TERM|LANG|LANGUAGE|LC_[A-Z_]+|TZ|USER|LOGNAME|VIRTUAL_ENV|PYTHON[A-Z_]*|PY_COLORS|NO_COLOR|FORCE_COLOR|HIL_[A-Za-z0-9_]*|PYTEST_[A-Za-z0-9_]*)$'
extra=" ${HIL_PASS_ENV:-} "
while IFS= read -r v; do
    if [[ $v =~ $pass_re ]] || [[ $extra == *" $v "* ]]; then
        printf 'export %s=%q\n' "$v" "${!v}"
    fi
done < <(compgen -e) >"$RUNDIR/env"

# --- 4. Boot. --------------------------------------------------------------
# con0 -> our stdout (CMD's stdout), con2 -> our stderr (CMD's stderr),
# con1 -> the console log (kernel messages, init's trace). UML never gets our
# terminal (it would leave it in raw mode): outputs go through pipes and cat.
# shellcheck disable=SC2054  # the commas belong to UML options
uml=(env TMPDIR="$UML_TMPDIR" "$HIL_UML_KERNEL" "mem=$MEM" "uml_dir=$UMLDIR"
    rootfstype=hostfs rootflags=/ rw "init=$HIL_DIR/uml-init.sh"
    con=null ssl=null con1=null,fd:3 con2=null,fd:2 console=tty1 quiet loglevel=7 printk.time=1
    "HIL_RUNDIR=$RUNDIR")
[ -n "$UBD0" ] && uml+=("ubd0=$UBD0")
start=$(date +%s%N)
set +e
if [ "$INTERACTIVE" = 1 ]; then
    STTY_SAVED=$(stty -g)
    timeout --foreground -k 10 "$TIMEOUT" "${uml[@]}" con0=fd:0,fd:1 3>"$RUNDIR/console.log"
    uml_rc=$?
    stty "$STTY_SAVED"
    STTY_SAVED=
else
    mkfifo "$RUNDIR/out" "$RUNDIR/err"
    cat <"$RUNDIR/out" &
    cat_out=$!
    cat <"$RUNDIR/err" >&2 &
    cat_err=$!
    # timeout puts itself and UML in a process group of their own and, on
    # expiry or on our TERM, signals the whole group (UML's helper processes).
    timeout -k 10 "$TIMEOUT" "${uml[@]}" con0=null,fd:1 \
        </dev/null >"$RUNDIR/out" 2>"$RUNDIR/err" 3>"$RUNDIR/console.log" &
    UML_PID=$!
    while :; do
        wait "$UML_PID"
        uml_rc=$?
        kill -0 "$UML_PID" 2>/dev/null || break
    done
    UML_PID=
    wait "$cat_out" "$cat_err"
fi
set -e
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
elapsed=$((elapsed_ms / 1000)).$(((elapsed_ms % 1000) / 100))

# --- 5. Verdict. -----------------------------------------------------------
if [ "$POWER_CUT" = 1 ]; then
    # Nothing of the group may still run (and write to the disk) once we return.
    for _ in $(seq 1000); do
        [ -n "${UML_SID:-}" ] && pgrep -s "$UML_SID" >/dev/null 2>&1 || break
        sleep 0.01
    done
    [ -n "${UML_SID:-}" ] && pgrep -s "$UML_SID" >/dev/null 2>&1 &&
        die 125 "power cut: UML's processes still run 10 s after SIGKILL"
    [ "${HIL_VERBOSE:-0}" = 1 ] && say "power cut after ${elapsed}s: UML killed with SIGKILL"
    exit 137
fi
log_tail() {
    local log=$RUNDIR/console.log
    [ -s "$log" ] || return 0
    if grep -q -E 'Kernel panic|ptrace|Attempted to kill' "$log"; then
        say "kernel console, the lines that matter:"
        grep -E -m 8 'Kernel panic|ptrace|Attempted to kill|failed|HIL init' "$log" | sed 's/^/    | /' >&2
    fi
    say "kernel console, last lines (whole log: ${HIL_CONSOLE_LOG:-$CACHE/last-console.log}):"
    tail -n "${1:-15}" "$log" | sed 's/^/    | /' >&2
}
status=$(cat "$RUNDIR/status" 2>/dev/null || true)
if [[ $status =~ ^[0-9]+$ ]]; then
    [ "${HIL_VERBOSE:-0}" = 1 ] && say "UML run took ${elapsed}s, command exit status $status"
    exit "$status"
elif [ -s "$RUNDIR/setup-error" ]; then
    log_tail
    die 125 "UML booted but preparing it failed: $(cat "$RUNDIR/setup-error")"
elif [ -e "$RUNDIR/booted" ]; then
    if [ "$uml_rc" = 124 ] || [ "$uml_rc" = 137 ]; then
        die 124 "timed out after ${TIMEOUT}s inside UML (HIL_TIMEOUT); the command was still running"
    fi
    log_tail
    die 125 "UML kernel died while the command ran (linux.uml exit status $uml_rc, after ${elapsed}s)"
else
    log_tail 40
    if [ "$uml_rc" = 124 ] || [ "$uml_rc" = 137 ]; then
        die 125 "UML kernel did not boot: no sign of init after ${TIMEOUT}s (timeout)"
    fi
    die 125 "UML kernel did not boot: init never ran (linux.uml exit status $uml_rc after ${elapsed}s; kernel $HIL_UML_KERNEL)"
fi
