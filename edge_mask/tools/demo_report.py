"""What the demo shows a person after the run: decodable frames counted from disk and a contact sheet.

Why count from disk: "decrypted" in the demo summary means a frame the receiver opened AND wrote as an
image that decodes, so the number is checked against what a clinician would actually open, not taken
from a counter.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_mask.capture import MediaError, read_image

log = logging.getLogger(__name__)

SHEET_COLUMNS = 4
SHEET_TILES = 12
TILE_WIDTH = 320


def find_outputs(output_dir: Path) -> tuple[Path | None, list[Path], list[Path]]:
    """(the frames folder, the MP4 files, the stored images in sequence order) under the receiver's output."""
    images: list[Path] = []
    frames_dir: Path | None = None
    for folder in sorted(Path(output_dir).glob("*/*/frames")):
        frames_dir = frames_dir or folder
        images.extend(sorted((p for p in folder.iterdir() if p.suffix in (".jpg", ".png")), key=_seq))
    videos = sorted(Path(output_dir).glob("*/*/*.mp4"))
    return frames_dir, videos, images


def _seq(path: Path) -> int:
    try:
        return int(path.stem)
    except ValueError:
        return -1


def count_decodable(images: Sequence[Path]) -> int:
    """How many of the receiver's frame files decode as images (through the one reader)."""
    count = 0
    for path in images:
        try:
            read_image(path)
        except MediaError:
            continue
        count += 1
    return count


def write_contact_sheet(images: Sequence[Path], dest: Path, tiles: int = SHEET_TILES) -> Path | None:
    """A grid of evenly sampled received (masked, decrypted) frames, each labelled with its sequence number."""
    import cv2

    if not images:
        return None
    picks = [images[i] for i in sorted(set(np.linspace(0, len(images) - 1, min(tiles, len(images))).astype(int)))]
    cells = []
    for path in picks:
        try:
            image = read_image(path)
        except MediaError:
            continue
        height = max(1, round(image.shape[0] * TILE_WIDTH / image.shape[1]))
        tile = cv2.resize(image, (TILE_WIDTH, height), interpolation=cv2.INTER_AREA)
        label = f"seq {_seq(path)}"
        cv2.putText(tile, label, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(tile, label, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
        cells.append(tile)
    if not cells:
        return None
    height = max(c.shape[0] for c in cells)
    cells = [np.pad(c, ((0, height - c.shape[0]), (0, 0), (0, 0))) for c in cells]
    while len(cells) % SHEET_COLUMNS:
        cells.append(np.zeros_like(cells[0]))
    rows = [np.hstack(cells[i : i + SHEET_COLUMNS]) for i in range(0, len(cells), SHEET_COLUMNS)]
    if not cv2.imwrite(str(dest), np.vstack(rows)):
        log.warning("demo: could not write the contact sheet %s", dest)
        return None
    return dest
