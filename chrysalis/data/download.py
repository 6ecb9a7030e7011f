"""Fetching files with urllib and verifying their checksums."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from .base import CorruptDataError


def file_digest(path: str | Path, algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_checksum(path: str | Path, checksum: str) -> None:
    """Raise :class:`CorruptDataError` unless ``path`` matches ``checksum``.

    ``checksum`` is ``"md5:<hex>"`` or ``"sha256:<hex>"`` (a bare 32-hex string is taken as MD5,
    64 hex as SHA256), as publishers give one or the other.
    """
    if ":" in checksum:
        algorithm, expected = checksum.split(":", 1)
    else:
        algorithm, expected = ("md5" if len(checksum) == 32 else "sha256"), checksum
    actual = file_digest(path, algorithm)
    if actual.lower() != expected.lower():
        raise CorruptDataError(
            f"{path}: {algorithm} checksum mismatch (expected {expected}, got {actual}); "
            "the file is truncated or not the published one. Delete it and download again."
        )


def download(url: str, dest: str | Path, checksum: str | None) -> Path:
    """Download ``url`` to ``dest`` and verify it; the file only appears at ``dest`` once verified.

    The data goes to a temporary file in the destination folder first, so an interrupted or
    corrupt download never leaves a file that a later run would trust.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out)
        if checksum is not None:
            verify_checksum(tmp_name, checksum)
        os.replace(tmp_name, dest)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return dest
