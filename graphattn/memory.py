"""Process memory readings from ``/proc/self/status`` (Linux), for benchmarks and examples."""

from __future__ import annotations


def status_kb(field: str) -> int:
    """The ``field`` (e.g. ``"VmRSS"``, ``"VmHWM"``) of ``/proc/self/status`` in kB; -1 if
    absent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1
