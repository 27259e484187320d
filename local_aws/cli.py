"""The ``sfl`` console command: operator entry points of the project."""

from __future__ import annotations

import sys

OPERATOR_COMMANDS = (
    "status",
    "rounds",
    "configure",
    "approve",
    "reject",
    "deploy",
    "plot",
    "sandbox",
)


def _usage() -> str:
    # Imported here so that ``sfl demo`` needs nothing from the operator package.
    from operator_tools import cli as operator_cli  # noqa: PLC0415

    lines = ["usage: sfl <command> [options]", "", "commands:"]
    lines.append(f"  {'demo':<10}  federated training end to end on the embedded AWS")
    lines.extend(
        f"  {name:<10}  {text}" for name, text in operator_cli.COMMAND_HELP.items()
    )
    lines.append("")
    lines.append("sfl <command> --help describes the options of a command")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``sfl <command> [options]``; return the exit status."""
    arguments = sys.argv[1:] if argv is None else argv
    if not arguments:
        # A missing command is a usage error: the usage goes to stderr, as
        # argparse does it.
        print(_usage(), file=sys.stderr)
        return 2
    if arguments[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = arguments[0], arguments[1:]
    if command == "demo":
        # Imported here because the demo needs moto, which operators of a deployed
        # federation do not install.
        from local_aws import demo  # noqa: PLC0415

        return demo.main(rest)
    if command in OPERATOR_COMMANDS:
        from operator_tools import cli as operator_cli  # noqa: PLC0415

        return operator_cli.main([command, *rest])
    print(
        f"sfl: unknown command {command!r}; expected one of "
        f"{['demo', *OPERATOR_COMMANDS]}",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
