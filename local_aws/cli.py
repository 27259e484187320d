"""The ``sfl`` console command: operator entry points of the project."""

from __future__ import annotations

import sys

from local_aws import demo

COMMANDS = {"demo": demo.main}


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``sfl <command> [options]``; return the exit status."""
    arguments = sys.argv[1:] if argv is None else argv
    if not arguments or arguments[0] in ("-h", "--help"):
        print("usage: sfl <command> [options]\n\ncommands:")
        print("  demo    federated training end to end on the embedded AWS")
        return 0 if arguments else 2
    command, rest = arguments[0], arguments[1:]
    if command not in COMMANDS:
        print(
            f"sfl: unknown command {command!r}; expected one of {sorted(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    return COMMANDS[command](rest)


if __name__ == "__main__":
    sys.exit(main())
