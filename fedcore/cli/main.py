"""The ``fedlayer`` command: ``assets``, ``simulate``, ``report``, ``config-reference``."""

from __future__ import annotations

import sys

_USAGE = """usage: fedlayer COMMAND [ARGS]

commands:
  assets fetch [NAME...]      download + verify the embedded default model and data (offline afterwards)
  simulate [--supernodes N]   run the app as a local Ray simulation via `flwr run`
  report RUN_DIR [RUN_DIR...] compare run directories: table + PNG plots
  config-reference [--write]  print every run-config key (or rewrite docs/configuration.md)
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(_USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "assets":
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
