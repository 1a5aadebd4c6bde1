"""The coordinator's TLS material: a private CA and the SuperLink's server certificate.

Hospitals verify the SuperLink with the CA certificate (``ca.crt``, public: hand it to every
hospital); the SuperLink presents ``server.crt`` signed by it. The certificate's subject
alternative names must cover every address hospitals dial: IP literals become IP SANs, names
DNS SANs, and loopback (``127.0.0.1``, ``::1``, ``localhost``) is always included so the
coordinator's own ``flwr`` commands reach it. Private keys are written readable by the owner only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medfed.infra.keys import write_private

LOOPBACK = ("127.0.0.1", "::1", "localhost")
VALID_DAYS = 825  # the longest lifetime common TLS clients accept for a server certificate


def san_entries(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """Subject alternative names for ``hosts`` plus loopback, without duplicates, in order."""
    names: list[x509.GeneralName] = []
    for host in [*hosts, *LOOPBACK]:
        host = host.strip().strip("[]")
        if not host:
            continue
        try:
            entry: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            entry = x509.DNSName(host.lower())
        if entry not in names:
            names.append(entry)
    return names


def _certificate(
    subject: str,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS if not ca else 3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(sans or []), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def create_tls(folder: Path, hosts: Iterable[str], name: str = "medfed") -> dict[str, Path]:
    """Write ``ca.crt``/``ca.key`` and ``server.crt``/``server.key`` into ``folder``.

    Returns the four paths by role (``ca``, ``ca_key``, ``cert``, ``key``). Keys are ECDSA P-256
    (what every gRPC TLS stack accepts), the private ones written with mode 0600.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate(
        f"{name} coordinator CA",
        ca_key.public_key(),
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} coordinator CA")]),
        ca_key,
        ca=True,
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    sans = san_entries(hosts)
    server_cert = _certificate(
        f"{name} SuperLink", server_key.public_key(), ca_cert.subject, ca_key, ca=False, sans=sans
    )
    paths = {
        "ca": folder / "ca.crt",
        "ca_key": folder / "ca.key",
        "cert": folder / "server.crt",
        "key": folder / "server.key",
    }
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    write_private(paths["ca_key"], _pem_key(ca_key))
    write_private(paths["key"], _pem_key(server_key))
    return paths
