"""Config validation: every kind of bad config stops with one line naming file, key, value and expectation.

Also: environment overrides of single keys, relative paths resolved against the config file's directory,
`${CREDENTIALS_DIRECTORY}` expansion for systemd credentials, and `edge-mask run --check-config` exit
codes with one line and no traceback (it is the unit's ExecStartPre).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_mask.config import EdgeConfig, OpenCVCameraConfig, load_config
from edge_mask.core.errors import ConfigError

GOOD = 'device_id = "cam-1"\n'


def write(tmp_path: Path, text: str, name: str = "edge.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BAD_CONFIGS = [
    ("invalid_toml", 'device_id = "cam-1"\n[camera\n', r"edge\.toml: not valid TOML .*fix the syntax"),
    ("unknown_key_typo", GOOD + "[camera]\nfsp = 30\n", r"edge\.toml: unknown key 'camera\.fsp'; remove it or check"),
    ("unknown_section", GOOD + "[camra]\ntype = 'opencv'\n", r"unknown key 'camra'"),
    ("missing_device_id", "[camera]\nfps = 30\n", r"edge\.toml: missing required key 'device_id'"),
    ("bad_device_id", 'device_id = "room 12/../x"\n', r"device_id = \"room 12/\.\./x\": String should match pattern"),
    ("unknown_camera_type", GOOD + "[camera]\ntype = 'webcam'\n",
     r"camera\.type = \"webcam\": unknown camera type; expected one of .*opencv.*picamera2.*synthetic"),
    ("negative_fps", GOOD + "[camera]\nfps = -5\n", r"camera\.fps = -5: Input should be greater than 0"),
    ("wrong_value_type", GOOD + "[camera]\ntype = 'picamera2'\nwidth = 'wide'\n",
     r"camera\.width = \"wide\": Input should be a valid integer"),
    ("threshold_out_of_range", GOOD + "[detector]\nthreshold = 1.5\n",
     r"detector\.threshold = 1\.5: Input should be less than or equal to 1"),
    ("unknown_mask_style", GOOD + "[mask]\nstyle = 'sparkle'\n",
     r"mask\.style = \"sparkle\": Input should be 'solid', 'pixelate', 'blur' or 'clinical'"),
    ("port_out_of_range", GOOD + "[uplink.broker]\nport = 70000\n",
     r"uplink\.broker\.port = 70000: Input should be less than or equal to 65535"),
    ("metrics_on_public_address", GOOD + "[service]\nprometheus_port = 9100\nprometheus_host = '0.0.0.0'\n",
     r"service\.prometheus_host = \"0\.0\.0\.0\": Input should be '127\.0\.0\.1'"),
    ("tls_incomplete", GOOD + "[uplink.broker.tls]\nca = 'ca.crt'\n",
     r"missing required key 'uplink\.broker\.tls\.cert'"),
    ("raw_queue_zero", GOOD + "[service]\nraw_queue = 0\n", r"service\.raw_queue = 0: Input should be greater than"),
    ("section_not_a_table", GOOD + "camera = 'opencv'\n", r"camera = \"opencv\""),
    ("unset_credentials_dir", GOOD + "[seal]\nsigning_key = '${CREDENTIALS_DIRECTORY}/device-signing.key'\n",
     r"seal\.signing_key = .*\$\{CREDENTIALS_DIRECTORY\} is not set"),
]


@pytest.mark.parametrize(("kind", "text", "message"), BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_bad_config_is_rejected_with_its_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, text: str, message: str
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path, EdgeConfig, env={})
    assert str(path) in info.value.message  # every line names the file
    assert "Traceback" not in info.value.message


def test_missing_file_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: config file not found; pass --config"):
        load_config(tmp_path / "nope.toml", EdgeConfig)


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "[camera]\nfps = 0\nloops = true\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, EdgeConfig, env={})
    lines = info.value.message.splitlines()
    assert len(lines) == 2 and all(line.startswith(str(path)) for line in lines)


def test_environment_overrides_single_keys(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "[camera]\ntype = 'opencv'\nsource = 'clip.mp4'\nfps = 30\n")
    env = {
        "EDGE_MASK__CAMERA__FPS": "15",
        "EDGE_MASK__CAMERA__LOOP": "true",
        "EDGE_MASK__SERVICE__LOG_LEVEL": "DEBUG",
        "EDGE_MASK__UPLINK__BROKER__HOST": "mqtt.clinic.example",
        "UNRELATED": "x",
    }
    cfg = load_config(path, EdgeConfig, env=env)
    assert isinstance(cfg.camera, OpenCVCameraConfig)
    assert cfg.camera.fps == 15 and cfg.camera.loop is True
    assert cfg.service.log_level == "DEBUG" and cfg.uplink.broker.host == "mqtt.clinic.example"
    with pytest.raises(ConfigError, match=r"camera\.fps = \"fast\""):
        load_config(path, EdgeConfig, env={"EDGE_MASK__CAMERA__FPS": "fast"})
    with pytest.raises(ConfigError, match=r"EDGE_MASK__DEVICE_ID__X: device_id\.x overrides a non-table key"):
        load_config(path, EdgeConfig, env={"EDGE_MASK__DEVICE_ID__X": "1"})


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    path = write(bundle, GOOD + "[seal]\nsigning_key = 'keys/device-signing.key'\n[spool]\npath = 'spool'\n")
    monkeypatch.chdir(tmp_path)  # resolution must not depend on the working directory
    cfg = load_config(path, EdgeConfig, env={})
    assert cfg.seal.signing_key == bundle.resolve() / "keys" / "device-signing.key"
    assert cfg.seal.recipient_public_key == bundle.resolve() / "recipient.pub"  # the default is relative too
    assert cfg.spool.path == bundle.resolve() / "spool"


def test_credentials_directory_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/edge-mask.service")
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/edge-mask")
    path = write(
        tmp_path,
        GOOD + "[seal]\nsigning_key = '${CREDENTIALS_DIRECTORY}/device-signing.key'\n"
        "[spool]\npath = '${STATE_DIRECTORY}/spool'\n",
    )
    cfg = load_config(path, EdgeConfig, env={})
    assert cfg.seal.signing_key == Path("/run/credentials/edge-mask.service/device-signing.key")
    assert cfg.spool.path == Path("/var/lib/edge-mask/spool")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_mask", *args], capture_output=True, text=True, timeout=60
    )


def test_check_config_exit_codes_and_one_line(tmp_path: Path) -> None:
    from edge_mask.seal import generate_recipient, generate_signing_key

    generate_recipient(tmp_path / "cloud")
    (tmp_path / "recipient.pub").write_bytes((tmp_path / "cloud" / "recipient.pub").read_bytes())
    generate_signing_key(tmp_path / "device-signing.key")  # --check-config also checks what the files hold
    good = write(tmp_path, GOOD + "[camera]\ntype = 'synthetic'\n", "good.toml")
    result = run_cli("run", "--check-config", "--config", str(good))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == [f"edge-mask: config OK: {good} (device cam-1, camera synthetic)"]

    bad = write(tmp_path, GOOD + "[camera]\nfps = -1\n", "bad.toml")
    result = run_cli("run", "--check-config", "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"edge-mask: error: {bad}: camera.fps = -1: Input should be greater than 0"
    ]
    assert "Traceback" not in result.stderr

    (tmp_path / "device-signing.key").unlink()
    result = run_cli("run", "--check-config", "--config", str(good))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "seal.signing_key" in result.stderr and "file not found" in result.stderr


def test_batch_config_needs_no_device_and_ignores_device_sections(tmp_path: Path) -> None:
    """`edge-mask mask --config` validates only what the masker reads; unknown keys are still errors."""
    from edge_mask.commands.mask import batch_config

    plain = tmp_path / "batch.toml"
    plain.write_text("[detector]\nthreshold = 0.4\n[mask]\nstyle = 'pixelate'\n")
    cfg = batch_config(plain, style=None, threshold=None)
    assert (cfg.detector.threshold, cfg.mask.style) == (0.4, "pixelate")
    device = tmp_path / "device.toml"
    device.write_text("device_id = 'cam-1'\n[camera]\nsource = '/dev/video0'\n[uplink]\ninflight = 4\n"
                      "[tracker]\nhold_s = 2.0\n")
    assert batch_config(device, style="blur", threshold=None).tracker.hold_s == 2.0
    typo = tmp_path / "typo.toml"
    typo.write_text("[mask]\nstyel = 'blur'\n[cameraa]\nfps = 3\n")
    with pytest.raises(ConfigError) as err:
        batch_config(typo, style=None, threshold=None)
    assert "unknown key 'mask.styel'" in str(err.value) and "unknown key 'cameraa'" in str(err.value)
