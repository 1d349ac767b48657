"""Flower's side of benchmarks/vs_flower.py: its own virtual environment, TLS files, node keys.

Flower is never a dependency of latentfl: it is installed (``flwr==1.42.0``, from the package
registry) into a separate virtual environment the first time the benchmark runs. The TLS
certificates and the SuperNode keys are made with ``cryptography`` (one of our dependencies).
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

FLOWER = "flwr==1.42.0"


def ensure_flower(venv: Path) -> Path:
    """``venv`` with Flower installed in it (created on first use); its path."""
    venv = venv.resolve()
    if not (venv / "bin" / "flower-superlink").exists():
        print(f"installing {FLOWER} into {venv} (its own virtual environment)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", FLOWER, "numpy"],
                       check=True)
    return venv


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def make_tls(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 under ``folder``: (ca, cert, key) paths."""
    folder.mkdir(parents=True)
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=2))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("vs-flower CA"))
          .issuer_name(_name("vs-flower CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(valid[0])
          .not_valid_after(valid[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                       x509.DNSName("localhost")])
    cert = (x509.CertificateBuilder().subject_name(_name("127.0.0.1"))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(valid[0])
            .not_valid_after(valid[1]).add_extension(san, critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.crt", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(paths[2], key)
    return paths


def make_node_keys(folder: Path) -> tuple[Path, Path]:
    """A SuperNode's ECDSA key pair (OpenSSH formats, as Flower reads them): (private, public)."""
    folder.mkdir(parents=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / "node_key", folder / "node_key.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                      serialization.PublicFormat.OpenSSH))
    return private, public
