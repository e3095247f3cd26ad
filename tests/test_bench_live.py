"""`edge-mask bench --live` in short: the whole service on a real clip, a stand-in cloud, every figure filled.

Figures are reported, never asserted against a speed target here (speed lives in the benchmark); the test
checks that the benchmark measures what it says: frames confirmed by the cloud, latencies through the broker
no larger than to the cloud's confirmation, and nothing dropped at a modest frame rate.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_mask.config import ModelsConfig
from edge_mask.provision.enroll import mosquitto_path
from edge_mask.tools.bench_live import format_report, run_live_bench


def test_live_bench_reports_capture_to_broker_and_to_cloud(shared_dir: Path, model_cache: ModelsConfig) -> None:
    if mosquitto_path() is None:
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")
    clip = shared_dir / "data" / "video" / "asl" / "again.mkv"
    report = run_live_bench(clip, fps=10.0, seconds=3.0, warmup_s=1.0,
                            detector={"type": "onnx", "precision": "fp32"}, models_dir=Path(model_cache.cache_dir))
    text = format_report(report)
    assert report["frames_acked"] > 0 and report["frames_spooled"] > 0, text
    assert report["dropped"] == {}, text
    for name in ("acked", "broker", "spooled"):
        assert report[f"latency_capture_to_{name}_p50_ms"] is not None, text
    assert report["latency_capture_to_broker_p50_ms"] <= report["latency_capture_to_acked_p50_ms"], text
    assert "window_wall" not in report
    assert "capture->broker" in text and "capture->cloud ack" in text
    assert 1 <= report["cores"] <= report["machine_cores"], text


def test_cpus_pins_the_process_and_rejects_what_cannot_be_pinned() -> None:
    import os

    from edge_mask.core.errors import UserError
    from edge_mask.tools.bench_live import pin

    before = os.sched_getaffinity(0)
    try:
        pin("0")
        assert os.sched_getaffinity(0) == {0}
        if len(before) >= 2 and {0, 1} <= before:
            pin("0-1")
            assert os.sched_getaffinity(0) == {0, 1}
        with pytest.raises(UserError, match="--cpus 9999"):
            pin("9999")
        with pytest.raises(UserError, match="--cpus zero"):
            pin("zero")
    finally:
        os.sched_setaffinity(0, before)
