"""The private PKI: chains, identities, usages, expiry and the one-line errors an operator sees."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_mask.core.errors import KeyMaterialError
from edge_mask.provision import pki


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_ca_is_a_p256_ca_with_secret_key(tmp_path: Path) -> None:
    ca = pki.create_ca(tmp_path / "ca", days=30)
    assert isinstance(ca.key.curve, ec.SECP256R1)
    bc = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    assert _mode(ca.key_path) == 0o600 and _mode(tmp_path / "ca") == 0o700
    assert 29 <= pki.check_certificate(ca.cert_path) <= 30
    loaded = pki.load_ca(tmp_path / "ca")
    assert loaded.cert == ca.cert


def test_device_cert_chains_to_ca_with_cn_as_identity(tmp_path: Path) -> None:
    ca = pki.create_ca(tmp_path / "ca")
    issued = pki.make_device_cert(ca, tmp_path / "dev", "cam-07")
    cert = pki.load_certificate(issued.cert)
    cert.verify_directly_issued_by(ca.cert)  # raises if the signature does not chain
    pki.verify_issued_by(issued.cert, ca.cert_path)
    assert pki.common_name(cert.subject) == "cam-07"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # the certificate holds the public half of the device's own key (which never went to the CA step)
    key = pki.load_ec_key(issued.key)
    assert cert.public_key() == key.public_key()
    assert _mode(issued.key) == 0o600
    assert issued.fingerprint_sha256 == pki.fingerprint(cert) and len(issued.fingerprint_sha256) == 64


def test_csr_signing_takes_only_the_cn(tmp_path: Path) -> None:
    """A device cannot ask for extra subject fields or SANs: the CA rebuilds the subject from the CN."""
    ca = pki.create_ca(tmp_path / "ca")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cam-1"),
                                 x509.NameAttribute(NameOID.ORGANIZATION_NAME, "evil")]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("broker.example")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert = pki.issue_from_csr(ca, csr)
    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cam-1")])
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_server_cert_names_host_and_loopback(tmp_path: Path) -> None:
    ca = pki.create_ca(tmp_path / "ca")
    issued = pki.make_server_cert(ca, tmp_path / "broker", "mqtt.clinic.example")
    cert = pki.load_certificate(issued.cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.clinic.example", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_wrong_key_type_is_a_clear_error(tmp_path: Path) -> None:
    ca = pki.create_ca(tmp_path / "ca")
    ed = ed25519.Ed25519PrivateKey.generate()
    ca.key_path.write_bytes(ed.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    with pytest.raises(KeyMaterialError, match=r"ca\.key: wrong key type \(Ed25519\); expected an ECDSA P-256"):
        pki.load_ca(tmp_path / "ca")
    other = ec.generate_private_key(ec.SECP384R1())
    ca.key_path.write_bytes(other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    with pytest.raises(KeyMaterialError, match="wrong key type"):
        pki.load_ca(tmp_path / "ca")


def test_missing_ca_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match="CA directory not found; create it with `edge-mask provision ca"):
        pki.load_ca(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KeyMaterialError, match=r"no CA here \(ca\.crt missing\)"):
        pki.load_ca(tmp_path / "empty")


def test_expired_certificate_is_a_clear_error(tmp_path: Path) -> None:
    ca = pki.create_ca(tmp_path / "ca", days=1)
    issued = pki.make_device_cert(ca, tmp_path / "dev", "cam-1")
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)
    with pytest.raises(KeyMaterialError, match=r"device\.crt: certificate expired on .*; issue a new one"):
        pki.check_certificate(issued.cert, now=later)
    # a device certificate never outlives its CA
    assert pki.check_certificate(issued.cert) <= pki.check_certificate(ca.cert_path)


def test_expired_ca_is_refused_when_loading(tmp_path: Path) -> None:
    ca = pki.create_ca(tmp_path / "ca")
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10)
    subject = ca.cert.subject
    old = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(ca.key.public_key())
        .serial_number(1).not_valid_before(past).not_valid_after(past + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca.key, hashes.SHA256())
    )
    ca.cert_path.write_bytes(old.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(KeyMaterialError, match="certificate expired"):
        pki.load_ca(tmp_path / "ca")


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    first = pki.create_ca(tmp_path / "ca")
    with pytest.raises(KeyMaterialError, match="already exists; pass --force"):
        pki.create_ca(tmp_path / "ca")
    assert pki.load_ca(tmp_path / "ca").cert == first.cert  # untouched
    second = pki.create_ca(tmp_path / "ca", force=True)
    assert second.cert != first.cert and _mode(second.key_path) == 0o600


def test_issued_by_another_ca_is_detected(tmp_path: Path) -> None:
    ca = pki.create_ca(tmp_path / "ca")
    other = pki.create_ca(tmp_path / "other")
    issued = pki.make_device_cert(other, tmp_path / "dev", "cam-1")
    with pytest.raises(KeyMaterialError, match="not issued by the CA"):
        pki.verify_issued_by(issued.cert, ca.cert_path)


def test_rendered_acl_and_conf() -> None:
    acl = pki.render_acl(["cloud-receiver"])
    assert "pattern write edge-mask/%u/frames/#" in acl and "pattern read edge-mask/%u/#" in acl
    assert "readwrite" not in acl  # a device may not write its ack topic (tests/test_provision.py)
    assert "user cloud-receiver\ntopic read edge-mask/#\ntopic write edge-mask/+/ack" in acl
    conf = pki.render_mosquitto_conf(port=8883, bind_address="127.0.0.1", cafile=Path("/x/ca.crt"),
                                     certfile=Path("/x/b.crt"), keyfile=Path("/x/b.key"), acl_file=Path("/x/acl"),
                                     persistence_dir=Path("/x/data"))
    for line in ("listener 8883 127.0.0.1", "require_certificate true", "use_identity_as_username true",
                 "use_username_as_clientid true",
                 "allow_anonymous false", "acl_file /x/acl", "persistence true", "persistence_location /x/data/"):
        assert line in conf.splitlines()
