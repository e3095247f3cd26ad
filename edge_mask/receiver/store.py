"""Where the receiver keeps frames: one folder per (device, stream), a JPEG per frame and a JSON-lines index.

Layout: `<output_dir>/<device_id>/<stream_id hex>/frames/<seq>.jpg`, `.../index.jsonl` (one line per
stored frame, in the order stored), `.../signals.csv` (the clinical signals, one row per face per frame,
when the device reads them; columns `seal.signals.CSV_COLUMNS`), optionally `.../video[-N].mp4`, and
`<output_dir>/dedupe.sqlite3`, the durable record of taken slots (`dedupe.py`).

Order of a save, and why: the image is written to a temp file, fsynced and renamed (`stage`); then, for a
batch of staged frames (`commit`), their folders are fsynced (the renames), each stream's index lines are
appended and fsynced, and the slots are committed in the dedupe database in one transaction. Only then do
the frames count as stored: the receiver acknowledges the MQTT messages and answers the devices after the
commit. Batching (group commit, done by the MQTT session every few milliseconds) shares the three fsyncs of a
commit among the frames of a batch, so storing stays near one fsync per frame. `save` is stage + commit of
one frame. Any OSError or database error on the way is a `StorageFailure`: nothing is acknowledged and the
broker re-delivers the messages later (see receiver.py). A torn last index line (a crash mid-write) is
terminated on the stream's first touch after a restart, so the next line starts clean.

MP4 writers (optional): one per stream, opened on the stream's first frame this run. A writer holds a file
descriptor and an encoder, and every device restart is a new stream, so a long-running receiver would run
out of both: a writer closes after `writer_idle_s` without frames (`close_idle`, called about once a second)
and at most `max_open_writers` are open (the least recently used closes first). A stream that comes back
gets a new `video-N.mp4`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_mask.core.errors import UserError
from edge_mask.receiver.dedupe import Dedupe, StreamKey, StreamStats
from edge_mask.seal import SIGNAL_COLUMNS, fsync_dir

log = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_STREAM_HEX = re.compile(r"^[0-9a-f]{2,64}$")
_EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png"}
_TAIL_BYTES = 64 * 1024


class StorageFailure(Exception):
    """Writing a frame failed (disk full, permissions, I/O error); it does not count as stored."""


class StorageError(UserError):
    """The receiver cannot store frames at all; it stops rather than take frames it cannot keep."""


@dataclass(eq=False)
class _Staged:
    key: StreamKey
    line: str
    video: bytes | None
    signals: list[str]
    """Rows for the stream's `signals.csv` (clinical signals, one per face), if the frame carried any."""


@dataclass(eq=False)
class _Video:
    writer: Any
    size: tuple[int, int]
    last_used: float


class FrameStore:
    """Stores opened frames and answers which (device, stream, seq) slots are taken."""

    def __init__(
        self,
        output_dir: Path,
        write_mp4: bool = False,
        mp4_fps: float = 30.0,
        *,
        writer_idle_s: float = 30.0,
        max_open_writers: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.write_mp4 = write_mp4
        self.mp4_fps = mp4_fps
        self.writer_idle_s = writer_idle_s
        self.max_open_writers = max_open_writers
        self._clock = clock
        self.dedupe = Dedupe(self.output_dir)
        self._videos: OrderedDict[StreamKey, _Video] = OrderedDict()
        self._staged: list[_Staged] = []

    def directory(self, key: StreamKey) -> Path:
        return self.output_dir / key[0] / key[1]

    def open_stream(self, device_id: str, stream_hex: str) -> StreamKey:
        """Validate the names and make the stream's slots known (first touch: repair the index tail)."""
        if not _SAFE_NAME.match(device_id) or not _STREAM_HEX.match(stream_hex):
            raise ValueError(f"unsafe device or stream name {device_id!r}/{stream_hex!r}")
        index = self.output_dir / device_id / stream_hex / "index.jsonl"
        try:
            return self.dedupe.open_stream(
                device_id, stream_hex, lambda: _read_index(index), lambda: _index_tail(index)
            )
        except (OSError, sqlite3.Error) as exc:
            raise StorageFailure(f"cannot read or prepare {device_id}/{stream_hex} under {self.output_dir}: "
                                 f"{_detail(exc)}") from exc

    def lookup(self, key: StreamKey, seq: int) -> bytes | None:
        """The digest of the message already stored in this slot, or None when the slot is free."""
        try:
            return self.dedupe.lookup(key, seq)
        except sqlite3.Error as exc:
            raise StorageFailure(f"cannot read the dedupe database under {self.output_dir}: {exc}") from exc

    @property
    def staged(self) -> int:
        """Frames written but not yet committed (see `stage`)."""
        return len(self._staged)

    def stage(
        self, key: StreamKey, seq: int, image: bytes, content_type: str, digest: bytes, record: dict[str, Any]
    ) -> Path:
        """Write the image durably (temp, fsync, rename) and hold its index line and slot for `commit`.
        Until then the slot reads as taken, and the frame does not count as stored."""
        directory = self.directory(key)
        frames = directory / "frames"
        path = frames / f"{seq:010d}{_EXTENSIONS.get(content_type, '.bin')}"
        try:
            _make_dirs(frames, self.output_dir)
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as fh:
                fh.write(image)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageFailure(
                f"cannot store {key[0]}/{key[1]} seq {seq} under {self.output_dir}: {_detail(exc)}"
            ) from exc
        line = {"seq": seq, "file": f"frames/{path.name}", "digest": digest.hex(), **record}
        video = image if self.write_mp4 and content_type == "image/jpeg" else None
        rows = [_csv_row({"seq": seq, "captured_at": record.get("captured_at"), **face})
                for face in record.get("signals", ())]
        self._staged.append(_Staged(key, json.dumps(line, separators=(",", ":"), default=_jsonable), video, rows))
        self.dedupe.stage(key, seq, digest)
        return path

    def commit(self) -> int:
        """Make every staged frame count, as one batch: fsync their folders (the renames), append and fsync
        each stream's index lines, commit their slots in one transaction. Returns how many; on any failure
        StorageFailure, and none of them counts (the broker delivers them again)."""
        if not self._staged:
            return 0
        staged, self._staged = self._staged, []
        lines: dict[StreamKey, list[str]] = {}
        signals: dict[StreamKey, list[str]] = {}
        for item in staged:
            lines.setdefault(item.key, []).append(item.line)
            signals.setdefault(item.key, []).extend(item.signals)
        try:
            for key, batch in lines.items():
                directory = self.directory(key)
                fsync_dir(directory / "frames")
                with open(directory / "index.jsonl", "a", encoding="utf-8") as fh:
                    fh.write("".join(line + "\n" for line in batch))
                    fh.flush()
                    os.fsync(fh.fileno())
                if signals[key]:
                    _append_signals(directory / "signals.csv", signals[key])
            self.dedupe.commit()
        except (OSError, sqlite3.Error) as exc:
            self.dedupe.unstage()
            for key in lines:
                self.dedupe.forget(key)  # re-read on next touch: the index may hold lines the database lacks
            raise StorageFailure(f"cannot store {len(staged)} frames under {self.output_dir}: {_detail(exc)}") from exc
        for item in staged:
            if item.video is not None and self.write_mp4:
                self._append_video(item.key, self.directory(item.key), item.video)
        return len(staged)

    def save(
        self, key: StreamKey, seq: int, image: bytes, content_type: str, digest: bytes, record: dict[str, Any]
    ) -> Path:
        """`stage` and `commit` one frame: durable and counted when this returns; StorageFailure if not."""
        path = self.stage(key, seq, image, content_type, digest, record)
        self.commit()
        return path

    def streams(self) -> list[tuple[StreamKey, StreamStats]]:
        return self.dedupe.streams()

    def missing_ranges(self, key: StreamKey, limit: int = 20) -> list[tuple[int, int]]:
        return self.dedupe.missing_ranges(key, limit)

    def open_writers(self) -> int:
        return len(self._videos)

    def close_idle(self, now: float | None = None) -> int:
        """Close MP4 writers unused for `writer_idle_s`; returns how many."""
        now = self._clock() if now is None else now
        closed = 0
        while self._videos:
            key, video = next(iter(self._videos.items()))
            if now - video.last_used < self.writer_idle_s:
                break
            self._close_video(key)
            closed += 1
        return closed

    def close(self) -> None:
        for key in list(self._videos):
            self._close_video(key)
        self.dedupe.close()

    def _append_video(self, key: StreamKey, directory: Path, image: bytes) -> None:
        import cv2
        import numpy as np

        frame = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
        if frame is None:
            log.warning("store: frame in %s does not decode; left out of the MP4", directory)
            return
        size = (int(frame.shape[1]), int(frame.shape[0]))
        video = self._videos.get(key)
        if video is None:
            path = directory / "video.mp4"
            n = 1
            while path.exists():
                path = directory / f"video-{n}.mp4"
                n += 1
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), self.mp4_fps, size)
            if not writer.isOpened():
                log.warning("store: cannot open an MP4 writer at %s; no more videos this run", path)
                self.write_mp4 = False
                return
            video = self._videos[key] = _Video(writer, size, self._clock())
            while len(self._videos) > self.max_open_writers:
                self._close_video(next(iter(self._videos)))
        self._videos.move_to_end(key)
        video.last_used = self._clock()
        if size != video.size:
            log.warning("store: frame size %s differs from the stream's %s; not in the MP4", size, video.size)
            return
        video.writer.write(frame)

    def _close_video(self, key: StreamKey) -> None:
        video = self._videos.pop(key)
        with contextlib.suppress(Exception):
            video.writer.release()


def _make_dirs(directory: Path, root: Path) -> None:
    """Create `directory` below `root`, fsyncing each parent whose entry is new (so the folder survives)."""
    if directory.is_dir():
        return
    missing = []
    d = directory
    while not d.is_dir() and d != root:
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
        fsync_dir(d.parent)


def _read_index(path: Path) -> Iterator[tuple[int, bytes]]:
    """(seq, digest) of every complete line of an index file (none when there is no file)."""
    try:
        fh = open(path, encoding="utf-8")
    except FileNotFoundError:
        return
    with fh:
        for number, line in enumerate(fh, 1):
            try:
                entry = json.loads(line)
                yield int(entry["seq"]), bytes.fromhex(str(entry["digest"]))
            except (ValueError, KeyError, TypeError):
                log.warning("store: %s line %d is incomplete (crash while writing?); ignoring it", path, number)


def _index_tail(path: Path) -> list[tuple[int, bytes]]:
    """(seq, digest) of the complete lines in the last 64 KiB (a batch's worth and more); a torn last line
    is terminated with a newline and ignored."""
    try:
        fh = open(path, "rb+")
    except FileNotFoundError:
        return []
    with fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return []
        fh.seek(max(0, size - _TAIL_BYTES))
        tail = fh.read()
        if not tail.endswith(b"\n"):
            log.warning("store: %s ends in a torn line (crash while writing?); ending it", path)
            fh.write(b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        entries = []
        for raw in tail.split(b"\n")[1 if size > _TAIL_BYTES else 0 :]:  # the first may be cut by the window
            try:
                entry = json.loads(raw)
                entries.append((int(entry["seq"]), bytes.fromhex(str(entry["digest"]))))
            except (ValueError, KeyError, TypeError):
                continue
        return entries


def _csv_row(values: dict[str, Any]) -> str:
    return ",".join("" if values.get(c) is None else str(values[c]) for c in SIGNAL_COLUMNS)


def _append_signals(path: Path, rows: list[str]) -> None:
    """Append rows to a stream's signals.csv (header first when it is new), fsynced. A re-delivered frame
    whose index line never landed may repeat its rows: readers key rows by (seq, track_id)."""
    new = not path.exists()
    with open(path, "a", encoding="utf-8") as fh:
        fh.write((",".join(SIGNAL_COLUMNS) + "\n" if new else "") + "".join(r + "\n" for r in rows))
        fh.flush()
        os.fsync(fh.fileno())


def _detail(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
