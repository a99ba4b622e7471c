"""What a scan learnt about each file, kept across benches: a rescan of unchanged files only stats them.

Building an image-folder or ``hf`` dataset decodes every file once (``encoded.scan_files``): for
ImageNet's 1.28M training images that is about half an hour on 2 cores, in every bench. The scan's
result per file (the sha256 of its bytes, its pixel size, that it decodes, and the ``Facts`` the
bench's data notes report) depends only on the bytes and the decoder, so it is stored in an SQLite
file under the suite's cache directory (``$LATENTBENCH_CACHE/scans-v1.sqlite``) and reused while
the file is unchanged.

"Unchanged" is decided the way ``git status`` and ``make`` decide it, from the file's stat: an entry
is used only when the file's size, modification time, change time and inode are all the ones
recorded. A file rewritten in place, replaced, truncated, touched or copied over gets a new stamp
and is decoded again. As in git's "racy" rule, an entry is trusted only if the file had not been
modified for ``RACY_NS`` before it was checked: a write in the same timestamp tick as the check
would otherwise leave the stamp unchanged. (On a network filesystem a client may cache a file's
attributes for up to a minute, so a file another machine rewrote seconds ago can still look
unchanged; rescan with the cache off after editing a shared dataset.) Rows of an ``hf`` dataset are keyed by its Arrow files'
paths and stamps (any change to them misses every row) and the split that selected them, plus the stamp of an image the row names
by path instead of holding its bytes. In-memory datasets and other sources are not cached.

Entries also name the decoder (this module's ``SCAN_FORMAT`` and Pillow's version): an upgraded
Pillow, which may read a file differently, scans again. Unreadable files are never stored: they
are decoded, and reported, every time. Only the process of rank 0 writes (after the processes of a
multi-GPU bench exchanged their shares), so concurrent writers are separate benches, which SQLite
serialises with its file lock.

The facts were added after the first entries had been written, so they live in a table of their
own, ``facts``, whose row belongs to the ``scans`` row with the same key, decoder and check time:
an entry without one (written before the table existed, or rewritten since by a version that does
not know it) is not used, and its file is decoded once more. Versions of either kind share the
file: the ``scans`` table's layout is unchanged.

The frame count (``Facts.frames``) came later still, and was added the same way: a table of its own,
``frame_counts``, joined on the same key, decoder and check time, so the 5-column ``facts`` rows
that versions before it insert stay as they were. An entry without its frame count (written by such a
version, or rewritten by one since) is not used either: its file is decoded once more.

The cache only saves time: the dataset, its fingerprint and the reports are the same with or
without it (tested). ``LATENTBENCH_SCAN_CACHE=0`` turns it off; deleting the file empties it. A
cache that cannot be opened, read or written gives a warning and the scan goes on without it.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import PIL

from latentbench.paths import default_cache_dir

SCAN_FORMAT = 2  # bump when what the scan checks (images.load_rgb) changes: every entry is then stale (2: the
# scale doubt of 16-bit RGB files, which format 1 stored as none)
FILE_NAME = "scans-v1.sqlite"  # the table's layout; SCAN_FORMAT versions the entries in it
RACY_NS = 2_000_000_000  # FAT's mtime tick is 2 s; ext4, XFS and NFS are finer
ENV = "LATENTBENCH_SCAN_CACHE"
FLUSH_EVERY = 4096  # entries per write transaction: an interrupted scan keeps what it checked
TIMEOUT_S = 60.0  # how long a writer waits for another bench's write lock


@dataclass(frozen=True)
class Stamp:
    """What says that a file is unchanged: ``os.stat``'s size, mtime, ctime and inode (ns)."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, path: str | os.PathLike) -> Stamp:
        """The stamp of a file (follows symbolic links; raises OSError as ``os.stat``)."""
        st = os.stat(path)
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)

    @classmethod
    def combined(cls, stamps: Sequence[Stamp]) -> Stamp:
        """One stamp for several files (an hf row: its Arrow files and the image it names).

        Any write to any of them moves the newest ctime; the inodes are folded by ``hash`` of a tuple
        of ints, which Python computes the same in every process (no hash randomisation for ints).
        """
        return cls(sum(s.size for s in stamps), max(s.mtime_ns for s in stamps),
                   max(s.ctime_ns for s in stamps), hash(tuple(s.inode for s in stamps)) & (2**63 - 1))


class Facts(NamedTuple):
    """What a scan notes about a readable file that the bench reports but does not change (``images.decode``)."""

    off_scale: str | None  # "<mode> with <images.off_scale's doubt>" of an image read nearly black, else None
    orientation: int  # its EXIF orientation, not applied (1: as stored, also without the tag)
    frames: int = 1  # frames in the file (an animated GIF, a multi-page TIFF): only the first is read


@dataclass(frozen=True)
class Entry:
    """A file's scan result: its stamp when checked, when that was, its bytes' sha256, its size and its facts."""

    stamp: Stamp
    checked_ns: int
    digest: bytes
    size: tuple[int, int]
    facts: Facts

    def valid_for(self, stamp: Stamp) -> bool:
        """Whether this entry describes a file that now has ``stamp`` (see the racy rule above)."""
        return stamp == self.stamp and stamp.mtime_ns <= self.checked_ns - RACY_NS


def decoder_id() -> str:
    """What the entries' results depend on besides the bytes: this module's format and Pillow."""
    return f"latentbench-scan-{SCAN_FORMAT}/Pillow-{PIL.__version__}"


def enabled() -> bool:
    """False when ``$LATENTBENCH_SCAN_CACHE`` is 0, false, no or off."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class ScanCache:
    """The SQLite file of scan entries. Fails soft: any database error disables it with one warning.

    Args:
        path: the SQLite file (created with its folder on first write).
        writable: whether this process may write (rank 0 only in a multi-process bench).
    """

    def __init__(self, path: str | os.PathLike, writable: bool = True):
        self.path = Path(path)
        self.writable = writable
        self.decoder = decoder_id()
        self._db: sqlite3.Connection | None = None
        self._failed = False
        self._pending: list[tuple] = []

    # ---- connection and failure -----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is None and not self._failed:
            if not self.path.exists() and not self.writable:
                return None  # nothing to read, and this process may not create it
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, timeout=TIMEOUT_S, isolation_level=None)
                db.execute(
                    "CREATE TABLE IF NOT EXISTS scans (key TEXT NOT NULL, decoder TEXT NOT NULL, size INTEGER NOT NULL, "
                    "mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, "
                    "checked_ns INTEGER NOT NULL, digest BLOB NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL, "
                    "PRIMARY KEY (key, decoder)) WITHOUT ROWID"
                )
                db.execute(  # a table of its own: versions that write 10-column ``scans`` rows can share the file
                    "CREATE TABLE IF NOT EXISTS facts (key TEXT NOT NULL, decoder TEXT NOT NULL, "
                    "checked_ns INTEGER NOT NULL, off_scale TEXT, orientation INTEGER NOT NULL, "
                    "PRIMARY KEY (key, decoder)) WITHOUT ROWID"
                )
                db.execute(  # not a column of ``facts``: versions before it insert 5-column ``facts`` rows
                    "CREATE TABLE IF NOT EXISTS frame_counts (key TEXT NOT NULL, decoder TEXT NOT NULL, "
                    "checked_ns INTEGER NOT NULL, frames INTEGER NOT NULL, PRIMARY KEY (key, decoder)) WITHOUT ROWID"
                )
                self._db = db
            except (sqlite3.Error, OSError) as err:
                self._fail(err)
        return self._db

    def _fail(self, err: Exception) -> None:
        warnings.warn(
            f"scan cache {self.path} is not usable ({type(err).__name__}: {err}); scanning without it. "
            + ("Make its folder writable, or set LATENTBENCH_CACHE to a writable folder, or "
               if isinstance(err, OSError) or "readonly" in str(err) or "unable to open" in str(err)  # where, not what
               else "Delete the file to start a new one, or ")
            + f"set {ENV}=0.", RuntimeWarning, stacklevel=3,
        )
        self._failed, self._pending = True, []
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def close(self) -> None:
        """Write what is pending and close the file."""
        self.flush()
        if self._db is not None:
            self._db.close()
            self._db = None

    # ---- reading and writing ----------------------------------------------------------------

    def lookup(self, keys: Sequence[str | None]) -> dict[str, Entry]:
        """The stored entries of ``keys`` (None keys, and keys without an entry or without all its facts, are left out)."""
        wanted = sorted({k for k in keys if k is not None})
        db = self._connect() if wanted else None
        if db is None:
            return {}
        found = {}
        try:
            for start in range(0, len(wanted), 500):  # SQLite caps the parameters of one statement
                part = wanted[start:start + 500]
                # facts of another check time belong to an earlier scan of the file than this entry's
                rows = db.execute(
                    f"SELECT key, size, mtime_ns, ctime_ns, inode, checked_ns, digest, width, height, off_scale, "
                    f"orientation, frames FROM scans JOIN facts USING (key, decoder, checked_ns) "
                    f"JOIN frame_counts USING (key, decoder, checked_ns) "
                    f"WHERE decoder = ? AND key IN ({','.join('?' * len(part))})", (self.decoder, *part),
                )
                for key, size, mtime, ctime, inode, checked, digest, w, h, off, turn, frames in rows:
                    found[key] = Entry(Stamp(size, mtime, ctime, inode), checked, bytes(digest), (w, h),
                                       Facts(off, turn, frames))
        except (sqlite3.Error, ValueError) as err:  # ValueError: a key SQLite cannot encode
            self._fail(err)
            return {}
        return found

    def add(self, key: str, stamp: Stamp, checked_ns: int, digest: bytes, size: tuple[int, int], facts: Facts) -> None:
        """Queue one fresh entry; written every FLUSH_EVERY entries and on ``flush``."""
        if not self.writable or self._failed:
            return
        self._pending.append(((key, self.decoder, stamp.size, stamp.mtime_ns, stamp.ctime_ns, stamp.inode,
                               checked_ns, digest, size[0], size[1]),
                              (key, self.decoder, checked_ns, facts.off_scale, facts.orientation),
                              (key, self.decoder, checked_ns, facts.frames)))
        if len(self._pending) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Write the queued entries in one transaction."""
        if not self._pending:
            return
        db = self._connect()
        if db is None:
            self._pending = []
            return
        try:
            with contextlib.closing(db.cursor()) as cur:
                cur.execute("BEGIN IMMEDIATE")
                try:
                    cur.executemany("INSERT OR REPLACE INTO scans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                    [scan for scan, _, _ in self._pending])
                    cur.executemany("INSERT OR REPLACE INTO facts VALUES (?, ?, ?, ?, ?)",
                                    [facts for _, facts, _ in self._pending])
                    cur.executemany("INSERT OR REPLACE INTO frame_counts VALUES (?, ?, ?, ?)",
                                    [frames for _, _, frames in self._pending])
                    cur.execute("COMMIT")
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
        except (sqlite3.Error, ValueError) as err:  # ValueError: a key SQLite cannot encode
            self._fail(err)
            return
        self._pending = []

    def record(self, outcomes: Iterable[tuple]) -> Iterator[tuple]:
        """Pass scan outcomes through, queueing the fresh ones; written when the iteration ends.

        An outcome is ``(index, digest, size, facts, error, fresh)``: ``fresh`` is ``(key, stamp, checked_ns)``
        for a file decoded now that may be cached, else None (a hit, an error, an uncacheable file).
        """
        try:
            for outcome in outcomes:
                _, digest, size, facts, error, fresh = outcome
                if fresh is not None and error is None:
                    self.add(fresh[0], fresh[1], fresh[2], digest, size, facts)
                yield outcome
        finally:
            self.flush()


def default_cache(writable: bool = True) -> ScanCache | None:
    """The suite's scan cache (``<cache dir>/scans-v1.sqlite``), or None when ``$LATENTBENCH_SCAN_CACHE`` is off."""
    return ScanCache(default_cache_dir() / FILE_NAME, writable) if enabled() else None
