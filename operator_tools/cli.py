"""Argument parsing and error reporting of the operator commands of ``sfl``.

Expected failures print one line on standard error and return exit status 2 for
invalid input, or 1 for a missing resource, a conflict or a failed AWS call.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from fedcore.arguments import non_negative_int
from infra.config import DeploymentSettings
from operator_tools import configure, deploy, plot, registry, status
from operator_tools.context import OperatorContext, add_aws_arguments, default_settings
from operator_tools.errors import EXIT_INVALID_INPUT, OperatorError

COMMAND_HELP = {
    "status": "the open round, recent rounds, rejections and alarms",
    "rounds": "the history of every round",
    "configure": "show or change the settings of the next rounds",
    "approve": "approve a registered model version",
    "reject": "reject a registered model version, with a reason",
    "deploy": "serve an approved model version from a serverless endpoint",
    "plot": "plot holdout accuracy and loss per round into a PNG",
    "sandbox": "run a small federation on the embedded AWS until Ctrl-C",
}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of exiting, so errors stay one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{self.prog}: {message}")


class _UsageError(Exception):
    pass


# SageMaker's EndpointName pattern, as its API reference gives it (EndpointInfo).
_ENDPOINT_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")


def _endpoint_name(text: str) -> str:
    if _ENDPOINT_NAME.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a SageMaker endpoint name: expected 1-63 letters, "
            "digits or hyphens, starting and ending with a letter or digit"
        )
    return text


def build_parser(settings: DeploymentSettings) -> argparse.ArgumentParser:
    """Describe every operator command and its options."""
    parser = _Parser(prog="sfl", description="Operate a serverless federation.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=COMMAND_HELP[name], description=COMMAND_HELP[name]
        )
        if name != "sandbox":
            add_aws_arguments(sub, settings)
        return sub

    status_parser = command("status")
    status_parser.add_argument(
        "--last",
        type=non_negative_int,
        default=5,
        help="earlier rounds to show (default: 5)",
    )
    status_parser.add_argument("--json", action="store_true", help="print JSON")
    rounds_parser = command("rounds")
    rounds_parser.add_argument("--json", action="store_true", help="print JSON")
    configure.add_round_options(command("configure"))
    approve_parser = command("approve")
    approve_parser.add_argument("version", help="version number or model package ARN")
    approve_parser.add_argument(
        "--description",
        default="approved with sfl approve",
        help="stored as the version's ApprovalDescription",
    )
    approve_parser.add_argument(
        "--force",
        action="store_true",
        help="approve a version that was rejected",
    )
    reject_parser = command("reject")
    reject_parser.add_argument("version", help="version number or model package ARN")
    reject_parser.add_argument(
        "--reason",
        required=True,
        help="why the version is rejected, stored as its ApprovalDescription",
    )
    deploy_parser = command("deploy")
    deploy_parser.add_argument("version", help="version number or model package ARN")
    deploy_parser.add_argument(
        "--role-arn",
        required=True,
        help="IAM role SageMaker assumes to read the model and pull the image",
    )
    deploy_parser.add_argument(
        "--endpoint-name",
        type=_endpoint_name,
        default=f"{settings.federation}-global-model",
        help="endpoint to create or update (default: %(default)s)",
    )
    deploy_parser.add_argument(
        "--image",
        help="inference image URI, required when the version has no "
        "InferenceSpecification",
    )
    deploy_parser.add_argument(
        "--memory-mb",
        type=int,
        default=2048,
        help=f"serverless memory in MB, one of {list(deploy.MEMORY_SIZES_MB)} "
        "(default: %(default)s)",
    )
    deploy_parser.add_argument(
        "--max-concurrency",
        type=int,
        default=5,
        help="concurrent invocations of the serverless endpoint, 1 to "
        f"{deploy.MAX_CONCURRENCY_LIMIT} (default: %(default)s)",
    )
    plot_parser = command("plot")
    plot_parser.add_argument(
        "--output",
        type=Path,
        default=Path("runs/rounds.png"),
        help="PNG file to write (default: %(default)s)",
    )
    sandbox_parser = command("sandbox")
    sandbox_parser.add_argument(
        "--devices", type=int, default=3, help="devices (default: 3)"
    )
    sandbox_parser.add_argument(
        "--rounds", type=int, default=2, help="rounds to train (default: 2)"
    )
    return parser


def _run(args: argparse.Namespace, settings: DeploymentSettings) -> str:
    if args.command == "sandbox":
        if args.devices < 1 or args.rounds < 1:
            raise _UsageError("sfl sandbox: --devices and --rounds must be >= 1")
        # Imported here because the sandbox needs moto and scikit-learn.
        from operator_tools import sandbox  # noqa: PLC0415

        sandbox.run_sandbox(settings, devices=args.devices, rounds=args.rounds)
        return ""
    context = OperatorContext.from_arguments(args)
    if args.command == "status":
        return status.run_status(context, last=max(0, args.last), as_json=args.json)
    if args.command == "rounds":
        return status.run_rounds(context, as_json=args.json)
    if args.command == "configure":
        changes = {name: getattr(args, name) for name in configure.OPTION_FIELDS}
        params = (
            None
            if args.strategy_param is None
            else configure.parse_params(args.strategy_param)
        )
        return configure.run_configure(context, settings, changes, params)
    if args.command == "approve":
        return registry.run_approve(
            context, args.version, args.description, force=args.force
        )
    if args.command == "reject":
        return registry.run_reject(context, args.version, args.reason)
    if args.command == "deploy":
        request = deploy.DeployRequest(
            version=args.version,
            role_arn=args.role_arn,
            endpoint_name=args.endpoint_name,
            image=args.image,
            memory_mb=args.memory_mb,
            max_concurrency=args.max_concurrency,
        )
        return deploy.run_deploy(context, request)
    return plot.run_plot(context, args.output)


def _print_error(exc: Exception) -> None:
    # AWS error messages may span lines (an HTML error page, for one): join them.
    print("error: " + " ".join(str(exc).split()), file=sys.stderr)


def main(argv: list[str]) -> int:
    """Run one operator command; return the exit status."""
    try:
        settings = default_settings()
        parser = build_parser(settings)
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help exits through argparse
            return int(exc.code or 0)
        output = _run(args, settings)
    except _UsageError as exc:
        _print_error(exc)
        return EXIT_INVALID_INPUT
    except OperatorError as exc:
        _print_error(exc)
        return exc.exit_status
    if output:
        try:
            print(output)
        except BrokenPipeError:
            # A reader such as `head` closed the pipe: the rest is not wanted.
            sys.stderr.close()
            return 0
    return 0
