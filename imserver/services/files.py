"""Uploaded files, content-addressed on disk: ``<data_dir>/files/ab/<sha256>``.

The same bytes uploaded twice are stored once. The hash is computed while the
upload streams to a temporary file, so a large file is never held in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from imserver.config import LimitsConfig
from imserver.dlp import sniff_text_encoding
from imserver.errors import FileTooLarge, FileTypeNotAllowed, NoSuchFile, StorageFull
from imserver.services.content_policy import ContentPolicy
from imserver.store.base import Store
from imserver.store.records import FileMeta

SNIFF_BYTES = 8192

log = logging.getLogger(__name__)

#: errno values that mean "no room": disk full, quota used up, file-size limit.
NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@contextlib.contextmanager
def no_room_is_storage_full() -> Iterator[None]:
    """A full disk (or quota, or RLIMIT_FSIZE) is ``storage_full`` (507), not a bare 500.

    The client learns that retrying now will not help; operators get a log line.
    """
    try:
        yield
    except OSError as e:
        if e.errno not in NO_ROOM_ERRNOS:
            raise
        log.error("file storage is full, upload refused: %s", e)
        raise StorageFull("the server's file storage is full; nothing was stored") from e


def looks_like_text(path: str) -> bool:
    """Whatever the client called it: does the start of the file read as text?

    The content guard must not depend on the Content-Type a client chose, nor
    on a single byte: a byte order mark (UTF-16 text is full of NULs), or
    UTF-8 / GB18030 with at most a little damage (one NUL, one stray 0xFF)
    is text; see :func:`imserver.dlp.sniff_text_encoding`. Only the first
    ``SNIFF_BYTES`` are read, so deciding costs the same for any file size.
    """
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    return sniff_text_encoding(head) is not None


class FileService:
    def __init__(
        self,
        store: Store,
        root: Path,
        limits: LimitsConfig,
        content: ContentPolicy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._root = root
        self._limits = limits
        self._content = content
        self._clock = clock

    def path_of(self, file_id: str) -> Path:
        return self._root / file_id[:2] / file_id

    def check_type(self, mime: str) -> str:
        base = mime.split(";", 1)[0].strip().lower()
        if base not in self._limits.allowed_file_types:
            raise FileTypeNotAllowed(f"file type {base!r} is not allowed")
        return base

    async def upload(
        self, user: str, name: str, mime: str, chunks: AsyncIterator[bytes]
    ) -> FileMeta:
        """Stream ``chunks`` to disk; refuse past ``max_file_bytes`` leaving nothing behind.

        The name, and the content of text files (``text/*``, or text by its
        bytes whatever the Content-Type: :func:`looks_like_text`), pass the
        classified-content guard; a refused file is removed again (the same bytes could only
        have been stored before if they had passed, so nothing else is lost).
        """
        mime = self.check_type(mime)
        await self._content.check(user, "file.name", name, [name])
        with no_room_is_storage_full():
            fd, tmp_name = await asyncio.to_thread(self._temp_file)
        digest = hashlib.sha256()
        size = 0
        try:
            # Outermost, so a failing flush in the file's own close is caught too;
            # the finally below removes the partial temporary file.
            with no_room_is_storage_full(), os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self._limits.max_file_bytes:
                        raise FileTooLarge(
                            f"file is larger than the limit of {self._limits.max_file_bytes} bytes"
                        )
                    digest.update(chunk)
                    # Page-cache writes of <= 64 KiB are quick; the fsync below is not.
                    out.write(chunk)
                file_id = digest.hexdigest()
                out.flush()
                # Scanned before it is stored: a refusal leaves no file behind and
                # never touches an identical file someone else stored earlier.
                if mime.startswith("text/") or await asyncio.to_thread(looks_like_text, tmp_name):
                    await self._content.check_file(user, name, Path(tmp_name))
                await asyncio.to_thread(self._commit, out, tmp_name, file_id)
        finally:
            await asyncio.to_thread(Path(tmp_name).unlink, missing_ok=True)
        meta = FileMeta(id=file_id, size=size, mime=mime, created_at=int(self._clock() * 1000))
        await self._store.record_file(meta, user)
        stored = await self._store.get_file(file_id)
        return stored or meta

    def _temp_file(self) -> tuple[int, str]:
        self._root.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(dir=self._root, prefix=".upload-")

    def _commit(self, out: BinaryIO, tmp_name: str, file_id: str) -> None:
        out.flush()
        os.fsync(out.fileno())
        final = self.path_of(file_id)
        final.parent.mkdir(exist_ok=True)
        os.replace(tmp_name, final)

    async def open_for(self, user: str, file_id: str) -> tuple[FileMeta, Path]:
        meta = await self._store.get_file(file_id)
        if meta is None or not await self._store.file_visible_to(file_id, user):
            raise NoSuchFile(f"no file {file_id}")
        path = self.path_of(file_id)
        if not await asyncio.to_thread(path.exists):
            raise NoSuchFile(f"file {file_id} is missing from storage")
        return meta, path
