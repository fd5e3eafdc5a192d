"""``fedlayer deploy``: certificates, node keys, daemons, systemd units and health checks on Flower 1.39.

Every subcommand validates its inputs before touching anything (a missing openssl, an unreadable key
or a certificate that does not cover the host the nodes dial fails here with one line, not later with
a gRPC handshake error on an edge device). The daemon subcommands ``exec`` the Flower binary, so the
PID you start is the daemon's PID (``kill PID`` and the tests rely on that); ``systemd`` writes a unit
running the same command.

    fedlayer deploy certs --out deploy/certs --host superlink --host 203.0.113.7
    fedlayer deploy keys --out deploy/keys --count 2
    fedlayer deploy superlink --certs deploy/certs --database state/superlink.db
    fedlayer deploy connection prod --address 127.0.0.1:9093 \\
        --root-certificates deploy/certs/ca.crt --default
    fedlayer deploy register prod deploy/keys/supernode-1.pub deploy/keys/supernode-2.pub
    fedlayer deploy supernode --superlink 203.0.113.7:9092 \\
        --root-certificates ca.crt --key supernode-1 --partition-id 0 --num-partitions 2 --device jetson-orin
    fedlayer deploy supernode --superlink 203.0.113.7:9092 \\
        --root-certificates ca.crt --key supernode-2 --data-path /srv/clinic/reviews.csv
    fedlayer deploy systemd supernode --superlink 203.0.113.7:9092 --root-certificates ca.crt \\
        --key supernode-1 --partition-id 0 --num-partitions 2 --health-port 9095 --out /etc/systemd/system
    fedlayer deploy health 127.0.0.1:9095
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedcore.deploy.common import CONTROL_PORT, FLEET_PORT, NODE_RUNTIME_PORT, DeployError
from fedcore.deploy.daemons import daemon_environment, start, superlink_command, supernode_command
from fedcore.deploy.flwr_cli import flwr_home, register_keys, write_connection
from fedcore.deploy.health import check_health
from fedcore.deploy.secret import make_secret
from fedcore.deploy.systemd import render_unit, write_unit
from fedcore.deploy.tls import make_certs, make_keys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedlayer deploy",
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

    p = commands.add_parser("secret", help="a shared secret for a SuperExec and its SuperNode or SuperLink")
    p.add_argument("--out", type=Path, required=True, help="the file both read (kept if it exists)")
    p.add_argument("--owner", type=int, help="chown it to this uid (49999 for Docker)")

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

    _superlink_options(commands.add_parser("superlink", help="start flower-superlink (exec)"))
    _supernode_options(commands.add_parser("supernode", help="start flower-supernode (exec)"))

    p = commands.add_parser("health", help="ask a daemon's health service; exit 0 when it is serving")
    p.add_argument("address", help="HOST:PORT of a --health-port (127.0.0.1:PORT on that machine)")
    p.add_argument("--timeout", type=float, default=5.0)

    p = commands.add_parser(
        "systemd",
        help="write a systemd unit for the SuperLink or a SuperNode (same options as those commands)",
    )
    roles = p.add_subparsers(dest="role", required=True)
    for role, add_options in (("superlink", _superlink_options), ("supernode", _supernode_options)):
        unit = roles.add_parser(role, help=f"fedlayer-{role}.service")
        add_options(unit, daemon=False)
        unit.add_argument("--out", type=Path, required=True, help="where to write it: /etc/systemd/system")
        unit.add_argument(
            "--state-dir",
            type=Path,
            default=Path("/var/lib/fedlayer"),
            help="working directory: the SuperLink's database and outputs, a node's personal layers",
        )
        unit.add_argument("--user", help="run as this user (create it first); default: root")
    return parser


def _health_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--health-port", type=int, help="serve Flower's gRPC health service on 127.0.0.1:PORT (`health`)"
    )


def _superlink_options(p: argparse.ArgumentParser, daemon: bool = True) -> None:
    tls = p.add_mutually_exclusive_group(required=True)
    tls.add_argument("--insecure", action="store_true", help="no TLS, no node authentication (trials only)")
    tls.add_argument("--certs", type=Path, help="directory from `certs`: TLS + SuperNode authentication")
    p.add_argument("--advertise", action="append", default=[], help="host nodes dial (checked: in the SAN)")
    p.add_argument("--fleet-address", default=f"0.0.0.0:{FLEET_PORT}", help="Fleet gRPC API (open to nodes)")
    p.add_argument("--control-host", default="127.0.0.1", help="control + runtime HTTP API (keep private)")
    p.add_argument("--public-control", action="store_true", help="allow a non-loopback --control-host")
    p.add_argument("--control-port", type=int, default=CONTROL_PORT)
    p.add_argument(
        "--database",
        type=Path,
        default=Path("superlink.db"),
        help="SuperLink state (SQLite; a relative path is under --state-dir in a unit)",
    )
    _health_option(p)
    p.add_argument("--isolation", choices=["subprocess", "process"], default="subprocess")
    p.add_argument("--log-file", type=Path)
    if daemon:
        p.add_argument("--dry-run", action="store_true", help="print the command only")


def _supernode_options(p: argparse.ArgumentParser, daemon: bool = True) -> None:
    p.add_argument("--superlink", required=True, help=f"the SuperLink's Fleet address, HOST:{FLEET_PORT}")
    tls = p.add_mutually_exclusive_group(required=True)
    tls.add_argument("--insecure", action="store_true")
    tls.add_argument("--root-certificates", type=Path, help="the CA certificate (ca.crt)")
    p.add_argument("--key", type=Path, help="this node's private key (from `keys`, registered; TLS needs it)")
    p.add_argument("--partition-id", type=int, help="this node's partition of the run's shared dataset")
    p.add_argument("--num-partitions", type=int)
    p.add_argument(
        "--data-path",
        type=Path,
        help="this node's own data file or dataset folder (runs with data.name='node')",
    )
    p.add_argument("--device", help="device profile: workstation, cpu-box, jetson-orin")
    p.add_argument("--speed", type=float)
    p.add_argument("--memory-mb", type=float)
    p.add_argument("--capacity", type=float)
    p.add_argument("--max-blocks", type=int)
    p.add_argument("--port", type=int, default=NODE_RUNTIME_PORT, help="local runtime API (127.0.0.1)")
    p.add_argument("--isolation", choices=["subprocess", "process"], default="subprocess")
    p.add_argument("--max-wait-time", type=float, help="give up after this many seconds without a SuperLink")
    _health_option(p)
    p.add_argument(
        "--assets", type=Path, help="the model and data cache, from `fedlayer assets fetch --to DIR`"
    )
    if daemon:
        p.add_argument("--dry-run", action="store_true", help="print the command only")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "certs":
            for path in make_certs(args.out, args.host, args.days, args.force, args.owner):
                print(path)
        elif args.command == "keys":
            for path in make_keys(args.out, args.count, args.prefix, args.owner):
                print(path)
        elif args.command == "secret":
            print(make_secret(args.out, args.owner))
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
            return start(command, daemon_environment(args), args.dry_run)
        elif args.command == "supernode":
            return start(supernode_command(args), daemon_environment(args), args.dry_run)
        elif args.command == "health":
            print(check_health(args.address, args.timeout))
        else:
            print(_write_systemd_unit(args))
    except DeployError as exc:
        print(f"fedlayer deploy: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _write_systemd_unit(args: argparse.Namespace) -> Path:
    """The unit runs the command the daemon subcommand would exec, checked now, from the state directory."""
    state_dir = args.state_dir.expanduser().resolve()
    if args.role == "superlink":
        args.database = state_dir / args.database.expanduser()
        command = superlink_command(args)
    else:
        command = supernode_command(args)
    text = render_unit(args.role, command, daemon_environment(args), state_dir, args.user)
    return write_unit(args.out, args.role, text)
