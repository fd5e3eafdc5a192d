"""TLS certificates for the SuperLink and ECDSA key pairs for SuperNode authentication, checked up front.

A certificate that does not cover the host the nodes dial, an expired one or a key of the wrong kind
fails here with one line, not later as a gRPC handshake error on an edge device.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedcore.deploy.common import (
    CA_CERT,
    CA_KEY,
    LOOPBACK,
    SERVER_CERT,
    SERVER_KEY,
    DeployError,
    chown,
    is_ip,
    read_file,
    write_private,
)


def san_hosts(cert_path: Path) -> set[str]:
    """DNS names and IP addresses in a certificate's subjectAltName."""
    try:
        cert = x509.load_pem_x509_certificate(read_file(cert_path, "certificate"))
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    except ValueError as exc:
        raise DeployError(f"{cert_path} is not a PEM certificate: {exc}") from None
    return set(san.get_values_for_type(x509.DNSName)) | {
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    }


def require_san(cert_path: Path, hosts: Sequence[str]) -> None:
    """Fail unless the certificate covers every host (TLS hostname checks would reject the rest)."""
    have = san_hosts(cert_path)
    missing = [h for h in dict.fromkeys(hosts) if h not in have]
    if missing:
        raise DeployError(
            f"certificate {cert_path} does not cover {', '.join(missing)} (its SAN has: "
            f"{', '.join(sorted(have)) or 'nothing'}); re-issue it with "
            f"`certs --out {cert_path.parent} --force --host ...` listing every host the nodes dial"
        )


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(read_file(path, "certificate"))
    except ValueError as exc:
        raise DeployError(f"{path} is not a PEM certificate: {exc}") from None


def require_valid_chain(certs: Path) -> None:
    """The server certificate is issued by the CA, both are valid now, and server.key belongs to it.

    Each is a failure the SuperLink would only show later, as handshake errors on every node.
    """
    ca_path, cert_path, key_path = certs / CA_CERT, certs / SERVER_CERT, certs / SERVER_KEY
    ca, cert = _load_cert(ca_path), _load_cert(cert_path)
    now = datetime.now(timezone.utc)
    for path, certificate in ((ca_path, ca), (cert_path, cert)):
        begins, ends = certificate.not_valid_before_utc, certificate.not_valid_after_utc
        if not begins <= now <= ends:
            raise DeployError(
                f"certificate {path} is valid only from {begins:%Y-%m-%d %H:%M} to {ends:%Y-%m-%d %H:%M} UTC;"
                f" re-issue it with `certs --out {certs} --force --host ...` (an expired CA: remove ca.crt "
                "and ca.key first, then give the nodes the new ca.crt)"
            )
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise DeployError(
            f"certificate {cert_path} was not issued by {ca_path}: nodes trusting that CA would refuse the "
            f"SuperLink; re-issue it with `certs --out {certs} --force --host ...`"
        ) from None
    try:
        key = serialization.load_pem_private_key(read_file(key_path, "TLS key"), None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise DeployError(f"{key_path} is not an unencrypted PEM private key ({exc})") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, public) != cert.public_key().public_bytes(
        serialization.Encoding.DER, public
    ):
        raise DeployError(f"{key_path} is not the key of {cert_path}; re-issue both with `certs --force`")


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """An OpenSSH NIST EC public key (what the SuperLink accepts for node authentication)."""
    data = read_file(path, "public key")
    try:
        key = serialization.load_ssh_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise DeployError(f"{path} is not an OpenSSH public key ({exc}); create keys with `keys`") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise DeployError(f"{path} is not an ECDSA key: SuperNode auth needs NIST EC keys (from `keys`)")
    return key


def load_private_key(path: Path) -> None:
    """Check a SuperNode private key the way flower-supernode will read it (OpenSSH, EC, unencrypted)."""
    data = read_file(path, "private key")
    try:
        key = serialization.load_ssh_private_key(data, None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise DeployError(f"{path} is not an unencrypted OpenSSH private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DeployError(f"{path} is not an ECDSA private key; create keys with `keys`")


def _openssl_bin() -> str:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise DeployError("openssl not found on PATH: install it (e.g. `apt-get install openssl`) and retry")
    return openssl


def _openssl(*args: str) -> None:
    result = subprocess.run([_openssl_bin(), *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no error output"])[-1]
        raise DeployError(f"openssl {args[0]} failed: {last}")


def make_certs(out: Path, hosts: Sequence[str], days: int, force: bool, owner: int | None) -> list[Path]:
    """A CA (kept if present: nodes already trust it) and a server certificate for the hosts + 127.0.0.1.

    An existing server certificate is reused only if its SAN covers every host; ``force`` re-issues it.
    """
    wanted = list(dict.fromkeys([*hosts, LOOPBACK]))
    if days < 1:
        raise DeployError(f"--days {days}: certificates must be valid for at least 1 day")
    _openssl_bin()  # fail on a missing openssl before writing anything
    out.mkdir(parents=True, exist_ok=True)
    ca_crt, ca_key, crt, key = (out / n for n in (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY))
    if not (ca_crt.is_file() and ca_key.is_file()):
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-nodes",
            "-keyout", str(ca_key), "-out", str(ca_crt), "-days", str(days), "-subj", "/CN=fedlayer CA",
        )  # fmt: skip
        crt.unlink(missing_ok=True)  # a new CA invalidates the old server certificate
    if crt.is_file() and key.is_file() and not force:
        require_san(crt, wanted)  # never silently reuse a certificate the nodes would reject
    else:
        with tempfile.TemporaryDirectory() as tmp:
            csr, ext = Path(tmp) / "server.csr", Path(tmp) / "server.ext"
            san = ",".join(f"IP:{h}" if is_ip(h) else f"DNS:{h}" for h in wanted)
            ext.write_text(
                f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyAgreement\nextendedKeyUsage=serverAuth\n"
            )
            _openssl(
                "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-nodes",
                "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={wanted[0]}",
            )  # fmt: skip
            _openssl(
                "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
                "-set_serial", str(int.from_bytes(os.urandom(16), "big") >> 1), "-days", str(days),
                "-extfile", str(ext), "-out", str(crt),
            )  # fmt: skip
        require_san(crt, wanted)
    os.chmod(ca_key, 0o600)
    os.chmod(key, 0o600)
    chown([ca_crt, crt, key], owner)  # the CA key stays with the operator
    return [ca_crt, crt, key]


def make_keys(out: Path, count: int, prefix: str, owner: int | None) -> list[Path]:
    """ECDSA P-384 key pairs in OpenSSH format; existing pairs are kept (they may be registered)."""
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for index in range(1, count + 1):
        private = out / f"{prefix}-{index}"
        public = private.with_name(private.name + ".pub")
        if not (private.is_file() and public.is_file()):
            key = ec.generate_private_key(ec.SECP384R1())
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            )
            write_private(private, pem)
            ssh = key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
            public.write_bytes(ssh + b"\n")
        os.chmod(private, 0o600)  # a copied or hand-made key may be readable by others
        load_private_key(private)
        load_public_key(public)
        chown([private, public], owner)
        made.append(public)
    return made
