"""The ``fedlayer`` command: ``assets``, ``deploy``, ``simulate``, ``report``, ``config-reference``,
``--version``.

Runs on Python 3.10 for ``assets`` and ``deploy`` (an edge device's own Python): each command's module
is imported only when that command runs.
"""

from __future__ import annotations

import sys
from importlib import metadata

_USAGE = """usage: fedlayer COMMAND [ARGS]

commands:
  assets fetch [NAME...] [--to DIR]  download + verify the embedded default model and data (offline after)
  deploy SUBCOMMAND ...       certificates, node keys, SuperLink/SuperNode daemons, systemd units, health
  simulate [--supernodes N]   run the app as a local Ray simulation via `flwr run`
  report RUN_DIR [RUN_DIR...] compare run directories: table + PNG plots
  config-reference [--write]  print every run-config key (or rewrite docs/configuration.md)
  --version                   this fedlayer's version and the Flower it runs on
"""


def version() -> str:
    """``fedlayer X (flwr Y, Python Z)``: what an operator compares across machines before a run."""
    from fedcore import __version__

    try:
        flower = metadata.version("flwr")
    except metadata.PackageNotFoundError:
        flower = "not installed"
    python = ".".join(map(str, sys.version_info[:3]))
    return f"fedlayer {__version__} (flwr {flower}, Python {python})"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(_USAGE)
        return 0 if args else 2
    if args[0] == "--version":
        print(version())
        return 0
    command, rest = args[0], args[1:]
    if command == "deploy":
        from fedcore.deploy.cli import main as run
    elif command == "assets":
        from fedcore.data.assets import main as run
    elif command == "simulate":
        from fedcore.cli.launch import main as run
    elif command == "report":
        from fedcore.cli.report import main as run
    elif command == "config-reference":
        from fedcore.cli.config_reference import main as run
    else:
        print(f"fedlayer: unknown command '{command}'\n{_USAGE}", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
