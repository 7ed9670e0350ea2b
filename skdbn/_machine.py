"""What this machine gives a fit: the cores this process may use and the memory it can have."""

import contextlib
import os


def usable_cpus():
    """Cores this process may use, as the JVM counts them for ``local[*]``: the CPUs it may
    run on, capped by a container's CPU quota (cgroup v2 ``cpu.max``)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as handle:
            quota, period = handle.read().split()
        if quota != "max":
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def available_memory():
    """Bytes of memory the machine can give without swapping (``MemAvailable``; 0 if
    unknown)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0
