"""connect-agent: the in-car agent behind the roadside-assistance CONNECT button."""

__version__ = "0.1.0"

# The release's date, set with __version__ at each release: no correct clock can read earlier,
# so a system time before it is not trusted (agent.core.wallclock). A constant rather than a
# value stamped by the build backend: an editable install, a wheel and a source tree agree,
# and tests/test_wallclock.py checks it is not after the newest commit.
BUILD_DATE = "2026-11-24"
