"""Write a safetensors file tensor by tensor: the header first (every output shape and dtype
is known from the plan), then each tensor's bytes as they are produced.

The file is written to a hidden temporary name beside its destination, hashed (SHA-256) while
written, flushed, fsynced and renamed, so a reader never sees a partial shard under the real
name and a crash leaves only the temporary file (removed by the next run).
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from pathlib import Path

from ..safetensors_io import OutTensor, build_header


def temp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


class ShardWriter:
    """Streams the tensors of one output shard into ``temp_path(final)``; :meth:`finish` renames.

    Writing and hashing run on a background thread (both release the GIL), so they overlap the
    conversion of the next tensor; the queue is bounded, so memory stays bounded. Callers must
    not modify a buffer after handing it to :meth:`write`.
    """

    QUEUE_ITEMS = 8

    def __init__(self, final: Path, tensors: list[OutTensor], metadata: dict | None = None):
        self.final = Path(final)
        self.tmp = temp_path(self.final)
        self._order = list(tensors)
        self._i = 0
        self._left = self._order[0].nbytes if self._order else 0
        self._hash = hashlib.sha256()
        self._f = open(self.tmp, "wb")
        self.bytes = 0
        self._error: BaseException | None = None
        self._q: queue.Queue = queue.Queue(self.QUEUE_ITEMS)
        self._thread = threading.Thread(target=self._drain, name=f"write {self.final.name}", daemon=True)
        self._thread.start()
        self._put(build_header(self._order, metadata))

    def _drain(self) -> None:
        while True:
            mv = self._q.get()
            if mv is None:
                return
            if self._error is None:
                try:
                    self._f.write(mv)
                    self._hash.update(mv)
                except BaseException as e:  # reported by the next write()/finish()
                    self._error = e

    def _put(self, data) -> None:
        if self._error is not None:
            raise self._error
        mv = memoryview(data).cast("B")
        self._q.put(mv)
        self.bytes += len(mv)

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join()

    def write(self, name: str, data) -> None:
        """Append (part of) tensor ``name``'s bytes; tensors must come in header order."""
        n = memoryview(data).nbytes
        while self._i < len(self._order) and self._left == 0 and self._order[self._i].name != name:
            self._i += 1
            self._left = self._order[self._i].nbytes if self._i < len(self._order) else 0
        if self._i >= len(self._order) or self._order[self._i].name != name:
            raise RuntimeError(f"internal error: {name} written out of order into {self.final.name}")
        if n > self._left:
            raise RuntimeError(f"internal error: {name}: {n} bytes written, {self._left} expected")
        self._left -= n
        self._put(data)
        if self._left == 0 and self._i + 1 < len(self._order):
            self._i += 1
            self._left = self._order[self._i].nbytes

    def finish(self) -> str:
        """Check completeness, fsync, rename into place; returns the file's SHA-256."""
        if self._left or self._i + 1 < len(self._order):
            raise RuntimeError(f"internal error: {self.final.name} finished before all tensors were written")
        self._stop()
        if self._error is not None:
            raise self._error
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.tmp, self.final)
        fsync_dir(self.final.parent)
        return self._hash.hexdigest()

    def abort(self) -> None:
        try:
            self._stop()
            self._f.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: Path, chunk: int = 16 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


def write_atomic(path: Path, data: bytes) -> None:
    """Small files (JSON): temp + fsync + rename."""
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
