"""`edge-mask models list|fetch|verify|quantize|landmarks`: manage the verified model cache.

`fetch` downloads (or copies from `--from DIR` and the manifest's mirror folders) into the cache and refuses
any file whose sha256 differs from models/manifest.toml. `quantize` builds the project's int8 YuNet from the
fp32 model, calibrated on real face photos, and prints its parity against fp32; a model that fails parity
is written with a failing report and never loaded. `landmarks` builds the clinical view's face and iris
landmark models from the pinned MediaPipe wheel (PyPI) and checks them against the TFLite originals.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

DEFAULT_INT8 = "yunet-int8"
DEFAULT_SOURCE = "yunet-fp32-dynamic"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "models", help="list, fetch, verify and quantize detector models", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="device config (TOML) whose [models] section names the cache")
    parser.add_argument("--cache", type=Path, help="model cache directory (overrides the config)")
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    p_list = sub.add_parser("list", help="models in the manifest and the state of their cached copy")
    p_list.add_argument("--json", action="store_true", help="print JSON")
    p_list.set_defaults(func=run_list)

    p_verify = sub.add_parser("verify", help="re-hash cached models; non-zero exit if any cached copy is bad")
    p_verify.set_defaults(func=run_verify)

    p_fetch = sub.add_parser("fetch", help="download or copy models into the cache, verifying sha256")
    p_fetch.add_argument("models", nargs="*", metavar="MODEL", help="model ids (default: the fp32 models)")
    p_fetch.add_argument("--from", dest="sources", action="append", type=Path, default=[], metavar="DIR",
                         help="a folder holding the model files; tried first (repeatable)")
    p_fetch.add_argument("--offline", action="store_true", help="never use the network, only folders")
    p_fetch.set_defaults(func=run_fetch)

    p_quant = sub.add_parser("quantize", help="build an int8 model by static quantization and check parity")
    p_quant.add_argument("source", nargs="?", default=DEFAULT_SOURCE, metavar="SRC",
                         help=f"fp32 model id or .onnx path (default {DEFAULT_SOURCE})")
    p_quant.add_argument("--calib", action="append", type=Path, required=True, metavar="DIR",
                         help="face photos (and videos) to calibrate on; repeatable")
    p_quant.add_argument("--parity", action="append", type=Path, default=[], metavar="DIR",
                         help="held-aside photos/videos for the parity check (default: every 4th calibration image)")
    p_quant.add_argument("-o", "--output", type=Path, help=f"output .onnx (default: the cache's {DEFAULT_INT8})")
    p_quant.add_argument("--format", dest="formats", action="append", choices=["QDQ", "QOperator"],
                         help="quantization format(s) to try (default both)")
    p_quant.add_argument("--calib-count", type=int, metavar="N",
                         help="calibration images (default 128: the shipped model, as the demo and the tests build it)")
    p_quant.add_argument("--detect-width", type=int, default=640, metavar="PX", help="detection width (default 640)")
    p_quant.add_argument("--json", action="store_true", help="print the parity report as JSON")
    p_quant.set_defaults(func=run_quantize)

    p_marks = sub.add_parser("landmarks", help="build the face and iris landmark models (clinical view) from the "
                             "pinned MediaPipe wheel and check them against the TFLite originals")
    p_marks.add_argument("--from", dest="sources", action="append", type=Path, default=[], metavar="DIR",
                         help="a folder holding the mediapipe wheel; tried before pip (repeatable)")
    p_marks.add_argument("--offline", action="store_true", help="never download, only --from folders")
    p_marks.add_argument("--faces", type=Path, metavar="DIR",
                         help="the annotated faces for the parity check (default: ../shared/data/faces-dlib)")
    p_marks.add_argument("--json", action="store_true", help="print the report as JSON")
    p_marks.set_defaults(func=run_landmarks)


def _models_config(args: argparse.Namespace) -> Any:
    from edge_mask.config import EdgeConfig, ModelsConfig, load_config

    models = load_config(args.config, EdgeConfig).models if args.config else ModelsConfig()
    if args.cache:
        models = models.model_copy(update={"cache_dir": args.cache.expanduser()})
    return models


def run_list(args: argparse.Namespace) -> int:
    from edge_mask.detect import check_cached, load_manifest

    models, manifest = _models_config(args), load_manifest()
    rows = []
    for entry in manifest.models.values():
        ok, state = check_cached(entry, models, manifest)
        rows.append({"id": entry.id, "precision": entry.precision, "file": entry.file, "input": entry.input,
                     "license": entry.license, "cached": ok, "state": state})
    if args.json:
        print(json.dumps({"cache_dir": str(models.cache_dir), "models": rows}, indent=2))
        return 0
    print(f"model cache: {models.cache_dir}")
    for row in rows:
        print(f"  {row['id']:<20} {row['precision']:<5} {row['file']:<45} {row['state']}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from edge_mask.detect import check_cached, load_manifest

    models, manifest = _models_config(args), load_manifest()
    bad = 0
    for entry in manifest.models.values():
        ok, state = check_cached(entry, models, manifest)
        if state == "missing":
            continue
        print(f"{entry.id}: {state}")
        bad += not ok
    return 1 if bad else 0


def run_fetch(args: argparse.Namespace) -> int:
    from edge_mask.detect import fetch, load_manifest
    from edge_mask.provision import read_url

    models, manifest = _models_config(args), load_manifest()
    ids = args.models or [e.id for e in manifest.models.values() if e.precision == "fp32" and not e.built]
    for model_id in ids:
        path = fetch(manifest.get(model_id), models, manifest, extra_sources=args.sources,
                     opener=None if args.offline else read_url)
        print(f"{model_id}: {path} (sha256 verified)")
    return 0


def run_quantize(args: argparse.Namespace) -> int:
    from edge_mask.detect import cache_path, load_manifest, resolve_model
    from edge_mask.tools.quantize import CALIB_COUNT, DEFAULT_FORMATS, quantize_model

    models = _models_config(args)
    source = resolve_model(args.source, models, "fp32")
    output = args.output or cache_path(load_manifest().get(DEFAULT_INT8), models)
    count = CALIB_COUNT if args.calib_count is None else args.calib_count
    report = quantize_model(
        source, output, calibration=args.calib, parity=args.parity or None, formats=args.formats or DEFAULT_FORMATS,
        calib_count=count, detect_width=args.detect_width, progress=print,
    )
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    return 0 if report["passed"] else 1


def run_landmarks(args: argparse.Namespace) -> int:
    from edge_mask.tools.landmark_models import DEFAULT_FACES, build_landmark_models

    models = _models_config(args)
    faces = args.faces or DEFAULT_FACES
    report = build_landmark_models(models.cache_dir, faces, args.sources, args.offline, progress=print)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    return 0 if report["passed"] else 1
