"""Uploaded files, content-addressed on disk: ``<data_dir>/files/ab/<sha256>``.

The same bytes uploaded twice are stored once. The hash is computed while the
upload streams to a temporary file, so a large file is never held in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

from imserver.config import LimitsConfig
from imserver.errors import FileTooLarge, FileTypeNotAllowed, NoSuchFile
from imserver.services.content_policy import ContentPolicy
from imserver.store.base import Store
from imserver.store.records import FileMeta

SNIFF_BYTES = 8192


def looks_like_text(path: str) -> bool:
    """Whatever the client called it: no NUL bytes, and the start decodes as text.

    The content guard must not depend on the Content-Type a client chose.
    """
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    if not head or b"\x00" in head:
        return False
    for encoding in ("utf-8", "gb18030"):
        try:
            head.decode(encoding)
        except UnicodeDecodeError as e:
            if e.start >= len(head) - 4:  # a character cut at the sniff boundary
                return True
            continue
        return True
    return False


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

        The name, and the content of text files, pass the classified-content
        guard; a refused file is removed again (the same bytes could only
        have been stored before if they had passed, so nothing else is lost).
        """
        mime = self.check_type(mime)
        await self._content.check(user, "file.name", name, [name])
        fd, tmp_name = await asyncio.to_thread(self._temp_file)
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
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
