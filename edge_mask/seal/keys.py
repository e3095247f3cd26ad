"""Key files: the cloud recipient's X25519 pair, each device's Ed25519 signing key, and enrollment records.

Formats (documented in docs/format.md):

* Private keys (recipient `recipient.key`, device `device-signing.key`): unencrypted PEM PKCS#8, mode 0600.
  Unencrypted because the device starts unattended; the file mode and systemd credentials protect it.
  A private key that is readable or writable by group or others is refused (like ssh does): a key that
  other accounts could read must be treated as leaked, so the fix is `chmod 600`, not a warning in a log.
* Public keys (`recipient.pub`): PEM SubjectPublicKeyInfo.
* The recipient key id is not stored anywhere: it is `sha256(raw 32-byte X25519 public key)[:8]`, derived
  on load, so a sidecar can never disagree with the key it describes.
* Enrollment records: one JSON file per device, `<devices_dir>/<device_id>.json`, holding the device id,
  the raw Ed25519 public key (base64), the SHA-256 fingerprint of its TLS certificate and the enrollment time.

Every loading problem raises KeyMaterialError with one line naming the file and the fix.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from edge_mask.core.errors import KeyMaterialError

log = logging.getLogger(__name__)

KEY_ID_LEN = 8
RECIPIENT_KEY_NAME = "recipient.key"
RECIPIENT_PUB_NAME = "recipient.pub"
ENROLLMENT_FORMAT = "edge-mask-enrollment/1"
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")

_KEY_NAMES = {
    X25519PrivateKey: "an X25519 private key",
    X25519PublicKey: "an X25519 public key",
    Ed25519PrivateKey: "an Ed25519 private key",
    Ed25519PublicKey: "an Ed25519 public key",
}


def key_id(public: X25519PublicKey) -> bytes:
    """The 8-byte recipient key id carried in every header: sha256(raw public key)[:8]."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:KEY_ID_LEN]


@dataclass(frozen=True)
class RecipientPublicKey:
    """What a device holds: the cloud's public key, enough to seal and nothing more."""

    key: X25519PublicKey
    key_id: bytes

    @classmethod
    def from_key(cls, key: X25519PublicKey) -> RecipientPublicKey:
        return cls(key, key_id(key))


@dataclass(frozen=True)
class RecipientPrivateKey:
    """What only the cloud holds: opens sealed frames addressed to `key_id`."""

    key: X25519PrivateKey = field(repr=False)
    key_id: bytes

    @classmethod
    def from_key(cls, key: X25519PrivateKey) -> RecipientPrivateKey:
        return cls(key, key_id(key.public_key()))

    def public(self) -> RecipientPublicKey:
        return RecipientPublicKey.from_key(self.key.public_key())


# ------------------------------------------------------------------------------------------------ writing


def write_secret(path: str | Path, data: bytes, force: bool = False) -> Path:
    """Write secret bytes with mode 0600 (new parent dirs 0700), atomically; refuse to overwrite unless forced.

    Why atomic (temp + fsync + rename): a power cut while re-keying must leave the old key or the new one,
    never half a key. Why refuse: silently replacing a device or recipient key orphans every frame sealed to
    or signed by the old one.
    """
    path = Path(path)
    if path.exists() and not force:
        raise _exists(path)
    _make_dirs(path.parent, 0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if the path appeared meanwhile: no silent overwrite
            os.unlink(tmp)
    except FileExistsError:
        os.unlink(tmp)
        raise _exists(path) from None
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def _exists(path: Path) -> KeyMaterialError:
    return KeyMaterialError(f"{path}: already exists; refusing to overwrite a key (pass --force to replace it)")


def write_public(path: str | Path, data: bytes, force: bool = False) -> Path:
    """Write a public file (mode 0644), atomically; refuse to overwrite unless forced."""
    path = Path(path)
    if path.exists() and not force:
        raise KeyMaterialError(f"{path}: already exists; refusing to overwrite (pass --force to replace it)")
    _make_dirs(path.parent, 0o755)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def _make_dirs(directory: Path, mode: int) -> None:
    missing = []
    d = directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        d.mkdir(mode=mode, exist_ok=True)
        os.chmod(d, mode)  # mkdir's mode is masked by the umask


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in `directory` durable (the key writer's and the receiver's store's)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_pem(key: X25519PrivateKey | Ed25519PrivateKey) -> bytes:
    pkcs8 = serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())


def public_pem(key: X25519PublicKey | Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def generate_recipient(directory: str | Path, force: bool = False) -> tuple[Path, Path]:
    """Make the cloud's X25519 key pair as `recipient.key` (0600) and `recipient.pub` in `directory`."""
    directory = Path(directory)
    private = X25519PrivateKey.generate()
    priv_path = directory / RECIPIENT_KEY_NAME
    pub_path = directory / RECIPIENT_PUB_NAME
    if not force:
        for p in (priv_path, pub_path):
            if p.exists():
                raise _exists(p)
    write_secret(priv_path, private_pem(private), force=force)
    write_public(pub_path, public_pem(private.public_key()), force=force)
    log.info("recipient key pair written to %s (key id %s)", directory, key_id(private.public_key()).hex())
    return priv_path, pub_path


def generate_signing_key(path: str | Path, force: bool = False) -> Ed25519PublicKey:
    """Make a device's Ed25519 signing key at `path` (0600) and return its public half for enrollment."""
    private = Ed25519PrivateKey.generate()
    write_secret(path, private_pem(private), force=force)
    return private.public_key()


# ------------------------------------------------------------------------------------------------ loading


def _read(path: Path, what: str) -> tuple[bytes, int]:
    """The file's bytes and permission bits, or a KeyMaterialError naming the file and the fix."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyMaterialError(f"{path}: {what} not found; check the path in the config or provision the key") from None
    except OSError as exc:
        raise KeyMaterialError(f"{path}: cannot access {what} ({exc.strerror}); check path and permissions") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyMaterialError(f"{path}: {what} is not a regular file; point the config at the key file")
    try:
        return path.read_bytes(), stat.S_IMODE(st.st_mode)
    except OSError as exc:
        raise KeyMaterialError(f"{path}: cannot read {what} ({exc.strerror}); check its owner and mode") from None


def _describe(obj: Any) -> str:
    for cls, name in _KEY_NAMES.items():
        if isinstance(obj, cls):
            return name
    return f"a {type(obj).__name__.replace('PrivateKey', ' private key').replace('PublicKey', ' public key')}"


def _load_private(path: Path, what: str) -> Any:
    data, mode = _read(path, what)
    if b"-----BEGIN" not in data:
        raise KeyMaterialError(f"{path}: {what} is not a PEM file; expected PEM PKCS#8 made by edge-mask provisioning")
    if b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
        raise KeyMaterialError(f"{path}: holds a public key, expected the {what}; point the config at the private key")
    if mode & 0o077:
        raise KeyMaterialError(
            f"{path}: {what} is accessible by group or others (mode {mode:04o}); "
            f"run `chmod 600 {path}` (and treat the key as leaked if others could read it)"
        )
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyMaterialError(f"{path}: {what} is password-protected; store it unencrypted with mode 0600") from None
    except (ValueError, UnicodeError) as exc:
        raise KeyMaterialError(f"{path}: {what} is not a readable PEM private key ({exc}); re-provision it") from None
    except UnsupportedAlgorithm as exc:
        raise KeyMaterialError(f"{path}: {what} uses an unsupported key type ({exc}); re-provision it") from None


def _load_public(path: Path, what: str) -> Any:
    data, _ = _read(path, what)
    if b"PRIVATE KEY-----" in data:
        raise KeyMaterialError(
            f"{path}: holds a private key, expected the {what}; give the device only the public key file "
            "(a private recipient key must never be on a device)"
        )
    if b"-----BEGIN" not in data:
        raise KeyMaterialError(f"{path}: {what} is not a PEM file; expected PEM SubjectPublicKeyInfo")
    try:
        return serialization.load_pem_public_key(data)
    except (ValueError, UnicodeError) as exc:
        raise KeyMaterialError(f"{path}: {what} is not a readable PEM public key ({exc}); re-provision it") from None
    except UnsupportedAlgorithm as exc:
        raise KeyMaterialError(f"{path}: {what} uses an unsupported key type ({exc}); re-provision it") from None


def _wrong_type(path: Path, got: Any, expected: str) -> KeyMaterialError:
    return KeyMaterialError(f"{path}: holds {_describe(got)}, expected {expected}; check which file the config names")


def load_recipient_public_key(path: str | Path) -> RecipientPublicKey:
    path = Path(path)
    key = _load_public(path, "recipient public key")
    if not isinstance(key, X25519PublicKey):
        raise _wrong_type(path, key, "an X25519 recipient public key")
    return RecipientPublicKey.from_key(key)


def load_recipient_private_key(path: str | Path) -> RecipientPrivateKey:
    path = Path(path)
    key = _load_private(path, "recipient private key")
    if not isinstance(key, X25519PrivateKey):
        raise _wrong_type(path, key, "an X25519 recipient private key")
    return RecipientPrivateKey.from_key(key)


def load_signing_key(path: str | Path) -> Ed25519PrivateKey:
    path = Path(path)
    key = _load_private(path, "device signing key")
    if not isinstance(key, Ed25519PrivateKey):
        raise _wrong_type(path, key, "an Ed25519 device signing key")
    return key


def load_signing_public_key(path: str | Path) -> Ed25519PublicKey:
    """An Ed25519 public key in PEM (e.g. one a device exported for enrollment)."""
    path = Path(path)
    key = _load_public(path, "device signing public key")
    if not isinstance(key, Ed25519PublicKey):
        raise _wrong_type(path, key, "an Ed25519 device signing public key")
    return key


# --------------------------------------------------------------------------------------------- enrollment


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class Enrollment:
    """The cloud's record that `device_id` signs with `signing_public_key` and connects with that certificate."""

    device_id: str
    signing_public_key: Ed25519PublicKey
    cert_fingerprint_sha256: str
    enrolled_at: str = field(default_factory=_now_iso)

    def __post_init__(self) -> None:
        if not _DEVICE_ID.match(self.device_id):
            raise KeyMaterialError(f"device id {self.device_id!r}: use 1-64 letters, digits, '_', '.', '-'")
        if not _FINGERPRINT.match(self.cert_fingerprint_sha256):
            raise KeyMaterialError(
                f"device {self.device_id}: cert_fingerprint_sha256 must be 64 lowercase hex digits"
            )

    def to_json(self) -> dict[str, str]:
        raw = self.signing_public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {
            "format": ENROLLMENT_FORMAT,
            "device_id": self.device_id,
            "signing_public_key": base64.b64encode(raw).decode("ascii"),
            "cert_fingerprint_sha256": self.cert_fingerprint_sha256,
            "enrolled_at": self.enrolled_at,
        }

    def save(self, directory: str | Path, force: bool = False) -> Path:
        """Write `<directory>/<device_id>.json`; refuse to replace an existing enrollment unless forced."""
        path = Path(directory) / f"{self.device_id}.json"
        data = (json.dumps(self.to_json(), indent=2) + "\n").encode()
        if path.exists() and not force:
            raise KeyMaterialError(f"{path}: device {self.device_id} is already enrolled; pass --force to re-enroll it")
        return write_public(path, data, force=True)

    @classmethod
    def load(cls, path: str | Path) -> Enrollment:
        path = Path(path)
        fix = "re-enroll the device with `edge-mask provision device`"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise KeyMaterialError(f"{path}: cannot read enrollment record ({exc.strerror})") from None
        except (ValueError, UnicodeError) as exc:
            raise KeyMaterialError(f"{path}: enrollment record is not valid JSON ({exc}); {fix}") from None
        if not isinstance(data, dict) or data.get("format") != ENROLLMENT_FORMAT:
            raise KeyMaterialError(f"{path}: not an enrollment record (format must be {ENROLLMENT_FORMAT!r}); {fix}")
        try:
            device_id = str(data["device_id"])
            raw = base64.b64decode(str(data["signing_public_key"]), validate=True)
            public = Ed25519PublicKey.from_public_bytes(raw)
            record = cls(device_id, public, str(data["cert_fingerprint_sha256"]), str(data.get("enrolled_at", "")))
        except KeyError as exc:
            raise KeyMaterialError(f"{path}: enrollment record lacks {exc}; {fix}") from None
        except (ValueError, binascii.Error) as exc:
            raise KeyMaterialError(f"{path}: enrollment record has a bad signing_public_key ({exc}); {fix}") from None
        if path.stem != device_id:
            raise KeyMaterialError(f"{path}: file name differs from device_id {device_id!r}; name it {device_id}.json")
        return record


def load_device_registry(directory: str | Path) -> dict[str, Enrollment]:
    """All enrollment records in `directory`, keyed by device id. An empty directory is an empty registry."""
    directory = Path(directory)
    if not directory.is_dir():
        raise KeyMaterialError(
            f"{directory}: devices directory not found; enroll devices (`edge-mask provision device`) or fix the path"
        )
    return {(e := Enrollment.load(p)).device_id: e for p in sorted(directory.glob("*.json"))}
