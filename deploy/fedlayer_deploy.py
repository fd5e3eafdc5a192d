"""Operator tooling for a fedlayer federation on Flower 1.39: certificates, node keys, daemons, CLI.

Every subcommand validates its inputs before touching anything (a missing openssl, an unreadable key
or a certificate that does not cover the host the nodes dial fails here with one line, not later with
a gRPC handshake error on an edge device). The daemon subcommands ``exec`` the Flower binary, so the
PID you start is the daemon's PID (systemd units, ``kill PID`` and the tests rely on that).

    python deploy/fedlayer_deploy.py certs --out deploy/certs --host superlink --host 203.0.113.7
    python deploy/fedlayer_deploy.py keys --out deploy/keys --count 2
    python deploy/fedlayer_deploy.py superlink --certs deploy/certs --database state/superlink.db
    python deploy/fedlayer_deploy.py connection prod --address 127.0.0.1:9093 \\
        --root-certificates deploy/certs/ca.crt --default
    python deploy/fedlayer_deploy.py register prod deploy/keys/supernode-1.pub deploy/keys/supernode-2.pub
    python deploy/fedlayer_deploy.py supernode --superlink 203.0.113.7:9092 \\
        --root-certificates ca.crt --key supernode-1 --partition-id 0 --num-partitions 2 --device jetson-orin
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

REPO_ROOT = Path(__file__).resolve().parents[1]
#: the SuperLink's own SuperExec and the local flwr CLI connect over loopback: always in the SAN
LOOPBACK = "127.0.0.1"
CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.crt", "ca.key", "server.pem", "server.key"
FLEET_PORT, CONTROL_PORT, NODE_RUNTIME_PORT = 9092, 9093, 9094


class DeployError(RuntimeError):
    """Bad input or a failed step; main() prints the message as one line and exits 1."""


# ---------------------------------------------------------------------------------------------- helpers


def _read(path: Path, what: str) -> bytes:
    try:
        return path.expanduser().read_bytes()
    except OSError as exc:
        raise DeployError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _chown(paths: Sequence[Path], uid: int | None) -> None:
    """Hand files to the container user (uid 49999 in the flwr images); needs root."""
    if uid is None:
        return
    for path in paths:
        try:
            os.chown(path, uid, uid)
        except PermissionError:
            raise DeployError(
                f"cannot chown {path} to uid {uid}: run as root, or `sudo chown {uid}:{uid} {path}`"
            ) from None


def _write_private(path: Path, data: bytes) -> None:
    """Create a 0600 file atomically, so a key is never readable by others, not even half-written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def _flower_bin(name: str) -> str:
    """A Flower executable from this interpreter's environment first (the pinned flwr), else PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if not found:
        raise DeployError(f"`{name}` not found: activate the environment where flwr==1.39.0 is installed")
    return found


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def san_hosts(cert_path: Path) -> set[str]:
    """DNS names and IP addresses in a certificate's subjectAltName."""
    try:
        cert = x509.load_pem_x509_certificate(_read(cert_path, "certificate"))
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
        return x509.load_pem_x509_certificate(_read(path, "certificate"))
    except ValueError as exc:
        raise DeployError(f"{path} is not a PEM certificate: {exc}") from None


def require_valid_chain(certs: Path) -> None:
    """The server certificate is issued by the CA, both are valid now, and server.key belongs to it.

    Each is a failure the SuperLink would only show later, as handshake errors on every node.
    """
    ca_path, cert_path, key_path = certs / CA_CERT, certs / SERVER_CERT, certs / SERVER_KEY
    ca, cert = _load_cert(ca_path), _load_cert(cert_path)
    now = datetime.now(UTC)
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
        key = serialization.load_pem_private_key(_read(key_path, "TLS key"), None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise DeployError(f"{key_path} is not an unencrypted PEM private key ({exc})") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, public) != cert.public_key().public_bytes(
        serialization.Encoding.DER, public
    ):
        raise DeployError(f"{key_path} is not the key of {cert_path}; re-issue both with `certs --force`")


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """An OpenSSH NIST EC public key (what the SuperLink accepts for node authentication)."""
    data = _read(path, "public key")
    try:
        key = serialization.load_ssh_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise DeployError(f"{path} is not an OpenSSH public key ({exc}); create keys with `keys`") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise DeployError(f"{path} is not an ECDSA key: SuperNode auth needs NIST EC keys (from `keys`)")
    return key


def load_private_key(path: Path) -> None:
    """Check a SuperNode private key the way flower-supernode will read it (OpenSSH, EC, unencrypted)."""
    data = _read(path, "private key")
    try:
        key = serialization.load_ssh_private_key(data, None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise DeployError(f"{path} is not an unencrypted OpenSSH private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DeployError(f"{path} is not an ECDSA private key; create keys with `keys`")


# ---------------------------------------------------------------------------------------- certs / keys


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
            san = ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in wanted)
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
    _chown([ca_crt, crt, key], owner)  # the CA key stays with the operator
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
            _write_private(private, pem)
            ssh = key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
            public.write_bytes(ssh + b"\n")
        os.chmod(private, 0o600)  # a copied or hand-made key may be readable by others
        load_private_key(private)
        load_public_key(public)
        _chown([private, public], owner)
        made.append(public)
    return made


# ------------------------------------------------------------------------------------- flwr CLI config


def flwr_home(explicit: Path | None) -> Path:
    return (explicit or Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")).expanduser()


def write_connection(
    home: Path, name: str, address: str, root_certificates: Path | None, make_default: bool
) -> Path:
    """Add or replace ``[superlink.NAME]`` in $FLWR_HOME/config.toml, keeping every other entry."""
    import tomli_w  # installed with flwr; imported here so the other subcommands do not need it

    path = home / "config.toml"
    try:
        config = tomllib.loads(path.read_text()) if path.is_file() else {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DeployError(f"cannot read {path}: {exc}") from None
    superlinks = config.setdefault("superlink", {})
    entry: dict[str, object] = {"address": address}
    if root_certificates is None:
        entry["insecure"] = True
    else:
        _read(root_certificates, "CA certificate")
        entry["root-certificates"] = str(root_certificates.expanduser().resolve())
    superlinks[name] = entry
    if make_default or "default" not in superlinks:
        superlinks["default"] = name
    home.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".config.toml.tmp")
    tmp.write_text(tomli_w.dumps(config))
    os.replace(tmp, path)
    return path


def register_keys(connection: str, keys: Sequence[Path], home: Path | None) -> dict[str, str]:
    """``flwr supernode register`` for each key; returns {key file: node id or "already registered"}."""
    for key in keys:
        load_public_key(key)  # all keys are checked before the first one is registered
    env = dict(os.environ, FLWR_DISABLE_UPDATE_CHECK="1", FLWR_HOME=str(flwr_home(home)))
    outcome = {}
    for key in keys:
        command = [_flower_bin("flwr"), "supernode", "register", str(key), connection, "--format", "json"]
        command += ["--name", key.name.removesuffix(".pub")]
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        try:
            reply = json.loads(result.stdout[result.stdout.find("{") :])
        except json.JSONDecodeError:
            reply = {}
        if result.returncode == 0 and reply.get("success"):
            outcome[str(key)] = f"node {reply['node-id']}"
            continue
        detail = " ".join(str(reply.get("error-message") or result.stderr or result.stdout).split())
        if "already in use" in detail:  # re-running after adding a node must not fail on the old ones
            outcome[str(key)] = "already registered"
            continue
        raise DeployError(f"registering {key} with '{connection}' failed: {detail}")
    return outcome


# ------------------------------------------------------------------------------------------ daemons


def _is_loopback(host: str) -> bool:
    return host == "localhost" or (_is_ip(host) and ipaddress.ip_address(host).is_loopback)


def superlink_command(args: argparse.Namespace) -> list[str]:
    """TLS always comes with node authentication: otherwise any device reaching 9092 could join.

    The control API starts runs and reads their results: it stays on loopback unless explicitly opened.
    """
    if not _is_loopback(args.control_host) and not args.public_control:
        raise DeployError(
            f"--control-host {args.control_host} would expose the control API (start runs, read results) "
            "beyond this machine; keep 127.0.0.1 and tunnel, or pass --public-control to mean it"
        )
    command = [_flower_bin("flower-superlink")]
    if args.insecure:
        command.append("--insecure")
    else:
        certs = args.certs.expanduser().resolve()
        for name in (CA_CERT, SERVER_CERT, SERVER_KEY):
            _read(certs / name, "TLS file")
        require_san(certs / SERVER_CERT, [LOOPBACK, *args.advertise])
        require_valid_chain(certs)
        command += ["--ssl-ca-certfile", str(certs / CA_CERT), "--ssl-certfile", str(certs / SERVER_CERT)]
        command += ["--ssl-keyfile", str(certs / SERVER_KEY), "--enable-supernode-auth"]
    database = args.database.expanduser().resolve()
    command += [
        "--disable-runtime-dependency-installation",
        "--isolation", args.isolation,
        "--fleet-api-address", args.fleet_address,
        "--host", args.control_host,
        "--port", str(args.control_port),
        "--database", str(database),
    ]  # fmt: skip
    if args.log_file:
        command += ["--log-file", str(args.log_file)]
    return command


def node_config(args: argparse.Namespace) -> str:
    """The --node-config string the ClientApp reads (fedcore.core.devices profile keys included)."""
    sys.path.insert(0, str(REPO_ROOT))
    from fedcore.core.devices import PROFILES  # light module (no torch): catches a typo before the run does

    if not 0 <= args.partition_id < args.num_partitions:
        raise DeployError(f"--partition-id {args.partition_id} is not in [0, {args.num_partitions})")
    if args.device is not None and args.device not in PROFILES:
        raise DeployError(f"--device {args.device!r} is unknown; known: {', '.join(sorted(PROFILES))}")
    pairs = [f"partition-id={args.partition_id}", f"num-partitions={args.num_partitions}"]
    if args.device is not None:
        pairs.append(f'device="{args.device}"')
    for key in ("speed", "memory_mb", "capacity", "max_blocks"):
        value = getattr(args, key)
        if value is not None:
            pairs.append(f"{key.replace('_', '-')}={value}")
    return " ".join(pairs)


def supernode_command(args: argparse.Namespace) -> list[str]:
    """The runtime API stays on 127.0.0.1: only this device's own ClientApp processes use it."""
    command = [_flower_bin("flower-supernode"), "--superlink", args.superlink]
    if args.insecure:
        command.append("--insecure")
    else:
        _read(args.root_certificates, "CA certificate")
        if args.key is None:
            raise DeployError(
                "a TLS SuperNode needs --key (its registered private key from `keys`): a SuperLink started "
                "with --certs authenticates every node"
            )
        load_private_key(args.key)
        command += ["--root-certificates", str(args.root_certificates.expanduser().resolve())]
        command += ["--auth-supernode-private-key", str(args.key.expanduser().resolve())]
    command += ["--isolation", args.isolation, "--host", "127.0.0.1", "--port", str(args.port)]
    command += ["--node-config", node_config(args)]
    if args.max_wait_time is not None:
        command += ["--max-wait-time", str(args.max_wait_time)]
    return command


def start(command: list[str], dry_run: bool) -> int:
    """Print the command, then become the daemon (exec), so its PID is this process's PID."""
    print(shlex.join(command), flush=True)
    if dry_run:
        return 0
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")  # edge devices are often offline
    os.execv(command[0], command)
    return 1  # not reached


# -------------------------------------------------------------------------------------------- the CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedlayer_deploy.py",
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n" + __doc__.split("\n\n")[-1],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("certs", help="CA + SuperLink server certificate (SAN: --host names + 127.0.0.1)")
    p.add_argument("--out", type=Path, required=True, help="for ca.crt ca.key server.pem server.key")
    p.add_argument("--host", action="append", default=[], help="DNS name or IP nodes dial (repeat)")
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--force", action="store_true", help="re-issue the server certificate (the CA is kept)")
    p.add_argument("--owner", type=int, help="chown certificate + server key to this uid (49999 for Docker)")

    p = commands.add_parser("keys", help="ECDSA P-384 key pairs for SuperNode authentication")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--prefix", default="supernode", help="files PREFIX-1, PREFIX-1.pub, ...")
    p.add_argument("--owner", type=int, help="chown the pairs to this uid (49999 for Docker)")

    p = commands.add_parser("connection", help="add a SuperLink connection to $FLWR_HOME/config.toml")
    p.add_argument("name")
    p.add_argument("--address", default=f"127.0.0.1:{CONTROL_PORT}", help="the SuperLink's control port")
    tls = p.add_mutually_exclusive_group(required=True)
    tls.add_argument("--insecure", action="store_true")
    tls.add_argument("--root-certificates", type=Path, help="the CA certificate (ca.crt)")
    p.add_argument("--default", action="store_true", help="make it the default connection")
    p.add_argument("--flwr-home", type=Path, help="default: $FLWR_HOME, else ~/.flwr")

    p = commands.add_parser("register", help="register SuperNode public keys with a SuperLink")
    p.add_argument("connection")
    p.add_argument("keys", nargs="+", type=Path, metavar="KEY.pub")
    p.add_argument("--flwr-home", type=Path)

    p = commands.add_parser("superlink", help="start flower-superlink (exec)")
    tls = p.add_mutually_exclusive_group(required=True)
    tls.add_argument("--insecure", action="store_true", help="no TLS, no node authentication (trials only)")
    tls.add_argument("--certs", type=Path, help="directory from `certs`: TLS + SuperNode authentication")
    p.add_argument("--advertise", action="append", default=[], help="host nodes dial (checked: in the SAN)")
    p.add_argument("--fleet-address", default=f"0.0.0.0:{FLEET_PORT}", help="Fleet gRPC API (open to nodes)")
    p.add_argument("--control-host", default="127.0.0.1", help="control + runtime HTTP API (keep private)")
    p.add_argument("--public-control", action="store_true", help="allow a non-loopback --control-host")
    p.add_argument("--control-port", type=int, default=CONTROL_PORT)
    p.add_argument("--database", type=Path, default=Path("superlink.db"), help="SuperLink state (SQLite)")
    p.add_argument("--isolation", choices=["subprocess", "process"], default="subprocess")
    p.add_argument("--log-file", type=Path)
    p.add_argument("--dry-run", action="store_true", help="print the command only")

    p = commands.add_parser("supernode", help="start flower-supernode (exec)")
    p.add_argument("--superlink", required=True, help=f"the SuperLink's Fleet address, HOST:{FLEET_PORT}")
    tls = p.add_mutually_exclusive_group(required=True)
    tls.add_argument("--insecure", action="store_true")
    tls.add_argument("--root-certificates", type=Path, help="the CA certificate (ca.crt)")
    p.add_argument("--key", type=Path, help="this node's private key (from `keys`, registered; TLS needs it)")
    p.add_argument("--partition-id", type=int, required=True)
    p.add_argument("--num-partitions", type=int, required=True)
    p.add_argument("--device", help="device profile: workstation, cpu-box, jetson-orin")
    p.add_argument("--speed", type=float)
    p.add_argument("--memory-mb", type=float)
    p.add_argument("--capacity", type=float)
    p.add_argument("--max-blocks", type=int)
    p.add_argument("--port", type=int, default=NODE_RUNTIME_PORT, help="local runtime API (127.0.0.1)")
    p.add_argument("--isolation", choices=["subprocess", "process"], default="subprocess")
    p.add_argument("--max-wait-time", type=float, help="give up after this many seconds without a SuperLink")
    p.add_argument("--dry-run", action="store_true", help="print the command only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "certs":
            for path in make_certs(args.out, args.host, args.days, args.force, args.owner):
                print(path)
        elif args.command == "keys":
            for path in make_keys(args.out, args.count, args.prefix, args.owner):
                print(path)
        elif args.command == "connection":
            home = flwr_home(args.flwr_home)
            print(write_connection(home, args.name, args.address, args.root_certificates, args.default))
        elif args.command == "register":
            for key, outcome in register_keys(args.connection, args.keys, args.flwr_home).items():
                print(f"{key}: {outcome}")
        elif args.command == "superlink":
            command = superlink_command(args)
            if not args.dry_run:
                args.database.expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
            return start(command, args.dry_run)
        else:
            return start(supernode_command(args), args.dry_run)
    except DeployError as exc:
        print(f"fedlayer_deploy: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
