"""A small private PKI for the broker, the devices and the receiver (ECDSA P-256, X.509).

Why a private CA: the broker only has to trust certificates the clinic issued, and Mosquitto's
`use_identity_as_username` turns the certificate's CN (the device id) into the MQTT username that the
ACL checks. So the identity a device publishes under is fixed by the CA, not by anything the device says.

Why key and CSR are separate from signing: a device's TLS key must never leave the device. The device-side
step (`generate_key_and_csr`) writes the key and a CSR; the CA-side step (`issue_from_csr`) reads only the
CSR. The single-machine CLI flow runs both, but through these two functions and two files, so the same
layout works when the CA lives on another machine (or is AWS IoT Core's CSR registration).

Everything here is pure `cryptography`; no openssl binary is needed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_mask.core.errors import KeyMaterialError
from edge_mask.provision.broker_conf import TOPIC_ROOT as TOPIC_ROOT
from edge_mask.provision.broker_conf import render_acl as render_acl  # the broker files, beside the PKI
from edge_mask.provision.broker_conf import render_mosquitto_conf as render_mosquitto_conf
from edge_mask.seal import write_public, write_secret

log = logging.getLogger(__name__)

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_DAYS = 3650
LEAF_DAYS = 825  # the longest leaf validity browsers ever accepted; renew with `provision device --force`
Usage = Literal["client", "server"]


# ------------------------------------------------------------------------------------------- file writing


def write_file(path: Path, data: bytes, *, secret: bool = False, force: bool = False) -> Path:
    """Write `data` atomically; secrets get mode 0600 (new directories 0700), other files 0644.

    Never overwrites without `force`: replacing a CA key or a device key by accident breaks every
    certificate issued from it, so the operator has to say so. The writing itself is edge_mask.seal.keys'.
    """
    path = Path(path)
    if path.exists() and not force:
        raise KeyMaterialError(f"{path} already exists; pass --force to replace it (old certificates stop working)")
    return (write_secret if secret else write_public)(path, data, force=force)


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) as 0700: it holds private keys."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# -------------------------------------------------------------------------------------------- loading


def _read(path: Path, what: str) -> bytes:
    """The file's bytes, or a KeyMaterialError naming the file and the fix."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyMaterialError(f"{path}: {what} not found; run `edge-mask provision` to create it") from None
    except OSError as exc:
        raise KeyMaterialError(f"{path}: cannot read {what} ({exc.strerror}); check its permissions") from None


def load_certificate(path: Path, what: str = "certificate") -> x509.Certificate:
    path = Path(path)
    data = _read(path, what)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise KeyMaterialError(f"{path}: not a PEM X.509 {what}; point at the .crt file") from None


def load_ec_key(path: Path, what: str = "private key") -> ec.EllipticCurvePrivateKey:
    """Load a PEM private key and insist on ECDSA P-256 (the only type this PKI issues)."""
    path = Path(path)
    data = _read(path, what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyMaterialError(f"{path}: not an unencrypted PEM {what}; point at the right .key file") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        kind = type(key).__name__.lstrip("_").replace("PrivateKey", "") or "unknown"
        raise KeyMaterialError(f"{path}: wrong key type ({kind}); expected an ECDSA P-256 {what}")
    return key


@dataclass(frozen=True)
class CA:
    """A loaded certificate authority: its certificate, signing key and where they live."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path


def create_ca(directory: Path, name: str = "edge-mask clinic CA", days: int = CA_DAYS, force: bool = False) -> CA:
    """Write `ca.crt` and `ca.key` (0600) into `directory` (0700)."""
    directory = private_dir(Path(directory))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path = directory / CA_KEY
    cert_path = directory / CA_CERT
    for existing in (key_path, cert_path):
        if existing.exists() and not force:
            raise KeyMaterialError(f"{existing} already exists; pass --force to replace the CA (re-issue every cert)")
    write_file(key_path, _key_pem(key), secret=True, force=force)
    write_file(cert_path, _cert_pem(cert), force=force)
    log.info("created CA %r in %s (valid %d days)", name, directory, days)
    return CA(cert, key, cert_path, key_path)


def load_ca(directory: Path) -> CA:
    """Load `ca.crt` + `ca.key` from `directory`, with one-line errors for the usual mistakes."""
    directory = Path(directory)
    if not directory.is_dir():
        raise KeyMaterialError(
            f"{directory}: CA directory not found; create it with `edge-mask provision ca {directory}`"
        )
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not cert_path.exists() or not key_path.exists():
        missing = CA_CERT if not cert_path.exists() else CA_KEY
        raise KeyMaterialError(
            f"{directory}: no CA here ({missing} missing); create one with `edge-mask provision ca {directory}`"
        )
    cert = load_certificate(cert_path, "CA certificate")
    key = load_ec_key(key_path, "CA key")
    if cert.public_key() != key.public_key():
        raise KeyMaterialError(f"{key_path}: does not belong to {cert_path}; restore the matching pair")
    _require_ca(cert, cert_path)
    check_certificate(cert_path)
    return CA(cert, key, cert_path, key_path)


def _require_ca(cert: x509.Certificate, path: Path) -> None:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise KeyMaterialError(f"{path}: not a CA certificate; point --ca at the directory from `provision ca`")


# ---------------------------------------------------------------------------------- keys, CSRs, issuing


def generate_key_and_csr(
    key_path: Path, common_name: str, force: bool = False
) -> x509.CertificateSigningRequest:
    """Device side: a new P-256 key (written 0600, never read back by the CA step) and its CSR."""
    key = ec.generate_private_key(ec.SECP256R1())
    write_file(key_path, _key_pem(key), secret=True, force=force)
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )


def write_csr(path: Path, csr: x509.CertificateSigningRequest, force: bool = False) -> Path:
    return write_file(path, csr.public_bytes(serialization.Encoding.PEM), force=force)


def load_csr(path: Path) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(Path(path).read_bytes())
    except FileNotFoundError:
        raise KeyMaterialError(f"{path}: CSR not found; create it on the device first") from None
    except ValueError:
        raise KeyMaterialError(f"{path}: not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise KeyMaterialError(f"{path}: CSR signature is invalid; create a new CSR on the device")
    return csr


def common_name(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def issue_from_csr(
    ca: CA,
    csr: x509.CertificateSigningRequest,
    usage: Usage = "client",
    days: int = LEAF_DAYS,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> x509.Certificate:
    """CA side: sign a CSR. The subject is rebuilt from the CSR's CN only, so a device cannot smuggle
    other attributes; SANs and EKU are set by the CA, not taken from the request."""
    if not csr.is_signature_valid:
        raise KeyMaterialError("CSR signature is invalid; create a new CSR on the device")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, ec.SECP256R1):
        raise KeyMaterialError("wrong key type in CSR; expected an ECDSA P-256 key")
    cn = common_name(csr.subject)
    if not cn:
        raise KeyMaterialError("CSR has no common name; the CN must be the device id")
    now = dt.datetime.now(dt.timezone.utc)
    not_after = min(now + dt.timedelta(days=days), ca.cert.not_valid_after_utc)
    eku = ExtendedKeyUsageOID.SERVER_AUTH if usage == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=True, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    for ip in ip_addresses:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise KeyMaterialError(f"{ip!r} is not an IP address; pass a host name with --host instead") from None
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


@dataclass(frozen=True)
class IssuedFiles:
    """Where a leaf's key, CSR and certificate were written."""

    key: Path
    csr: Path
    cert: Path
    fingerprint_sha256: str


def _issue_files(
    ca: CA, out_dir: Path, stem: str, cn: str, usage: Usage, force: bool,
    dns_names: Sequence[str] = (), ip_addresses: Sequence[str] = (), days: int = LEAF_DAYS,
) -> IssuedFiles:
    out_dir = private_dir(Path(out_dir))
    key_path, csr_path, cert_path = out_dir / f"{stem}.key", out_dir / f"{stem}.csr", out_dir / f"{stem}.crt"
    if not force:
        for existing in (key_path, csr_path, cert_path):
            if existing.exists():
                raise KeyMaterialError(f"{existing} already exists; pass --force to replace it")
    csr = generate_key_and_csr(key_path, cn, force=force)  # "device side"
    write_csr(csr_path, csr, force=force)
    cert = issue_from_csr(ca, load_csr(csr_path), usage, days, dns_names, ip_addresses)  # "CA side"
    write_file(cert_path, _cert_pem(cert), force=force)
    return IssuedFiles(key_path, csr_path, cert_path, fingerprint(cert))


def make_device_cert(ca: CA, out_dir: Path, device_id: str, force: bool = False, days: int = LEAF_DAYS) -> IssuedFiles:
    """`device.key` / `device.csr` / `device.crt` with CN = device id (the MQTT username) and clientAuth."""
    return _issue_files(ca, out_dir, "device", device_id, "client", force, days=days)


def make_client_cert(ca: CA, out_dir: Path, name: str, stem: str, force: bool = False) -> IssuedFiles:
    """A client certificate for a non-device identity, e.g. the receiver (CN = its MQTT username)."""
    return _issue_files(ca, out_dir, stem, name, "client", force)


def make_server_cert(
    ca: CA, out_dir: Path, host: str, force: bool = False, extra_names: Sequence[str] = ("localhost", "127.0.0.1"),
) -> IssuedFiles:
    """`broker.key` / `broker.crt` for `host` with serverAuth; SANs cover `host` plus `extra_names`
    (each an IP address or a DNS name), so clients that check the host name accept it."""
    dns: list[str] = []
    ips: list[str] = []
    for name in (host, *extra_names):
        try:
            ipaddress.ip_address(name)
            bucket = ips
        except ValueError:
            bucket = dns
        if name not in bucket:
            bucket.append(name)
    return _issue_files(ca, out_dir, "broker", host, "server", force, dns_names=dns, ip_addresses=ips)


# ------------------------------------------------------------------------------------------ inspection


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 over the DER certificate, lower-case hex (what the enrollment record stores)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def check_certificate(path: Path, now: dt.datetime | None = None) -> int:
    """Whole days until `path` expires; raises KeyMaterialError when it is expired or not yet valid.

    `edge-mask doctor` calls this for the CA, device and broker certificates and warns when few days are left.
    """
    cert = load_certificate(Path(path))
    now = now or dt.datetime.now(dt.timezone.utc)
    if now < cert.not_valid_before_utc:
        raise KeyMaterialError(
            f"{path}: certificate not valid before {cert.not_valid_before_utc:%Y-%m-%d}; check the clock"
        )
    if now >= cert.not_valid_after_utc:
        raise KeyMaterialError(
            f"{path}: certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}; "
            "issue a new one with `edge-mask provision ... --force`"
        )
    return (cert.not_valid_after_utc - now).days


def verify_issued_by(cert_path: Path, ca_cert_path: Path) -> None:
    """Raise KeyMaterialError unless `cert_path` was signed by the CA at `ca_cert_path`."""
    cert, ca_cert = load_certificate(cert_path), load_certificate(ca_cert_path, "CA certificate")
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise KeyMaterialError(f"{cert_path}: not issued by the CA in {ca_cert_path}; re-provision it") from None
