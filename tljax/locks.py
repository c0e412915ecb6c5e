"""One process makes a shared file or folder; the others wait for it, then read it.

What tljax writes to a place several processes share (a prepared dataset, an image
folder's decoded copy, tokenized text, a self-pretrained source model) is made under an
exclusive lock on a file beside it: the first process to take the lock checks that the
thing is still missing and makes it; the others wait for the lock, find it made, and read
it. This holds for the processes of one multi-process run and for unrelated runs that
share a data dir or workdir.

The lock is ``fcntl.flock``: the kernel releases it when its holder dies, even by
SIGKILL, so a killed preparer never leaves a stale lock behind (the next process takes
over). On NFS, Linux maps it onto POSIX locks that the server arbitrates, so processes on
several machines sharing the storage wait for each other too. Where a file system
refuses locks, a warning says so once and the work goes ahead unlocked.
"""

import contextlib
import errno
import fcntl
import os
import re
import sys

LOCK_DIR = ".tljax-locks"  # beside what is made, hidden from readers that list folders
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_warned = set()


def lock_path(directory: str, name: str) -> str:
    """Returns the lock file for ``name`` (any string: a dataset name, a key) in
    ``directory``'s lock folder; ``name`` is reduced to safe file-name characters."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip(".") or "_"
    return os.path.join(directory, LOCK_DIR, f"{safe}.lock")


def _warn(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(f"tljax: warning: {message}", file=sys.stderr)


@contextlib.contextmanager
def held(path: str, what: str, log=None):
    """Runs the body holding an exclusive lock on the file ``path`` (created, with its
    folder, if missing); yields nothing.

    When another process holds it, one line (``log``, default stderr) says that this one
    waits for ``what``, then it blocks until the lock is free. Check again inside the body
    whether the thing is made: the holder before may have made it.
    """
    say = log or (lambda msg: print(f"tljax: {msg}", file=sys.stderr))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another process to finish {what} (lock {path})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            if e.errno not in _UNSUPPORTED:
                raise
            _warn(f"the file system of {os.path.dirname(path)} refuses file locks "
                  f"({e.strerror}); processes sharing it may make the same files at once")
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (deleting it would race a waiter)
