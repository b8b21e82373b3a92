"""JSONL file sink: one ``FrameResult.to_json()`` per line.

Lines go to ``<path>.partial``, each flushed as it is written (a reader may follow the file while
the job runs); only ``close()`` (flush, fsync, rename) makes ``path`` appear, so a
file under the final name is always complete. ``abort()`` deletes the partial file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO

from stream.errors import SinkError
from stream.messages import FrameResult


class JsonlSink:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.partial_path = self.path.with_name(self.path.name + ".partial")
        self._file: TextIO | None = None
        self._done = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.partial_path, "w", encoding="utf-8", newline="\n")
        except OSError as exc:
            raise SinkError(f"cannot write JSONL output {self.path}: {exc.strerror or exc}") from exc

    def write(self, result: FrameResult) -> None:
        if self._file is None:
            raise SinkError(f"JSONL output {self.path} is already closed")
        try:
            self._file.write(result.to_json() + "\n")
            # Whole lines reach the .partial file as they are made, so a reader can follow a running job.
            self._file.flush()
        except OSError as exc:
            raise SinkError(f"cannot write JSONL output {self.partial_path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        if self._done:
            return
        if self._file is None:
            raise SinkError(f"JSONL output {self.path} is not open (an earlier close failed)")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.replace(self.partial_path, self.path)
            _fsync_dir(self.path.parent)
        except OSError as exc:
            raise SinkError(f"cannot finish JSONL output {self.path}: {exc.strerror or exc}") from exc
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
        self.partial_path.unlink(missing_ok=True)
        self._done = True

    def __enter__(self) -> "JsonlSink":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
