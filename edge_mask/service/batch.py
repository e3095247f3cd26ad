"""The batch job behind `edge-mask mask`: mask photos and videos into an output folder.

Why the same masker as the live service: a batch run is how people check what the device would send, so it
uses the same detector, the same tracker (video frames are fed in order with their video timestamps, so the
hold time is in video seconds) and the same fail-closed rules. Only `on_failure` differs: a batch output
keeps every frame (a failed frame is written fully masked, never dropped) so its length and frame rate
match the input. Videos run as a pipeline of threads (decode, detection ahead on several workers, the
masker in frame order, encode; batch_video.py) that writes the same pixels as one frame at a time.

A bad input (missing, unreadable, corrupt, unsupported) is reported as one line naming the file and
counted; the other files are still processed, and the caller exits non-zero at the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_mask.capture import MediaError, VideoReader, kind_of, read_image
from edge_mask.core.errors import UserError
from edge_mask.core.types import MaskedFrame, RawFrame
from edge_mask.mask import Masker
from edge_mask.service.batch_video import mask_video
from edge_mask.service.lookahead import LookaheadDetector
from edge_mask.service.outputs import VideoWriter, expand_inputs, output_path, write_image

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""progress(name, frames_done, frames_total_or_0) for videos."""
Report = Callable[[str], None]
"""report(one_line_problem) for bad inputs, as they happen."""


@dataclass
class FileResult:
    input: str
    output: str | None
    kind: str
    frames: int = 0
    faces: int = 0
    fail_closed: int = 0
    width: int = 0
    height: int = 0
    fps: float = 0.0
    error: str | None = None


@dataclass
class BatchSummary:
    files: int = 0
    """Files masked and written."""
    frames: int = 0
    faces: int = 0
    """Face regions masked, summed over frames (a face in 100 frames counts 100)."""
    fail_closed: int = 0
    errors: int = 0
    seconds: float = 0.0
    results: list[FileResult] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "frames": self.frames,
            "faces": self.faces,
            "fail_closed": self.fail_closed,
            "fps": round(self.fps, 2),
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "outputs": [asdict(r) for r in self.results],
        }


def run_batch(
    inputs: Sequence[str | Path],
    outdir: Path,
    masker: Masker,
    progress: Progress | None = None,
    report: Report | None = None,
    lookahead: LookaheadDetector | None = None,
) -> BatchSummary:
    """Mask every input into `outdir` (created if needed). Never raises for a bad input file.

    `lookahead` is the masker's detector when it was built by `build_batch_masker`: video frames are then
    detected ahead on its workers (batch_video.py); without it videos are still decoded and encoded on
    their own threads, and detected one frame at a time.
    """
    summary = BatchSummary()
    started = time.perf_counter()
    files, problems = expand_inputs(inputs)
    for problem in problems:
        _problem(summary, report, problem)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{outdir}: cannot create the output folder ({exc.strerror})") from None
    written: dict[Path, Path] = {}
    for path in files:
        target = output_path(path, outdir)
        if _same_file(path, target):
            _problem(summary, report, f"{path}: output would overwrite the input; choose another -o folder")
            continue
        if target in written:
            _problem(summary, report, f"{path}: output {target.name} already written from {written[target]} "
                                      "in this run; rename one of them")
            continue
        result = FileResult(input=str(path), output=None, kind=kind_of(path))
        try:
            if result.kind == "image":
                _mask_image(path, target, masker, result)
            else:
                _mask_video(path, target, masker, result, progress, lookahead)
        except MediaError as exc:
            result.error = exc.message
            _problem(summary, report, exc.message)
            summary.results.append(result)
            continue
        written[target] = path
        result.output = str(target)
        summary.results.append(result)
        summary.files += 1
        summary.frames += result.frames
        summary.faces += result.faces
        summary.fail_closed += result.fail_closed
    summary.seconds = time.perf_counter() - started
    return summary


def _problem(summary: BatchSummary, report: Report | None, line: str) -> None:
    summary.errors += 1
    log.debug("batch input problem: %s", line)
    if report is not None:
        report(line)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return b.exists() and a.samefile(b)
    except OSError:
        return False


def _mask_image(path: Path, target: Path, masker: Masker, result: FileResult) -> None:
    image = read_image(path)
    height, width = image.shape[:2]
    result.width, result.height = width, height
    masker.reset()
    masker.warm_up(width, height)
    now = time.time()
    masked = masker.process(RawFrame(image, seq=0, captured_at=now, monotonic=0.0))
    if masked is None:  # on_failure = "drop": nothing to write, and saying so is clearer than an empty file
        raise MediaError(f"{path}: detection failed and the config drops failed frames; no output written")
    write_image(target, masked.image)
    result.frames = 1
    result.faces = masked.faces
    result.fail_closed = int(masked.fail_closed)


def _mask_video(
    path: Path, target: Path, masker: Masker, result: FileResult, progress: Progress | None,
    lookahead: LookaheadDetector | None,
) -> None:
    with VideoReader(path) as reader:
        info = reader.info
        result.width, result.height, result.fps = info.width, info.height, info.fps
        masker.reset()
        if lookahead is None:
            masker.warm_up(info.width, info.height)
        # With workers there is no warm-up inference: the first frames pay the first inference's allocations
        # themselves, well inside the batch deadline (10 s), and a batch run needs no blank-frame inferences.
        writer = VideoWriter(target, info.width, info.height, info.fps)

        def counted(masked: MaskedFrame) -> None:
            result.frames += 1
            result.faces += masked.faces
            result.fail_closed += int(masked.fail_closed)
            if progress is not None:
                progress(path.name, result.frames, info.frames)

        committed = False
        try:
            mask_video(path, reader, writer, masker, lookahead, counted)
            writer.commit()
            committed = True
        finally:
            if not committed:
                writer.abort()
