"""``sfl configure``: change the round settings the aggregator applies to new rounds.

The settings are written to ``config/round.json`` in the models bucket. The write is
conditioned on the ETag that was read (or on the object's absence), so two operators
changing settings at once cannot silently overwrite each other: the second one gets
a conflict and runs the command again.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from fedcore import layout
from fedcore.round_config import (
    IMPLEMENTED_STRATEGIES,
    ON_DEADLINE_ACTIONS,
    RoundConfig,
    RoundConfigError,
    parse_round_config,
)
from fedcore.strategies import least_updates, resolve
from infra.config import DeploymentSettings, round_document
from operator_tools.context import OperatorContext, StoredJson, aws_error
from operator_tools.errors import (
    ConflictError,
    InvalidInputError,
    StoredDocumentError,
)

# Options of the command and the configuration fields they set.
OPTION_FIELDS = {
    "target_updates": "--target-updates",
    "min_updates": "--min-updates",
    "deadline_seconds": "--deadline-seconds",
    "on_deadline": "--on-deadline",
    "strategy": "--strategy",
}


def add_round_options(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``sfl configure``; an omitted option keeps its value."""
    parser.add_argument(
        "--target-updates",
        type=int,
        help="accepted updates that close a round at once",
    )
    parser.add_argument(
        "--min-updates",
        type=int,
        help="minimum accepted updates a round may close with at its deadline",
    )
    parser.add_argument(
        "--deadline-seconds",
        type=int,
        help="seconds from the opening of a round to its deadline",
    )
    parser.add_argument(
        "--on-deadline",
        help="what a round below the minimum does at its deadline: "
        f"{' or '.join(ON_DEADLINE_ACTIONS)}",
    )
    parser.add_argument(
        "--strategy",
        help=f"server aggregation strategy, one of {sorted(IMPLEMENTED_STRATEGIES)}",
    )
    parser.add_argument(
        "--strategy-param",
        action="append",
        metavar="NAME=VALUE",
        help="a numeric parameter of the strategy; repeat for several",
    )


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """Parse ``--strategy-param NAME=VALUE`` options into numbers.

    Raises
    ------
    InvalidInputError
        If a pair has no ``=`` or its value is not a number.
    """
    params: dict[str, Any] = {}
    for pair in pairs:
        name, separator, raw = pair.partition("=")
        if not separator or not name:
            raise InvalidInputError(
                f"--strategy-param {pair!r} is invalid: expected NAME=VALUE"
            )
        try:
            params[name] = float(raw)
        except ValueError:
            raise InvalidInputError(
                f"--strategy-param {pair!r} is invalid: {raw!r} is not a number"
            ) from None
    return params


def apply_changes(
    current: dict[str, Any], changes: dict[str, Any], params: dict[str, Any] | None
) -> RoundConfig:
    """Merge option values into the current document and validate the result.

    Changing the strategy drops the old strategy's parameters unless new ones are
    given, because parameters belong to one strategy.

    Raises
    ------
    InvalidInputError
        If the merged configuration is invalid; the message names the field.
    """
    document = dict(current)
    document.pop("format_version", None)
    for name, value in changes.items():
        if value is not None:
            document[name] = value
    if changes.get("strategy") is not None and changes["strategy"] != current.get(
        "strategy"
    ):
        document["strategy_params"] = {}
    if params is not None:
        document["strategy_params"] = params
    try:
        return parse_round_config(document)
    except RoundConfigError as exc:
        option = OPTION_FIELDS.get(exc.field_name, exc.field_name)
        raise InvalidInputError(f"invalid {option}: {exc}") from exc


def run_configure(
    context: OperatorContext,
    settings: DeploymentSettings,
    changes: dict[str, Any],
    params: dict[str, Any] | None,
) -> str:
    """Validate and write the round configuration; return the stored document.

    Without any change, print the stored configuration (or the ``cdk.json`` one
    when none is stored) and write nothing.

    Raises
    ------
    InvalidInputError
        If a value is invalid.
    ConflictError
        If another writer changed the configuration since it was read.
    """
    has_changes = params is not None or any(
        value is not None for value in changes.values()
    )
    s3 = context.client("s3")
    try:
        stored = context.read_json(layout.ROUND_CONFIG_KEY, s3=s3)
    except StoredDocumentError as exc:
        if not has_changes:
            raise InvalidInputError(
                f"{exc}: pass every setting to write it again"
            ) from exc
        # An unreadable document is replaced by the changes on top of the
        # deployment settings, conditioned on the ETag that was read.
        stored = StoredJson(body=round_document(settings), etag=exc.etag)
    current = round_document(settings) if stored is None else stored.body
    if stored is not None:
        try:
            parse_round_config(current)
        except RoundConfigError as exc:
            if not has_changes:
                raise InvalidInputError(
                    f"stored s3://{context.models_bucket}/{layout.ROUND_CONFIG_KEY} "
                    f"is invalid ({exc}): pass every setting to write it again"
                ) from exc
            # The changes apply on top of the deployment settings instead.
            current = round_document(settings)
    if not has_changes:
        return json.dumps(parse_round_config(current).to_document(), indent=2)
    config = apply_changes(current, changes, params)
    document = config.to_document()
    condition = {"IfNoneMatch": "*"} if stored is None else {"IfMatch": stored.etag}
    try:
        s3.put_object(
            Bucket=context.models_bucket,
            Key=layout.ROUND_CONFIG_KEY,
            Body=json.dumps(document, indent=1, sort_keys=True).encode(),
            ContentType="application/json",
            **condition,
        )
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            raise ConflictError(
                f"s3://{context.models_bucket}/{layout.ROUND_CONFIG_KEY} changed "
                "while it was being updated: run the command again"
            ) from exc
        raise aws_error(
            f"writing s3://{context.models_bucket}/{layout.ROUND_CONFIG_KEY}", exc
        ) from exc
    except BotoCoreError as exc:
        raise aws_error(
            f"writing s3://{context.models_bucket}/{layout.ROUND_CONFIG_KEY}", exc
        ) from exc
    for text in setting_warnings(config, previous=str(current.get("strategy", ""))):
        print(f"warning: {text}", file=sys.stderr)
    return json.dumps(document, indent=2)


def setting_warnings(config: RoundConfig, previous: str = "") -> list[str]:
    """Return one warning per valid setting that abandons rounds or weakens DP.

    ``previous`` is the strategy the configuration named before this change.
    """
    found = []
    if previous == "dp_fedavg" and config.strategy != "dp_fedavg":
        found.append(
            f"rounds under {config.strategy} publish models without differential "
            "privacy: the epsilon that dp_fedavg reported covers only the models it "
            "published"
        )
    least = least_updates(resolve(config.strategy, config.strategy_params))
    if config.min_updates < least:
        found.append(
            f"{config.strategy} needs {least} updates per round, so a round that "
            f"closes at its deadline with {config.min_updates} to {least - 1} is "
            f"abandoned: raise --min-updates to {least} to close it instead"
        )
    if config.strategy == "dp_fedavg" and config.min_updates != config.target_updates:
        found.append(
            "dp_fedavg's epsilon holds only when --min-updates and --target-updates "
            "both equal the number of devices drawn for the round "
            f"(now {config.min_updates} and {config.target_updates})"
        )
    return found
