"""Scratch space for training data shared with workers.

Training data goes to files that workers map: in shared memory (``/dev/shm``) when it has
room, else in the temporary directory. Each directory records its owner's process id, so
that directories of a process killed before it could clean up are removed by the next one.
"""

import contextlib
import os
import shutil
import tempfile
import threading

from ._machine import available_memory

_SHARED_MEMORY = "/dev/shm"
_PREFIX = "skdbn-shards-"
_OWNER_FILE = "owner.pid"


def room_for(directory, n_bytes):
    """Whether ``directory``'s disk has room for ``n_bytes`` of shard files, with a margin
    for Spark's own files; the cached partitions serve otherwise."""
    return shutil.disk_usage(directory).free > 1.25 * n_bytes + (256 << 20)


def new_scratch_dirs():
    """Fresh private directories for training data files: ``(on_disk, in_memory)``.

    The first is in the temporary directory (``TMPDIR``); the second in shared memory
    (``/dev/shm``), or None where the machine has none.
    """
    _remove_orphans(tempfile.gettempdir())
    on_disk = _owned(tempfile.mkdtemp(prefix=_PREFIX))
    in_memory = None
    if os.path.isdir(_SHARED_MEMORY) and os.access(_SHARED_MEMORY, os.W_OK):
        _remove_orphans(_SHARED_MEMORY)
        with contextlib.suppress(OSError):
            in_memory = _owned(tempfile.mkdtemp(prefix=_PREFIX, dir=_SHARED_MEMORY))
    return on_disk, in_memory


def _owned(directory):
    """``directory``, marked with this process's id (see ``_remove_orphans``)."""
    with open(os.path.join(directory, _OWNER_FILE), "w") as owner:
        owner.write(str(os.getpid()))
    return directory


def _remove_orphans(directory):
    """Remove shard directories under ``directory`` whose fit's process is gone (killed
    before it could clean up); in shared memory that memory is not given back until reboot
    otherwise."""
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if not name.startswith(_PREFIX):
            continue
        try:
            with open(os.path.join(path, _OWNER_FILE)) as owner:
                pid = int(owner.read())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError):
            continue  # another user's, or being created: not ours to judge


def choose_scratch_dir(on_disk, in_memory, n_bytes):
    """Where ``n_bytes`` of shard files go, or None where there is no room.

    Shared memory when it has room and the shards take at most a quarter of the machine's
    available memory (the JVM and the workers need the rest): writing there never waits for
    a disk's writeback, and the phases map the shards from memory anyway. Else the disk,
    when it has room.
    """
    if (in_memory is not None and room_for(in_memory, n_bytes)
            and n_bytes <= available_memory() // 4):
        return in_memory
    return on_disk if room_for(on_disk, n_bytes) else None


def remove_tree(directory):
    """Remove ``directory`` and what it holds, if it is there; its files' memory is given back
    after this returns (see :func:`remove_files`)."""
    if directory is None or not os.path.isdir(directory):
        return
    with contextlib.suppress(OSError):
        remove_files([entry.path for entry in os.scandir(directory) if entry.is_file()])
    shutil.rmtree(directory, ignore_errors=True)


def remove_files(paths, empty=False):
    """Unlink ``paths`` now, and give their memory back on a thread of its own.

    Freeing the pages of a large file in shared memory takes about 10 ms per 60 MB, which a
    fit that has ended need not wait for: each file is held open while it is unlinked (its
    name is gone at once) and closed, which frees its pages, in the background. With
    ``empty``, the files are also truncated, so their pages are freed even where a worker
    still maps them (it must not read them again). Files already gone are skipped.
    """
    handles = []
    for path in paths:
        with contextlib.suppress(OSError):  # gone, or not ours to open: its name goes anyway
            handles.append(os.open(path, os.O_WRONLY if empty else os.O_RDONLY))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    if handles:
        threading.Thread(target=_free, args=(handles, empty), name="skdbn-free-files",
                         daemon=True).start()


def _free(handles, empty):
    for handle in handles:
        with contextlib.suppress(OSError):
            if empty:
                os.ftruncate(handle, 0)
        os.close(handle)
