"""Memory figures for `max_memory`: size texts such as "64mb", and the process's RSS.

The limit itself applies to `baseline + dataset estimate` (see the engine and
docs/deploy.md); the RSS is read at start (the baseline) and for INFO, never
per request. Imports nothing from Geomys.
"""

import os
import re

_UNITS = {"": 1, "b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30}
_SIZE = re.compile(r"(\d+)\s*([a-z]*)")


def parse_size(text) -> int:
    """Bytes from "1048576", "512kb", "64mb" or "1gb" (powers of 1024, any letter case); raise ValueError."""
    match = _SIZE.fullmatch(str(text).strip().lower())
    if match is None or match.group(2) not in _UNITS:
        raise ValueError("expected a number of bytes with an optional kb, mb or gb suffix, got %r" % text)
    return int(match.group(1)) * _UNITS[match.group(2)]


def format_size(size: int) -> str:
    """A byte count for a log line or a message: "64.0 MiB"."""
    return "%.1f MiB" % (size / (1 << 20))


def rss_bytes() -> int:
    """This process's resident set size, from /proc/self/statm (0 where there is no /proc)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
