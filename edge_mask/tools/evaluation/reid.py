"""`eval reid`: can a face-recognition attacker still identify a masked person?

The attacker is dlib's ResNet face encoder through `face_recognition` (128-d encodings, Euclidean distance,
"same person" below 0.6 by that library's convention). It is given every advantage we can give it:

* clean gallery photos (the attacker has reference pictures of the patients);
* the face locations found by its own HOG detector on the *original* probe, so it encodes exactly where the
  face was even when the mask leaves nothing its detector would find (we also report how often its detector
  still finds a face in the masked probe).

Masking uses the product's masker on the probe only, for each style (solid, pixelate, blur), plus the anchor:
deface's default anonymisation, replicated here (CenterFace at threshold 0.2, box scaled by 1.3, ellipse
filled with a box blur whose kernel is half the box size). "original" is the unmasked baseline.

Data layout (../shared/data/identities): knn/train/<person>/*.jpg gallery, knn/test/*.jpg probes,
pairs/master.csv (file_x, file_y, Decision Yes/No) for verification: x clean vs y masked.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_mask.capture import read_image
from edge_mask.config import EdgeConfig
from edge_mask.core.errors import UserError
from edge_mask.core.types import Image
from edge_mask.tools.evaluation.metrics import rank1, share_below
from edge_mask.tools.evaluation.pipeline import build_detector, mask_still, with_mask

log = logging.getLogger(__name__)

MATCH = 0.6
MAX_SIDE = 1024
STYLES = ("original", "solid", "pixelate", "blur", "deface")
KNOWN_STYLES = (*STYLES, "clinical")
"""`clinical` (the schematic face, issue 13) is asked for by name: `--styles clinical`."""
INSTALL_HINT = (
    "install the attacker with `pip install dlib-bin face_recognition_models` and "
    "`pip install --no-deps face_recognition` (or `pip install -e '.[eval]'` then the --no-deps step)"
)
# knn/test file names do not all name their people (Jon Snow is played by Kit Harington); everything not
# listed falls back to gallery names found in the file name.
PROBE_LABELS = {
    "johnsnow_test1.jpg": ("kit_harington",),
    "kit_with_rose.jpg": ("kit_harington", "rose_leslie"),
    "obama_and_biden.jpg": ("obama", "biden"),
}
Location = tuple[int, int, int, int]  # face_recognition order: top, right, bottom, left


def load_attacker() -> Any:
    try:
        import face_recognition
    except ImportError:
        raise UserError(f"eval reid needs face_recognition (dlib); {INSTALL_HINT}") from None
    return face_recognition


def shrink(image: Image, max_side: int = MAX_SIDE) -> Image:
    """Big press photos are scaled down once, before masking and attack alike, to keep the run short."""
    scale = max_side / max(image.shape[:2])
    if scale >= 1.0:
        return image
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    return np.ascontiguousarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), np.uint8)


class Attacker:
    """Locates faces on clean images and encodes any image at given locations."""

    def __init__(self) -> None:
        self.fr = load_attacker()

    def locate(self, image: Image) -> list[Location]:
        return [tuple(map(int, loc)) for loc in self.fr.face_locations(_rgb(image), 1, "hog")]  # type: ignore[misc]

    def encode(self, image: Image, locations: Sequence[Location]) -> list[np.ndarray[Any, Any]]:
        if not locations:
            return []
        return list(self.fr.face_encodings(_rgb(image), known_face_locations=list(locations)))


def _rgb(image: Image) -> Image:
    return np.ascontiguousarray(image[:, :, ::-1])


def _largest(locations: Sequence[Location]) -> list[Location]:
    return [max(locations, key=lambda box: (box[2] - box[0]) * (box[1] - box[3]))] if locations else []


def deface_default(judge: Any) -> Callable[[Image], Image]:
    """deface 1.5.0's default anonymisation: threshold 0.2, mask scale 1.3, ellipse, box blur (size/2)."""

    def apply(image: Image) -> Image:
        out = image.copy()
        height, width = image.shape[:2]
        for x1, y1, x2, y2 in judge.detect(image).boxes.astype(int):
            grow_w, grow_h = (x2 - x1) * 0.3, (y2 - y1) * 0.3
            left, right = max(0, round(x1 - grow_w)), min(width - 1, round(x2 + grow_w))
            top, bottom = max(0, round(y1 - grow_h)), min(height - 1, round(y2 + grow_h))
            if right - left < 2 or bottom - top < 2:
                continue
            roi = out[top:bottom, left:right]
            blurred = cv2.blur(roi, (max(1, (right - left) // 2), max(1, (bottom - top) // 2)))
            ellipse = np.zeros(roi.shape[:2], np.uint8)
            centre = ((right - left) // 2, (bottom - top) // 2)
            cv2.ellipse(ellipse, centre, centre, 0, 0, 360, 255, -1)
            roi[ellipse > 0] = blurred[ellipse > 0]
        return out

    return apply


def maskers(cfg: EdgeConfig, styles: Sequence[str]) -> tuple[dict[str, Callable[[Image], Image]], list[Any]]:
    """One image -> image function per style, and the resources to release afterwards."""
    functions: dict[str, Callable[[Image], Image]] = {}
    owned: list[Any] = []
    for style in styles:
        if style == "original":
            functions[style] = lambda image: image
        elif style == "deface":
            from edge_mask.tools.evaluation.judge import CenterFaceJudge

            judge = CenterFaceJudge(threshold=0.2)
            owned.append(judge)
            functions[style] = deface_default(judge)
        elif style in ("solid", "pixelate", "blur", "clinical"):
            styled = with_mask(cfg, style=style)
            if style == "clinical" and styled.clinical.signals == "off":  # the template moves with the signals
                standard = styled.clinical.model_copy(update={"signals": "standard"})
                styled = styled.model_copy(update={"clinical": standard})
            detector = build_detector(styled)
            owned.append(detector)
            functions[style] = _product_masker(styled, detector)
        else:
            raise UserError(f"unknown mask style {style!r}; expected some of {', '.join(KNOWN_STYLES)}")
    return functions, owned


def _product_masker(cfg: EdgeConfig, detector: Any) -> Callable[[Image], Image]:
    def apply(image: Image) -> Image:
        masked = mask_still(cfg, detector, image)
        if masked is None:
            raise UserError("mask.on_failure = 'drop' dropped a probe; evaluate with on_failure = 'mask_frame'")
        return masked.image

    return apply


def probe_labels(name: str, people: Sequence[str]) -> tuple[str, ...]:
    if name in PROBE_LABELS:
        return PROBE_LABELS[name]
    stem = Path(name).stem.lower()
    return tuple(person for person in people if person.lower() in stem)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def evaluate_reid(
    data: Path, cfg: EdgeConfig, styles: Sequence[str] = STYLES, max_pairs: int | None = None
) -> dict[str, Any]:
    """Identification (knn) and verification (pairs) per style; JSON-ready."""
    train, test, pairs_csv = data / "knn" / "train", data / "knn" / "test", data / "pairs" / "master.csv"
    for needed in (train, test, pairs_csv):
        if not needed.exists():
            raise UserError(f"{needed}: not found; pass --data with the identities folder (knn/ and pairs/)")
    attacker = Attacker()
    functions, owned = maskers(cfg, styles)
    try:
        identification = _identify(attacker, functions, train, test)
        verification = _verify(attacker, functions, pairs_csv, max_pairs)
    finally:
        for resource in owned:
            getattr(resource, "release", resource.close)()
    return {"match_threshold": MATCH, "styles": list(styles), "default_style": cfg.mask.style,
            "identification": identification, "verification": verification}


def _identify(
    attacker: Attacker, functions: dict[str, Callable[[Image], Image]], train: Path, test: Path
) -> dict[str, Any]:
    gallery: list[np.ndarray[Any, Any]] = []
    labels: list[str] = []
    for person_dir in sorted(p for p in train.iterdir() if p.is_dir()):
        for path in _images(person_dir):
            image = shrink(read_image(path))
            encodings = attacker.encode(image, _largest(attacker.locate(image)))
            gallery.extend(encodings)
            labels.extend([person_dir.name] * len(encodings))
    if not gallery:
        raise UserError(f"{train}: the attacker found no face in any gallery photo")
    people = sorted(set(labels))
    result: dict[str, Any] = {"gallery_people": len(people), "gallery_faces": len(gallery), "styles": {}}
    probes = [(path, shrink(read_image(path))) for path in _images(test)]
    located = [(path, image, attacker.locate(image)) for path, image in probes]
    for style, apply in functions.items():
        rows: list[dict[str, Any]] = []
        attacker_detections = 0
        for path, image, locations in located:
            truth = probe_labels(path.name, people)
            masked = apply(image)
            attacker_detections += len(attacker.locate(masked)) if style != "original" else len(locations)
            for encoding in attacker.encode(masked, locations):
                who, distance = rank1(encoding, gallery, labels)
                rows.append({"probe": path.name, "truth": list(truth), "rank1": who, "distance": round(distance, 4),
                             "identified": bool(who in truth and distance < MATCH)})
        distances: list[float] = [float(row["distance"]) for row in rows]
        result["styles"][style] = {
            "probe_faces": len(rows),
            "attacker_detections": attacker_detections,
            "identified": sum(row["identified"] for row in rows),
            "rank1_correct": sum(row["rank1"] in row["truth"] for row in rows),
            "below_threshold": sum(d < MATCH for d in distances),
            "mean_distance": float(np.mean(distances)) if distances else None,
            "distances": distances,
            "rows": rows,
        }
        log.info("reid %s: %d/%d probe faces identified", style, result["styles"][style]["identified"], len(rows))
    return result


def _verify(
    attacker: Attacker, functions: dict[str, Callable[[Image], Image]], pairs_csv: Path, max_pairs: int | None
) -> dict[str, Any]:
    with pairs_csv.open(newline="", encoding="utf-8") as handle:
        pairs = [(r["file_x"].strip(), r["file_y"].strip(), r["Decision"].strip()) for r in csv.DictReader(handle)]
    pairs = pairs[:max_pairs] if max_pairs else pairs
    folder = pairs_csv.parent
    names = sorted({name for x, y, _ in pairs for name in (x, y)})
    images = {name: shrink(read_image(folder / name)) for name in names}
    places = {name: _largest(attacker.locate(image)) for name, image in images.items()}
    clean = {name: attacker.encode(images[name], places[name]) for name in names}
    result: dict[str, Any] = {"pairs": len(pairs), "same": sum(d == "Yes" for _, _, d in pairs),
                              "no_face": sorted(n for n in names if not places[n]), "styles": {}}
    for style, apply in functions.items():
        masked = {name: attacker.encode(apply(images[name]), places[name]) for name in names}
        same: list[float] = []
        different: list[float] = []
        for x, y, decision in pairs:
            if not clean[x] or not masked[y]:
                continue
            distance = float(np.linalg.norm(clean[x][0] - masked[y][0]))
            (same if decision == "Yes" else different).append(round(distance, 4))
        result["styles"][style] = {
            "same_pairs": len(same),
            "same_verified": int(sum(d < MATCH for d in same)),
            "same_verified_share": share_below(same, MATCH),
            "different_pairs": len(different),
            "false_accepts": int(sum(d < MATCH for d in different)),
            "mean_same_distance": float(np.mean(same)) if same else None,
            "same_distances": same,
        }
        log.info("verify %s: %d/%d same-person pairs still verified", style,
                 result["styles"][style]["same_verified"], len(same))
    return result
