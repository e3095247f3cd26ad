"""Building the clinical view's landmark models: MediaPipe's face landmark and iris landmark models, taken
from the `mediapipe` wheel on PyPI, converted to ONNX and checked against the TFLite originals.

Why build rather than download: no ONNX copy of these models is published by their authors; the wheel is
(Apache-2.0, google-ai-edge/mediapipe). Each step is verified, so what lands in the cache is exactly the
published model in another file format:

1. the wheel (downloaded with pip, or found in `--from DIR`) must match its pinned sha256;
2. each .tflite inside it must match its pinned sha256;
3. the conversion (`tflite_onnx.py`) is deterministic: the same .tflite gives a byte-identical .onnx;
4. parity: the ONNX model on onnxruntime and the .tflite on the LiteRT interpreter (`ai-edge-litert`) are
   run on real faces (the 43 annotated faces of `faces-dlib`, in the product's upright crops of 1.6x the
   face box, `clinical.landmarks.crop`, and both eyes of each for the iris model); every output (landmarks
   in pixels of the model's input, and the face model's presence score) must agree within `PARITY_PX`. A
   model that fails is not written.

The ONNX files and a `.parity.json` report beside each (sha256 of wheel, .tflite and .onnx, the figures)
go to the model cache under the names in `models/manifest.toml`. Tools wing: the product never imports this.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from edge_mask.clinical.landmarks import EYE_CORNERS, EYE_CROP, FACE_CROP, FACE_SIZE, IRIS_SIZE, crop, to_frame
from edge_mask.config import ModelsConfig
from edge_mask.core.errors import ModelError, UserError
from edge_mask.detect.models import PARITY_SUFFIX, REPO_ROOT, check_cached, load_manifest, write_atomic
from edge_mask.tools.tflite_onnx import ConversionError, convert

log = logging.getLogger(__name__)

WHEEL = "mediapipe-0.10.14-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
WHEEL_SHA256 = "a807328339e7356fda0bb14df12fedbf1d33bdf81649c5f8666b0026b1cc30b4"
WHEEL_REQUIREMENT = "mediapipe==0.10.14"
PARITY_PX = 1e-3
"""Largest difference allowed between a TFLite and an ONNX landmark, in pixels of the model's input."""
DEFAULT_FACES = REPO_ROOT.parent / "shared" / "data" / "faces-dlib"
"""The annotated faces the parity check runs on: the shared data beside the checkout."""
WHEELS = REPO_ROOT / ".cache" / "wheels"
"""Where `ensure_landmark_models` keeps the downloaded wheel, so it is fetched once per checkout."""


@dataclass(frozen=True)
class LandmarkModel:
    id: str
    """The manifest id; the cache file is `<id>.onnx`."""
    member: str
    """Path of the .tflite inside the wheel."""
    tflite_sha256: str
    size: int
    """Input side in pixels (square RGB, values 0..1, NHWC)."""
    landmarks: str
    """The output holding the landmarks (x, y, z per point in input pixels)."""


FACE = LandmarkModel("face-landmark", "mediapipe/modules/face_landmark/face_landmark.tflite",
                     "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814", FACE_SIZE, "conv2d_21")
IRIS = LandmarkModel("iris-landmark", "mediapipe/modules/iris_landmark/iris_landmark.tflite",
                     "d1744d2a09c25f501d39eba4faff47e53ecca8852c5ce19bce8eeac39357521f", IRIS_SIZE,
                     "output_eyes_contours_and_brows")
MODELS = (FACE, IRIS)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------ the wheel


def find_wheel(folders: Iterable[Path], workdir: Path, offline: bool) -> Path:
    """The pinned mediapipe wheel: from one of `folders`, else downloaded by pip into `workdir`."""
    for folder in folders:
        candidate = Path(folder) / WHEEL
        if candidate.is_file():
            return candidate
    if offline:
        raise UserError(f"{WHEEL} is in none of the --from folders; put it there, or run without --offline")
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.11", "--platform", "manylinux_2_17_x86_64", "-d", str(workdir),
               WHEEL_REQUIREMENT]
    log.info("downloading %s with pip", WHEEL_REQUIREMENT)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    path = workdir / WHEEL
    if done.returncode != 0 or not path.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"pip could not download {WHEEL_REQUIREMENT} ({last}); download {WHEEL} from PyPI "
                        "and pass its folder with --from")
    return path


def read_members(wheel: Path) -> dict[str, bytes]:
    """The landmark models' .tflite bytes from the wheel, each checked against its pinned sha256."""
    actual = _sha256(wheel.read_bytes())
    if actual != WHEEL_SHA256:
        raise ModelError(f"{wheel}: sha256 {actual} is not the pinned {WHEEL_SHA256}; delete it and download "
                         f"{WHEEL_REQUIREMENT} from PyPI again")
    found: dict[str, bytes] = {}
    with zipfile.ZipFile(wheel) as archive:
        for model in MODELS:
            data = archive.read(model.member)
            if _sha256(data) != model.tflite_sha256:
                raise ModelError(f"{wheel}!{model.member}: sha256 {_sha256(data)} is not the pinned "
                                 f"{model.tflite_sha256}; use the {WHEEL_REQUIREMENT} wheel from PyPI")
            found[model.id] = data
    return found


# ------------------------------------------------------------------------------------------------ parity


def annotated_faces(faces_dlib: Path) -> list[tuple[Path, tuple[float, float, float, float]]]:
    """(photo, face box x1 y1 x2 y2) for every annotated face of the dlib example set."""
    out = []
    for xml_name in ("training.xml", "testing.xml"):
        root = ET.parse(faces_dlib / xml_name).getroot()
        for image in root.iter("image"):
            for box in image.iter("box"):
                top, left = float(box.get("top", 0)), float(box.get("left", 0))
                width, height = float(box.get("width", 0)), float(box.get("height", 0))
                out.append((faces_dlib / str(image.get("file")), (left, top, left + width, top + height)))
    return out


class _Pair:
    """One model twice: the TFLite original on LiteRT and the converted ONNX on onnxruntime."""

    def __init__(self, tflite_bytes: bytes, onnx_bytes: bytes) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise UserError("the parity check needs the LiteRT interpreter: pip install ai-edge-litert "
                            "(scripts/setup.sh installs it)") from None
        import onnxruntime as ort

        self.tflite = Interpreter(model_content=tflite_bytes)
        self.tflite.allocate_tensors()
        self.input = self.tflite.get_input_details()[0]["index"]
        self.outputs = {d["name"]: d["index"] for d in self.tflite.get_output_details()}
        self.onnx = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])

    def run(self, batch: npt.NDArray[np.float32]) -> tuple[dict[str, Any], dict[str, Any]]:
        self.tflite.set_tensor(self.input, batch)
        self.tflite.invoke()
        reference = {name: self.tflite.get_tensor(index).copy() for name, index in self.outputs.items()}
        names = [o.name for o in self.onnx.get_outputs()]
        converted = dict(zip(names, self.onnx.run(names, {self.onnx.get_inputs()[0].name: batch}), strict=True))
        return reference, converted


def parity(tflite: dict[str, bytes], onnx: dict[str, bytes], faces_dlib: Path) -> dict[str, dict[str, Any]]:
    """Run both forms of both models on every annotated face (and its two eyes); the figures per model."""
    face, iris = _Pair(tflite[FACE.id], onnx[FACE.id]), _Pair(tflite[IRIS.id], onnx[IRIS.id])
    worst = {FACE.id: 0.0, IRIS.id: 0.0}
    other = {FACE.id: 0.0, IRIS.id: 0.0}
    inputs = {FACE.id: 0, IRIS.id: 0}
    images: dict[Path, npt.NDArray[np.uint8]] = {}
    for photo, (x1, y1, x2, y2) in annotated_faces(faces_dlib):
        if photo not in images:
            read = cv2.imread(str(photo), cv2.IMREAD_COLOR)
            if read is None:
                raise UserError(f"{photo}: cannot read this photo; restore the shared faces-dlib folder")
            images[photo] = np.asarray(read, np.uint8)
        image = images[photo]
        side = FACE_CROP * max(x2 - x1, y2 - y1)
        batch, matrix = crop(image, ((x1 + x2) / 2, (y1 + y2) / 2), side, FACE.size)
        reference, converted = face.run(batch)
        worst[FACE.id], other[FACE.id] = _compare(reference, converted, FACE, worst[FACE.id], other[FACE.id])
        inputs[FACE.id] += 1
        mesh = to_frame(reference[FACE.landmarks].reshape(-1, 3)[:, :2], matrix)  # back to photo pixels
        for outer, inner in EYE_CORNERS:
            a, b = mesh[outer], mesh[inner]
            eye_side = EYE_CROP * float(np.linalg.norm(a - b))
            reference, converted = iris.run(crop(image, (float(a[0] + b[0]) / 2, float(a[1] + b[1]) / 2), eye_side,
                                                 IRIS.size)[0])
            worst[IRIS.id], other[IRIS.id] = _compare(reference, converted, IRIS, worst[IRIS.id], other[IRIS.id])
            inputs[IRIS.id] += 1
    return {model.id: {"inputs": inputs[model.id], "max_landmark_diff_px": worst[model.id],
                       "max_other_output_diff": other[model.id], "tolerance_px": PARITY_PX,
                       "passed": max(worst[model.id], other[model.id]) <= PARITY_PX and inputs[model.id] > 0}
            for model in MODELS}


def _compare(reference: dict[str, Any], converted: dict[str, Any], model: LandmarkModel, worst: float,
             other: float) -> tuple[float, float]:
    """The largest differences so far, landmarks and other outputs (the face model's presence score) apart;
    a missing or non-finite output counts as infinitely far."""
    for name, value in reference.items():
        mine = converted.get(name)
        if mine is None or np.size(mine) != np.size(value):
            diff = float("inf")
        else:
            gap = np.abs(np.asarray(value, np.float64) - np.asarray(mine, np.float64).reshape(np.shape(value)))
            diff = float(gap.max()) if np.all(np.isfinite(gap)) else float("inf")
        if name == model.landmarks or name == "output_iris":
            worst = max(worst, diff)
        else:
            other = max(other, diff)
    return worst, other


# ------------------------------------------------------------------------------------------------ the build


def build_landmark_models(cache_dir: Path, faces_dlib: Path, folders: Iterable[Path] = (), offline: bool = False,
                          progress: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Fetch, verify, convert and check both models; write them (and their reports) to `cache_dir` only if
    both pass. Returns the report."""
    if not all((faces_dlib / name).is_file() for name in ("training.xml", "testing.xml")):
        raise UserError(f"{faces_dlib}: the annotated faces for the parity check are not there; pass --faces DIR "
                        "(the shared data's faces-dlib folder)")
    with tempfile.TemporaryDirectory(prefix="edge-mask-landmarks-") as tmp:
        wheel = find_wheel(folders, Path(tmp), offline)
        progress(f"{wheel.name}: sha256 verified")
        tflite = read_members(wheel)
    onnx: dict[str, bytes] = {}
    for model in MODELS:
        try:
            onnx[model.id] = convert(tflite[model.id], model.id)
        except ConversionError as exc:
            raise ModelError(f"{model.member}: cannot convert it to ONNX ({exc})") from None
        progress(f"{model.id}: converted, {len(onnx[model.id])} bytes, sha256 {_sha256(onnx[model.id])[:16]}...")
    figures = parity(tflite, onnx, faces_dlib)
    report: dict[str, Any] = {"passed": all(f["passed"] for f in figures.values()), "models": {}}
    for model in MODELS:
        entry = {"passed": figures[model.id]["passed"], "wheel": WHEEL, "wheel_sha256": WHEEL_SHA256,
                 "tflite": model.member,
                 "tflite_sha256": model.tflite_sha256, "sha256": _sha256(onnx[model.id]),
                 "size": len(onnx[model.id]), "input": f"1x{model.size}x{model.size}x3 RGB 0..1 (NHWC)",
                 "parity": figures[model.id]}
        report["models"][model.id] = entry
        verdict = "PASS" if figures[model.id]["passed"] else "FAIL"
        progress(f"{model.id}: parity with the TFLite original on {figures[model.id]['inputs']} real crops: "
                 f"max landmark difference {figures[model.id]['max_landmark_diff_px']:.2e} px "
                 f"(tolerance {PARITY_PX} px) {verdict}")
    if not report["passed"]:
        return report
    cache_dir.mkdir(parents=True, exist_ok=True)
    for model in MODELS:
        dest = cache_dir / f"{model.id}.onnx"
        write_atomic(dest, onnx[model.id])
        text = json.dumps(report["models"][model.id], indent=1, sort_keys=True) + "\n"
        write_atomic(dest.with_suffix(PARITY_SUFFIX), text.encode())
        progress(f"{model.id}: {dest}")
    return report


def ensure_landmark_models(models: ModelsConfig, faces_dlib: Path = DEFAULT_FACES, wheels: Path = WHEELS,
                           announce: Callable[[str], None] = log.info) -> None:
    """Both models verified in `models`' cache, built there first when missing (the demo and the tests):
    the pinned wheel is downloaded by pip into `wheels` once. ModelError if they fail their parity check."""
    manifest = load_manifest()
    if all(check_cached(manifest.get(model.id), models, manifest)[0] for model in MODELS):
        return
    announce("building the face and iris landmark models from the pinned MediaPipe wheel (once)")
    wheels.mkdir(parents=True, exist_ok=True)
    find_wheel([wheels], wheels, offline=False)
    report = build_landmark_models(Path(models.cache_dir), faces_dlib, [wheels], offline=True,
                                   progress=lambda message: log.info("%s", message))
    if not report["passed"]:
        raise ModelError("the landmark models failed their parity check against TFLite; see the log")
