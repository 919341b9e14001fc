#!/usr/bin/env bash
# Make sure a User-Mode Linux kernel that really boots on this machine, plus
# its modules (and, if needed, a newer libc for it), is in the cache.
#
# usage: hil/fetch-uml.sh [--force] [--quiet]
#
# Cache: ${HIL_CACHE:-<repo>/.cache/uml}. On success it holds kernel.env
# (HIL_UML_KERNEL, HIL_UML_MODDIR, HIL_UML_SUITE, HIL_UML_VERSION), which
# hil/run-in-uml.sh reads. A second call returns at once (--force re-does it).
#
# Candidates, in order (HIL_UML_SUITES, default "bookworm unstable"): the
# release's user-mode-linux first, then Debian unstable's. Each is fetched
# with apt using private lists under the cache (the system's sources and
# lists are not touched, nothing is installed into the system), unpacked with
# dpkg -x, and booted once: the probe runs `ip link show vcan0` through
# hil/run-in-uml.sh, so init must write its marker through hostfs, load the
# CAN modules and create vcan0. A kernel that needs a newer glibc than the
# host's gets that suite's libc6 unpacked beside it and is patched with
# patchelf (installed with apt-get if missing) to use it.
set -euo pipefail

HIL_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(dirname -- "$HIL_DIR")
CACHE=${HIL_CACHE:-$REPO/.cache/uml}
SUITES=${HIL_UML_SUITES:-bookworm unstable}
MIRROR=${HIL_DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEYRING=${HIL_DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}

force=0 quiet=0
for a in "$@"; do
    case $a in
    --force) force=1 ;;
    --quiet) quiet=1 ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "fetch-uml.sh: unknown argument $a" >&2; exit 2 ;;
    esac
done

say() { printf 'fetch-uml: %s\n' "$*" >&2; }
info() { [ $quiet = 1 ] || say "$@"; }
die() { say "$*"; exit 1; }

mkdir -p "$CACHE"
CACHE=$(cd -- "$CACHE" && pwd -P)
# Concurrent callers (two test runs) wait for each other here.
exec 8>"$CACHE/.lock"
if command -v flock >/dev/null; then
    flock -w 900 8 || die "could not lock $CACHE/.lock within 900 s"
fi

cached_ok() {
    [ -f "$CACHE/kernel.env" ] || return 1
    (
        # shellcheck source=/dev/null
        source "$CACHE/kernel.env"
        [ -x "$HIL_UML_KERNEL" ] && [ -f "$HIL_UML_MODDIR/modules.dep" ]
    )
}

if [ $force = 0 ] && cached_ok; then
    # shellcheck source=/dev/null
    source "$CACHE/kernel.env"
    info "cached: $HIL_UML_SUITE user-mode-linux $HIL_UML_VERSION ($HIL_UML_KERNEL)"
    exit 0
fi
rm -f "$CACHE/kernel.env"

for tool in apt-get dpkg dpkg-deb; do
    command -v $tool >/dev/null || die "needs $tool (a Debian-like host)"
done
[ -r "$KEYRING" ] || die "needs $KEYRING (apt-get install debian-archive-keyring)"

# apt with private sources and lists for one suite; the system's are untouched.
apt_private() {
    local d=$1
    shift
    apt-get -q \
        -o Dir::Etc::sourcelist="$d/sources.list" -o Dir::Etc::sourceparts=- \
        -o Dir::State::Lists="$d/lists" -o Dir::Cache="$d/cache" \
        -o APT::Sandbox::User=root "$@"
}

# fetch SUITE PKG... : download the packages' .debs into $CACHE/SUITE/debs
fetch() {
    local suite=$1
    shift
    local d=$CACHE/$suite/apt
    mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$CACHE/$suite/debs"
    echo "deb [signed-by=$KEYRING] $MIRROR $suite main" >"$d/sources.list"
    if [ ! -f "$d/updated" ]; then
        apt_private "$d" update >"$d/update.log" 2>&1 || {
            tail -n 5 "$d/update.log" >&2
            return 1
        }
        touch "$d/updated"
    fi
    (cd "$CACHE/$suite/debs" && apt_private "$d" download "$@") >"$d/download.log" 2>&1 || {
        tail -n 5 "$d/download.log" >&2
        return 1
    }
}

# newest .deb of PKG in DIR
# shellcheck disable=SC2012  # .deb names are plain
deb_of() { ls -1 "$1"/"$2"_*.deb 2>/dev/null | sort -V | tail -n 1; }

ensure_patchelf() {
    command -v patchelf >/dev/null && return 0
    info "installing patchelf (apt-get install patchelf)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q patchelf >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q patchelf >/dev/null 2>&1; } ||
        return 1
    command -v patchelf >/dev/null
}

# try SUITE: fetch, unpack, maybe patch, probe. On success writes kernel.env.
try_suite() {
    local suite=$1 t0 dir root kernel moddir version libdir
    dir=$CACHE/$suite
    t0=$(date +%s)
    info "[$suite] fetching user-mode-linux with private apt lists"
    fetch "$suite" user-mode-linux || { say "[$suite] download failed"; return 1; }
    root=$dir/root
    rm -rf "$root"
    mkdir -p "$root"
    dpkg -x "$(deb_of "$dir/debs" user-mode-linux)" "$root"
    kernel=$root/usr/bin/linux.uml
    [ -x "$kernel" ] || { say "[$suite] package has no usr/bin/linux.uml"; return 1; }

    if ! "$kernel" --version >/dev/null 2>"$dir/version.err"; then
        if grep -q 'GLIBC_' "$dir/version.err"; then
            info "[$suite] kernel needs a newer glibc than the host's: $(grep -o "GLIBC_[0-9.]*' not found" "$dir/version.err" | head -n 1)"
            fetch "$suite" libc6 || { say "[$suite] libc6 download failed"; return 1; }
            dpkg -x "$(deb_of "$dir/debs" libc6)" "$root"
            libdir=$root/usr/lib/x86_64-linux-gnu
            [ -e "$libdir/ld-linux-x86-64.so.2" ] || { say "[$suite] no ld-linux-x86-64.so.2 in its libc6"; return 1; }
            ensure_patchelf || { say "patchelf is missing and apt-get install patchelf failed"; return 1; }
            patchelf --set-interpreter "$libdir/ld-linux-x86-64.so.2" --set-rpath "$libdir" "$kernel"
            "$kernel" --version >/dev/null 2>"$dir/version.err" || {
                say "[$suite] patched kernel still does not start: $(head -n 1 "$dir/version.err")"
                return 1
            }
        else
            say "[$suite] kernel does not start: $(head -n 1 "$dir/version.err")"
            return 1
        fi
    fi
    version=$("$kernel" --version 2>/dev/null | head -n 1)
    moddir=$root/usr/lib/uml/modules/$version
    [ -f "$moddir/modules.dep" ] || { say "[$suite] no modules for $version in the package"; return 1; }
    info "[$suite] got $version in $(($(date +%s) - t0)) s; probing: does it boot here?"

    t0=$(date +%s)
    if HIL_FORCE_UML=1 HIL_UML_KERNEL=$kernel HIL_UML_MODDIR=$moddir HIL_TIMEOUT=${HIL_PROBE_TIMEOUT:-120} \
        HIL_CONSOLE_LOG=$dir/probe-console.log HIL_TMP=tmpfs \
        "$HIL_DIR/run-in-uml.sh" ip link show vcan0 >"$dir/probe.log" 2>&1 </dev/null &&
        grep -q vcan0 "$dir/probe.log"; then
        {
            printf 'HIL_UML_KERNEL=%q\n' "$kernel"
            printf 'HIL_UML_MODDIR=%q\n' "$moddir"
            printf 'HIL_UML_SUITE=%q\n' "$suite"
            printf 'HIL_UML_VERSION=%q\n' "$version"
        } >"$CACHE/kernel.env.tmp"
        mv -f "$CACHE/kernel.env.tmp" "$CACHE/kernel.env"
        say "chose $suite user-mode-linux $version: booted, CAN modules loaded and vcan0 up in $(($(date +%s) - t0)) s"
        say "kernel: $kernel"
        return 0
    fi
    say "[$suite] $version does NOT boot here:"
    sed 's/^/    | /' "$dir/probe.log" >&2
    if [ -s "$dir/probe-console.log" ]; then
        grep -E -m 5 'panic|ptrace|failed|Attempted' "$dir/probe-console.log" | sed 's/^/    | /' >&2 || true
    fi
    return 1
}

for suite in $SUITES; do
    if try_suite "$suite"; then
        exit 0
    fi
done
die "no UML kernel boots on this machine (tried: $SUITES); see the messages above and $CACHE/*/probe*.log"
