"""Telling whether a file changed: a stamp no user can set back, and a digest of its bytes.

A file's size and mtime are not enough: ``cp -p``, ``rsync -t`` and ``tar -x`` restore an
mtime, so a file replaced by another of the same size would pass for the old one. The
ctime of a file written, replaced or renamed is always new, and a replaced file usually
has another inode; a stamp that holds both changes whenever the bytes can have.
"""

import hashlib
import os


def stamp(path: str) -> tuple:
    """Returns ``(size, mtime ns, ctime ns, inode)`` of the file at ``path`` (followed
    through links); equal stamps mean unchanged bytes, without reading them."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


_DIGESTS = {}  # (absolute path, stamp) -> sha256: a large file is read once per change


def digest(path: str) -> str:
    """Returns the sha256 (hex) of the bytes of the file at ``path``, remembered by its
    ``stamp``."""
    key = (os.path.abspath(path), stamp(path))
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]
