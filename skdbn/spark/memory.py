"""A task's memory: what it gives back before it reads its shard, and what it says when a
worker runs out.

Two ways a Python worker runs out of memory, and how each is told:

- An allocation fails (``MemoryError``: the address-space limit that
  ``spark.executor.pyspark.memory`` sets, or an overcommit refusal). The task raises
  ``WorkerOutOfMemory`` with its shard's size and the settings to change; the driver raises
  it again as itself, and it is not retried (it would fail the same way).
- The kernel kills the worker (``SIGKILL`` from the OOM killer of its memory cgroup or of
  the machine). Spark only sees a Python worker that exited, which the schedule reruns as a
  lost worker. Every task therefore notes, at its start, its memory cgroup's count of OOM
  kills (cgroup v2 ``memory.events``, v1 ``memory.oom_control``) in a small file of the
  executor's host, in a directory of the user's own, named after the fit and the cgroup. In
  the rerun after a worker process or an executor died, a task that finds the count risen
  raises ``WorkerOutOfMemory``: the fit fails at its first rerun, not after
  ``phase_retries`` of them. A rerun whose tasks all land in other cgroups (another
  executor) cannot tell, and is retried as before.

``watched_task`` runs on the executors; nothing here imports Spark.
"""

import contextlib
import ctypes
import hashlib
import os
import tempfile
import time

import numpy as np

from .._devices import DeviceOutOfMemory

_MARKER_DIR = "skdbn-memory-watch"
_MARKER_AGE = 86400.0  # seconds after which a fit's markers are stale (removed by any task)


class WorkerOutOfMemory(MemoryError):
    """A worker's Python process ran out of memory; the message gives its shard's size and
    the settings to change. Never retried as a lost worker."""


def shard_bytes(layout, ranks):
    """Bytes of the features of workers ``ranks`` in the training dtype."""
    rows = sum(layout.rows[rank] for rank in ranks)
    return rows * layout.n_features * np.dtype(layout.dtype).itemsize


def advice(layout, ranks):
    """What a user can change when a worker of ``layout`` ran out of memory."""
    ranks = list(ranks)
    rows = sum(layout.rows[rank] for rank in ranks)
    smaller = ("" if np.dtype(layout.dtype) == np.float32 else
               ", or train in float32 (dtype='float32': half the bytes)")
    return (f"worker {ranks[0]}'s shard is {rows:,} rows x {layout.n_features} features, "
            f"{shard_bytes(layout, ranks) / 2**20:,.0f} MiB in {np.dtype(layout.dtype).name}, "
            "and its Python process needs about twice that; give each worker fewer rows "
            "(more workers: n_workers, more executors or cores) or each Python worker more "
            "memory (spark.executor.memoryOverhead or the container's limit, and "
            f"spark.executor.pyspark.memory where it is set){smaller}")


def release_unused_memory():
    """Give the memory that Arrow's pool and the C allocator keep after earlier tasks of
    this reused Python worker back to the system, before the shard is read."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # glibc only
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# ---------------------------------------------------------------------------- OOM kills

def _cgroup_paths():
    """``(v2 path, v1 memory path)`` of this process's cgroups (either may be None)."""
    v2 = v1 = None
    with contextlib.suppress(OSError), open("/proc/self/cgroup") as handle:
        for line in handle:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controllers == "":
                v2 = path
            elif "memory" in controllers.split(","):
                v1 = path
    return v2, v1


def _mounts():
    """``{"cgroup2": [(root, mount point)], "memory": [...]}`` from /proc/self/mountinfo."""
    mounts = {"cgroup2": [], "memory": []}
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            tail = fields[fields.index("-") + 1:]
            if tail[0] == "cgroup2":
                mounts["cgroup2"].append((fields[3], fields[4]))
            elif tail[0] == "cgroup" and "memory" in tail[-1].split(","):
                mounts["memory"].append((fields[3], fields[4]))
    return mounts


def _inside(mounts, path, name):
    for root, point in mounts:
        if path == root or path.startswith(root.rstrip("/") + "/"):
            candidate = os.path.join(point, path[len(root):].lstrip("/"), name)
            if os.path.exists(candidate):
                return candidate
    return None


def _count(path, key):
    with open(path) as handle:
        for line in handle:
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return None


def oom_kills():
    """``(count, where)``: OOM kills so far in this process's memory cgroup, and the file
    that counts them; ``(None, None)`` where no cgroup counts them (not Linux, a kernel
    before 4.13, or no readable memory cgroup). The machine's own count (``/proc/vmstat``)
    is not used: a kill in another container or application would fail a fit."""
    v2, v1 = _cgroup_paths()
    mounts = _mounts()
    candidates = []
    if v1 is not None:
        candidates.append((_inside(mounts["memory"], v1, "memory.oom_control"), "oom_kill"))
    if v2 is not None:
        candidates.append((_inside(mounts["cgroup2"], v2, "memory.events"), "oom_kill"))
    for path, key in candidates:
        if path is None:
            continue
        with contextlib.suppress(OSError, ValueError):
            count = _count(path, key)
            if count is not None:
                return count, path
    return None, None


def _marker_path(secret, where):
    """The marker file of the fit of ``secret`` and the cgroup counter ``where``, in a
    directory of this user's that nobody else may write (OSError if it is not so)."""
    directory = os.path.join(tempfile.gettempdir(), f"{_MARKER_DIR}-{os.getuid()}")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    status = os.lstat(directory)
    if status.st_uid != os.getuid() or status.st_mode & 0o077:
        raise PermissionError(f"{directory} is not this user's own private directory")
    name = hashlib.sha256(secret + b"\0" + where.encode()).hexdigest()[:32]
    return directory, os.path.join(directory, name)


def check_oom_kills(secret, layout, ranks, rerun):
    """Note this task's cgroup's count of OOM kills for the fit of ``secret``; in the rerun
    of a phase that lost a worker (``rerun``), raise ``WorkerOutOfMemory`` when the count
    has risen since an earlier task of the fit noted it: the lost worker was killed by the
    kernel for lack of memory."""
    count, where = oom_kills()
    if count is None:
        return
    with contextlib.suppress(OSError):
        directory, path = _marker_path(secret, where)
        seen = None
        with contextlib.suppress(FileNotFoundError, ValueError), open(path) as handle:
            seen = int(handle.read())
        if rerun and seen is not None and count > seen:
            os.remove(path)
            raise WorkerOutOfMemory(
                f"a Python worker of this fit was killed by the kernel for lack of memory "
                f"({count - seen} OOM kill(s) counted in {where} since the phase began); "
                + advice(layout, ranks))
        handle, part = tempfile.mkstemp(dir=directory, suffix=".part")
        with os.fdopen(handle, "w") as out:
            out.write(str(count))
        os.replace(part, path)
        _remove_stale(directory)


def _remove_stale(directory):
    now = time.time()
    for entry in os.scandir(directory):
        with contextlib.suppress(OSError):
            if now - entry.stat().st_mtime > _MARKER_AGE:
                os.remove(entry.path)


@contextlib.contextmanager
def watched_task(secret, layout, ranks, rerun):
    """Run a training task's body: first the OOM-kill check (``check_oom_kills``) and the
    memory given back, then the body, whose ``MemoryError`` becomes ``WorkerOutOfMemory``
    with the shard's size."""
    check_oom_kills(secret, layout, ranks, rerun)
    release_unused_memory()
    try:
        yield
    except (WorkerOutOfMemory, DeviceOutOfMemory):  # a GPU's own: other advice (_devices)
        raise
    except MemoryError as error:
        raise WorkerOutOfMemory(f"a Python worker ran out of memory ({error}); "
                                + advice(layout, ranks)) from error
