"""`edge-mask bench compare` reports wall and CPU ratios per round (a stand-in deface: a shell script that
copies the clip, since the real deface is an optional install)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edge_mask.tools.evaluation.compare import run_compare


def test_compare_reports_wall_and_cpu_ratios(shared_data: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin" / "deface"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\ncp "$1" "$3"\n')  # deface CLIP -o OUT
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    clip = shared_data / "video" / "asl" / "eat.mkv"
    result = run_compare(clip, rounds=2, cores=1, workdir=tmp_path)
    assert result["frames"] == 47 and len(result["rounds"]) == 2
    for row in result["rounds"]:
        assert row["ours_s"] > 0 and row["ours_cpu_s"] > 0, "the masker's CPU time is the child's, all threads"
        assert row["cpu_ratio"] == pytest.approx(row["deface_cpu_s"] / row["ours_cpu_s"])
    assert set(result["cpu_ratio"]) == {"min", "median", "max"}
