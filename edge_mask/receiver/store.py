"""Where the receiver keeps frames: one folder per (device, stream), a JPEG per frame and a JSON-lines index.

Layout: `<output_dir>/<device_id>/<stream_id hex>/frames/<seq>.jpg`, `.../index.jsonl` (one line per
stored frame, in the order stored) and optionally `.../video[-N].mp4`.

Why the index is also the duplicate filter: a frame counts as stored only once its index line is on disk
(written after the image, then fsynced), so after a receiver crash or restart the index says exactly which
(device, stream, seq) slots are taken and a re-delivered or replayed message is still recognised. The
index is read lazily, the first time a stream shows up again, so a start does not scan every stream ever
received. A torn last line (crash mid-write) is skipped: that frame is simply accepted again.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png"}


@dataclass
class StreamState:
    """What is known about one stream: stored seq -> message digest, plus the open MP4 writer if any."""

    directory: Path
    seen: dict[int, str] = field(default_factory=dict)
    writer: Any = None
    video_size: tuple[int, int] | None = None

    def missing(self) -> int:
        """Sequence numbers absent between the lowest and highest stored ones (lost or not yet arrived)."""
        if not self.seen:
            return 0
        return max(self.seen) - min(self.seen) + 1 - len(self.seen)

    def missing_ranges(self, limit: int = 20) -> list[tuple[int, int]]:
        ranges: list[tuple[int, int]] = []
        ordered = sorted(self.seen)
        for a, b in itertools.pairwise(ordered):
            if b > a + 1:
                ranges.append((a + 1, b - 1))
                if len(ranges) >= limit:
                    break
        return ranges


class FrameStore:
    """Stores opened frames and remembers which (device, stream, seq) slots are taken."""

    def __init__(self, output_dir: Path, write_mp4: bool = False, mp4_fps: float = 30.0) -> None:
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.write_mp4 = write_mp4
        self.mp4_fps = mp4_fps
        self._streams: dict[tuple[str, str], StreamState] = {}

    def stream(self, device_id: str, stream_hex: str) -> StreamState:
        key = (device_id, stream_hex)
        state = self._streams.get(key)
        if state is None:
            if not _SAFE_NAME.match(device_id) or not re.fullmatch(r"[0-9a-f]{2,64}", stream_hex):
                raise ValueError(f"unsafe device or stream name {device_id!r}/{stream_hex!r}")
            state = StreamState(self.output_dir / device_id / stream_hex)
            state.seen = _read_index(state.directory / "index.jsonl")
            self._streams[key] = state
        return state

    def lookup(self, device_id: str, stream_hex: str, seq: int) -> str | None:
        """The digest of the message already stored in this slot, or None when the slot is free."""
        return self.stream(device_id, stream_hex).seen.get(seq)

    def save(
        self,
        device_id: str,
        stream_hex: str,
        seq: int,
        image: bytes,
        content_type: str,
        digest: str,
        record: dict[str, Any],
    ) -> Path:
        """Write the image (temp + rename), then append and fsync the index line that makes it count."""
        state = self.stream(device_id, stream_hex)
        frames = state.directory / "frames"
        frames.mkdir(parents=True, exist_ok=True)
        path = frames / f"{seq:010d}{_EXTENSIONS.get(content_type, '.bin')}"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(image)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        line = {"seq": seq, "file": f"frames/{path.name}", "digest": digest, **record}
        with open(state.directory / "index.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, separators=(",", ":"), default=_jsonable) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        state.seen[seq] = digest
        if self.write_mp4 and content_type == "image/jpeg":
            self._append_video(state, image)
        return path

    def _append_video(self, state: StreamState, image: bytes) -> None:
        import cv2
        import numpy as np

        frame = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
        if frame is None:
            log.warning("store: frame in %s does not decode; left out of the MP4", state.directory)
            return
        size = (int(frame.shape[1]), int(frame.shape[0]))
        if state.writer is None:
            path = state.directory / "video.mp4"
            n = 1
            while path.exists():
                path = state.directory / f"video-{n}.mp4"
                n += 1
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), self.mp4_fps, size)
            if not writer.isOpened():
                log.warning("store: cannot open an MP4 writer at %s; no video for this stream", path)
                self.write_mp4 = False
                return
            state.writer, state.video_size = writer, size
        if size != state.video_size:
            log.warning("store: frame size %s differs from the stream's %s; not in the MP4", size, state.video_size)
            return
        state.writer.write(frame)

    def streams(self) -> dict[tuple[str, str], StreamState]:
        return dict(self._streams)

    def close(self) -> None:
        for state in self._streams.values():
            if state.writer is not None:
                with contextlib.suppress(Exception):
                    state.writer.release()
                state.writer = None


def _read_index(path: Path) -> dict[int, str]:
    seen: dict[int, str] = {}
    try:
        fh = open(path, encoding="utf-8")
    except FileNotFoundError:
        return seen
    with fh:
        for number, line in enumerate(fh, 1):
            try:
                entry = json.loads(line)
                seen[int(entry["seq"])] = str(entry["digest"])
            except (ValueError, KeyError, TypeError):
                log.warning("store: %s line %d is incomplete (crash while writing?); ignoring it", path, number)
    return seen


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
