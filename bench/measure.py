"""What the benchmarks measure besides wall time: the CPU the servers spent for a contender.

On a 2-core machine the S3 server and the client share the CPU, so a contender's wall time
depends on how much work it makes the server do; printing both shows where the time went.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from typing import Optional


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


def wait_until_idle(name: str, *, below: float = 0.05, quiet_for: float = 2.0, timeout: float = 90.0) -> float:
    """Wait until the processes named ``name`` use less than ``below`` of a core for ``quiet_for``
    seconds (or ``timeout`` passed); return the seconds waited.

    A contender's deletes leave the server background work (SeaweedFS vacuums volumes with
    deleted data, drops a deleted bucket's volumes): without this wait the next contender in
    line would pay for it.
    """
    start = time.monotonic()
    quiet_since = None
    last = cpu_seconds(name)
    while time.monotonic() - start < timeout:
        time.sleep(0.5)
        now = cpu_seconds(name)
        busy = (now - last) / 0.5
        last = now
        if busy < below:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= quiet_for:
                break
        else:
            quiet_since = None
    return time.monotonic() - start


def rss_mib(pid: int) -> Optional[float]:
    """Resident memory of a running process, in MiB (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return int(next(line.split()[1] for line in status if line.startswith("VmRSS"))) / 1024
    except (OSError, StopIteration):
        return None


def wait_sampling_rss(proc: subprocess.Popen, started: float, every: float = 0.5):
    """Wait for ``proc`` while a thread samples its resident memory every ``every`` seconds.

    Returns (seconds since ``started``, on the monotonic clock; the child's rusage, from
    os.wait4; the samples in MiB): memory must not climb as a run goes on.
    """
    samples: list[float] = []

    def sample() -> None:
        while proc.returncode is None:
            mib = rss_mib(proc.pid)
            if mib is not None:
                samples.append(mib)
            time.sleep(every)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.join()
    return seconds, usage, samples
