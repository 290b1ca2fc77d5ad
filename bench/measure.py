"""What the benchmarks measure besides wall time: the CPU the servers spent for a contender.

On a 2-core machine the S3 server and the client share the CPU, so a contender's wall time
depends on how much work it makes the server do; printing both shows where the time went.
"""

from __future__ import annotations

import os


def cpu_seconds(name: str) -> float:
    """CPU time used so far by every process named ``name`` (weed, postgres) and its reaped
    children (PostgreSQL backends that have exited count in the postmaster's)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)
        except OSError:
            continue
        if fields[0].split("(", 1)[1] == name:
            total += sum(int(ticks) for ticks in fields[1].split()[11:15])
    return total / tick
