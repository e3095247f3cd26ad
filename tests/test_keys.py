"""Key files and enrollment records: formats round-trip, and every operator mistake is one clear line.

Why these cases: the costly mistakes in the field are a key of the wrong kind in the wrong place (the
device given the cloud's private key, a signing key where the recipient key belongs), a private key left
world-readable, and a re-provisioning run that silently replaces a key.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge_mask.core.errors import KeyMaterialError, UserError
from edge_mask.seal.keys import (
    Enrollment,
    RecipientPrivateKey,
    RecipientPublicKey,
    generate_recipient,
    generate_signing_key,
    key_id,
    load_device_registry,
    load_recipient_private_key,
    load_recipient_public_key,
    load_signing_key,
    load_signing_public_key,
    public_pem,
    write_secret,
)

RAW = serialization.Encoding.Raw


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_recipient_pair_round_trips_with_a_derived_key_id(tmp_path: Path) -> None:
    priv_path, pub_path = generate_recipient(tmp_path / "cloud" / "keys")
    assert (priv_path.name, pub_path.name) == ("recipient.key", "recipient.pub")
    assert _mode(priv_path) == 0o600 and _mode(pub_path) == 0o644
    assert _mode(tmp_path / "cloud") == 0o700 and _mode(tmp_path / "cloud" / "keys") == 0o700
    private = load_recipient_private_key(priv_path)
    public = load_recipient_public_key(pub_path)
    assert isinstance(private, RecipientPrivateKey) and isinstance(public, RecipientPublicKey)
    raw = public.key.public_bytes(RAW, serialization.PublicFormat.Raw)
    assert private.key.public_key().public_bytes(RAW, serialization.PublicFormat.Raw) == raw
    import hashlib

    assert public.key_id == private.key_id == hashlib.sha256(raw).digest()[:8] == key_id(public.key)
    assert private.public().key_id == public.key_id
    assert "key=" not in repr(private)  # the private key object stays out of logs


def test_signing_key_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "dev" / "device-signing.key"
    public = generate_signing_key(path)
    assert _mode(path) == 0o600 and path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = load_signing_key(path)
    assert loaded.public_key().public_bytes(RAW, serialization.PublicFormat.Raw) == public.public_bytes(
        RAW, serialization.PublicFormat.Raw
    )
    pub_path = tmp_path / "dev" / "device-signing.pub"
    pub_path.write_bytes(public_pem(public))
    assert load_signing_public_key(pub_path).public_bytes(RAW, serialization.PublicFormat.Raw) == public.public_bytes(
        RAW, serialization.PublicFormat.Raw
    )


def test_keys_are_never_silently_overwritten(tmp_path: Path) -> None:
    priv_path, _ = generate_recipient(tmp_path)
    before = priv_path.read_bytes()
    with pytest.raises(KeyMaterialError, match=r"recipient.key: already exists; refusing .* --force"):
        generate_recipient(tmp_path)
    assert priv_path.read_bytes() == before
    generate_recipient(tmp_path, force=True)
    assert priv_path.read_bytes() != before and _mode(priv_path) == 0o600
    key = tmp_path / "s.key"
    generate_signing_key(key)
    with pytest.raises(KeyMaterialError, match="already exists"):
        generate_signing_key(key)
    write_secret(key, b"x", force=True)
    assert key.read_bytes() == b"x" and _mode(key) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


@pytest.fixture
def keyset(tmp_path: Path) -> dict[str, Path]:
    priv, pub = generate_recipient(tmp_path / "cloud")
    signing = tmp_path / "device-signing.key"
    generate_signing_key(signing)
    return {"recipient_key": priv, "recipient_pub": pub, "signing": signing}


def test_wrong_key_types_name_the_file_and_what_was_expected(keyset: dict[str, Path]) -> None:
    with pytest.raises(KeyMaterialError) as exc:
        load_recipient_private_key(keyset["signing"])
    assert str(keyset["signing"]) in exc.value.message
    assert "holds an Ed25519 private key, expected an X25519 recipient private key" in exc.value.message
    with pytest.raises(KeyMaterialError, match="holds an X25519 private key, expected an Ed25519 device signing key"):
        load_signing_key(keyset["recipient_key"])
    # The device must only ever get the public recipient key.
    with pytest.raises(KeyMaterialError, match="holds a private key, expected the recipient public key"):
        load_recipient_public_key(keyset["recipient_key"])
    with pytest.raises(KeyMaterialError, match="holds a public key, expected the recipient private key"):
        load_recipient_private_key(keyset["recipient_pub"])


def test_unreadable_or_bogus_files_are_one_line_errors(tmp_path: Path, keyset: dict[str, Path]) -> None:
    missing = tmp_path / "nope.key"
    with pytest.raises(KeyMaterialError, match=r"nope.key: device signing key not found; check the path"):
        load_signing_key(missing)
    junk = tmp_path / "junk.key"
    write_secret(junk, b"hello")
    with pytest.raises(KeyMaterialError, match="is not a PEM file"):
        load_signing_key(junk)
    broken = tmp_path / "broken.key"
    write_secret(broken, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyMaterialError, match="not a readable PEM private key"):
        load_signing_key(broken)
    encrypted = tmp_path / "enc.key"
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )
    write_secret(encrypted, pem)
    with pytest.raises(KeyMaterialError, match="password-protected"):
        load_signing_key(encrypted)
    with pytest.raises(KeyMaterialError, match="is not a regular file"):
        load_signing_key(tmp_path)
    assert issubclass(KeyMaterialError, UserError)  # the CLI prints it as one line and exits non-zero


def test_private_keys_readable_by_others_are_refused(keyset: dict[str, Path]) -> None:
    for mode in (0o644, 0o640, 0o604, 0o660):
        os.chmod(keyset["signing"], mode)
        with pytest.raises(KeyMaterialError, match=rf"mode {mode:04o}.*chmod 600"):
            load_signing_key(keyset["signing"])
    os.chmod(keyset["signing"], 0o400)  # read-only for the owner (systemd credentials) is fine
    load_signing_key(keyset["signing"])
    os.chmod(keyset["recipient_key"], 0o644)
    with pytest.raises(KeyMaterialError, match="accessible by group or others"):
        load_recipient_private_key(keyset["recipient_key"])


def test_enrollment_records_round_trip(tmp_path: Path) -> None:
    devices = tmp_path / "devices"
    keys = {name: Ed25519PrivateKey.generate() for name in ("exam-1", "exam-2")}
    for name, key in keys.items():
        Enrollment(name, key.public_key(), hashes.Hash(hashes.SHA256()).finalize().hex()).save(devices)
    registry = load_device_registry(devices)
    assert sorted(registry) == ["exam-1", "exam-2"]
    for name, key in keys.items():
        record = registry[name]
        record.signing_public_key.verify(key.sign(b"frame"), b"frame")  # the stored key is the device's
        assert record.enrolled_at.endswith("+00:00")
    data = json.loads((devices / "exam-1.json").read_text())
    assert set(data) == {"format", "device_id", "signing_public_key", "cert_fingerprint_sha256", "enrolled_at"}
    with pytest.raises(KeyMaterialError, match="already enrolled; pass --force"):
        Enrollment("exam-1", keys["exam-2"].public_key(), "0" * 64).save(devices)
    Enrollment("exam-1", keys["exam-2"].public_key(), "0" * 64).save(devices, force=True)
    assert load_device_registry(devices)["exam-1"].cert_fingerprint_sha256 == "0" * 64
    assert load_device_registry(tmp_path / "devices") and load_device_registry(_empty(tmp_path)) == {}


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_bad_enrollment_records_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match="devices directory not found"):
        load_device_registry(tmp_path / "missing")
    with pytest.raises(KeyMaterialError, match="device id"):
        Enrollment("bad id!", Ed25519PrivateKey.generate().public_key(), "0" * 64)
    with pytest.raises(KeyMaterialError, match="64 lowercase hex"):
        Enrollment("dev1", Ed25519PrivateKey.generate().public_key(), "abc")
    devices = tmp_path / "devices"
    Enrollment("dev1", Ed25519PrivateKey.generate().public_key(), "0" * 64).save(devices)
    good = json.loads((devices / "dev1.json").read_text())
    cases = {
        "not json {": "not valid JSON",
        json.dumps({**good, "format": "other"}): "not an enrollment record",
        json.dumps({k: v for k, v in good.items() if k != "signing_public_key"}): "lacks 'signing_public_key'",
        json.dumps({**good, "signing_public_key": "!!!"}): "bad signing_public_key",
        json.dumps({**good, "signing_public_key": "AAAA"}): "bad signing_public_key",
        json.dumps({**good, "device_id": "dev2"}): "file name differs from device_id 'dev2'",
    }
    for text, message in cases.items():
        (devices / "dev1.json").write_text(text)
        with pytest.raises(KeyMaterialError, match=message) as exc:
            load_device_registry(devices)
        assert "dev1.json" in exc.value.message and "\n" not in exc.value.message


def test_x25519_key_ids_differ_per_key() -> None:
    ids = {key_id(X25519PrivateKey.generate().public_key()) for _ in range(20)}
    assert len(ids) == 20 and all(len(i) == 8 for i in ids)
