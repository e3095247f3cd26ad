"""The ground's shared pieces: the one percentile and the one IoU."""

from __future__ import annotations

import numpy as np
import pytest

from edge_mask.core.boxes import iou_matrix
from edge_mask.core.stats import percentile


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None
    assert percentile([5, 1, 4, 2, 3], 60) == 3  # order does not matter; a sample, never an interpolation
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile(values, 101)


def test_masker_and_service_report_the_same_p99() -> None:
    from edge_mask.mask.engine import percentiles
    from edge_mask.service.metrics import LatencyWindow

    samples = [0.001 * i for i in range(1, 201)]
    window = LatencyWindow()
    for value in samples:
        window.add(value)
    p50, p99 = percentiles(samples)
    summary = window.summary()
    assert (summary["p50_ms"], summary["p99_ms"]) == (round(p50 * 1000, 2), round(p99 * 1000, 2)) == (100.0, 198.0)


def test_iou_matrix_shapes_and_degenerate_boxes() -> None:
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [3, 3, 3, 3]], np.float32)
    assert iou_matrix(a, b)[0].tolist() == pytest.approx([1.0, 1 / 3, 0.0, 0.0])
    assert iou_matrix(a, b[:0]).shape == (1, 0)
    assert iou_matrix([[0, 0, 4, 4]], [[2, 2, 6, 6]])[0, 0] == pytest.approx(4 / 28)
