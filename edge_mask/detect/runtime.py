"""onnxruntime sessions: provider names, threads, no spinning. onnxruntime is imported only when a
session is opened, so importing this module costs nothing on a machine without it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edge_mask.core.errors import ModelError, UserError

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}


def resolve_providers(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """Map provider names (or the aliases cpu/cuda/tensorrt) to onnxruntime names; refuse missing ones.

    CPU is always appended as the fallback onnxruntime needs for operators a GPU provider lacks.
    """
    names = [PROVIDER_ALIASES.get(p.lower(), p) for p in requested] or ["CPUExecutionProvider"]
    missing = [n for n in names if n not in available]
    if missing:
        raise UserError(
            f"detector.providers: {', '.join(missing)} not available in this onnxruntime; "
            f"available: {', '.join(available)}"
        )
    if "CPUExecutionProvider" not in names:
        names.append("CPUExecutionProvider")
    return names


SESSION_CONFIG = {
    # No busy-waiting between operators: on a 2-core device capture, masking and encoding run beside the
    # detector, and spinning intra-op threads steal the cores they need (worse latency under contention).
    "session.intra_op.allow_spinning": "0",
    # The same int8 model must give the same faces on every CPU, or the parity gate and the leak tests speak for
    # one machine only. The int8 YuNet holds int8 convolution weights (onnxruntime's quantizer writes them so),
    # and x86 CPUs without VNNI multiply uint8 by int8 with an instruction that saturates 16-bit sums: on a
    # 2-core AMD EPYC (AVX2) the shipped model found 252 faces at 0.25 on the gate's held-aside images, failed
    # the gate (98.4% of its faces confirmed by fp32) and left a dark face of the press clip unmasked, where an
    # AVX-512 VNNI Xeon and ARM find 255. This option makes onnxruntime turn such weights into uint8 at load on
    # x86 and take its exact uint8 x uint8 path (255 faces, the gate passes). It does nothing on ARM or for
    # fp32 models; on x86 (AVX2, VNNI or not) int8 gets slower, where `precision = "auto"` keeps fp32 anyway.
    "session.x64quantprecision": "1",
}
"""onnxruntime config entries of every session `open_session` opens; they decide which kernels run, so the
precision verdict's key names them (`verdict.setup_key`) and the ARM parity runner sets the same."""


def open_session(path: Any, threads: int, providers: Sequence[str] = ("CPUExecutionProvider",)) -> Any:
    """An onnxruntime session with `threads` intra-op threads (0 = onnxruntime's default)."""
    import onnxruntime as ort

    chosen = resolve_providers(providers, ort.get_available_providers())
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    for key, value in SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    # Frames go in one at a time: a batch of 1 fixed up front lets onnxruntime plan shapes it would otherwise
    # leave symbolic (YuNet's dynamic input is batch x 3 x height x width): about 4% off each inference.
    options.add_free_dimension_override_by_name("batch", 1)
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=chosen)
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        raise ModelError(
            f"{path}: onnxruntime cannot load this model ({exc}); re-run 'edge-mask models fetch'"
        ) from exc


def fixed_input_size(session: Any) -> tuple[int, int] | None:
    """(width, height) when the model's input has a fixed spatial size, None when it is dynamic."""
    shape = session.get_inputs()[0].shape
    height, width = shape[2], shape[3]
    if isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0:
        return (width, height)
    return None
