"""Deployment settings: the one source of names, prefixes and round settings.

The CDK stacks and the embedded AWS of the demo both build their resources from
:class:`DeploymentSettings`, read from the ``context`` of ``cdk.json`` (overridable
with ``cdk -c key=value``). This module imports no CDK code, so the local runtime can
use it without synthesizing anything.

Context keys (all optional; defaults in brackets):

``fl:prefix`` [``sfl``]
    Name prefix of every resource, lowercase letters, digits and ``-``.
``fl:stage`` [``dev``]
    Stage name appended to the prefix, so several federations share an account.
``fl:round``
    ``target_updates`` [20] accepted updates that close a round; ``min_updates`` [10]
    the least a round may close with at its deadline; ``deadline_seconds`` [900];
    ``on_deadline`` [``abandon``] what happens below the minimum at the deadline,
    ``abandon`` or ``extend``; ``lease_seconds`` [150] how long a closer holds its
    claim, more than the aggregator's timeout so a live closer is never taken over.
``fl:model``
    ``architecture`` [``mlp``] or ``softmax``; ``input_dim`` [64]; ``hidden_units``
    [32]; ``classes`` [10]; ``seed`` [0] for the initial weights.
``fl:validation``
    ``max_update_bytes`` [16 MiB] judged from the S3 event before any download;
    ``max_examples`` [1000000]; ``max_update_norm`` [null, no bound]; the
    shipped ``cdk.json`` sets 20, about ten times the largest update norm of the
    digits MLP (1-2): set it from your own model's update norms.
``fl:aggregator``
    ``memory_mb`` [1024]; ``timeout_seconds`` [120]; ``ephemeral_storage_mb`` [1024];
    ``reserved_concurrency`` [4]; ``batch_size`` [10]; ``batching_window_seconds`` [5];
    ``max_receive_count`` [5] deliveries before a message goes to the DLQ;
    ``sweep_minutes`` [5] between deadline sweeps; ``accumulator`` [``float64``]
    what the mean family sums float32 weights in, ``float64`` or ``float32``, which
    takes half the memory and rounds the sum to float32 (see docs/deploy.md).
``fl:monitoring``
    ``alarm_email`` [empty, no subscription]; ``no_publish_deadline_multiple`` [3]
    deadlines without a published round before the alarm; ``max_rejected_ratio`` [0.2].
``fl:registry``
    ``inference_image`` [empty]: an ECR image URI registered with each model version.
``fl:retention_days`` [30]
    Days raw updates are kept before S3 lifecycle expiry.
``fl:strategy``
    ``name`` [``fedavg``] the server aggregation strategy of new rounds, one of
    ``fedavg``, ``fedprox``, ``fedavgm``, ``fedadam``, ``fedyogi``, ``fedadagrad``,
    ``median``, ``trimmed_mean``, ``krum``, ``multikrum``, ``dp_fedavg``; ``params``
    [{}] its numeric parameters, defaults and ranges in :mod:`fedcore.strategies`. The
    aggregator gets them as ``STRATEGY`` and ``STRATEGY_PARAMS`` (JSON), and
    ``config/round.json`` written by ``sfl configure`` overrides both per round.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcore.aggregation import ACCUMULATORS, FLOAT64
from fedcore.round_config import MAX_DEADLINE_SECONDS, MAX_TARGET_UPDATES
from fedcore.strategies import StrategyError, least_updates, resolve
from lambdas.aggregator import constants as env

CDK_JSON = Path(__file__).resolve().parent.parent / "cdk.json"
METRIC_NAMESPACE = "ServerlessFL"
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,19}$")


class SettingsError(ValueError):
    """A context value that is missing, of the wrong type or out of range."""


@dataclass(frozen=True, kw_only=True)
class RoundSettings:
    """When a round closes."""

    target_updates: int = 20
    min_updates: int = 10
    deadline_seconds: int = 900
    on_deadline: str = "abandon"
    lease_seconds: int = 150


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """Architecture and seed of the initial global model."""

    architecture: str = "mlp"
    input_dim: int = 64
    hidden_units: int = 32
    classes: int = 10
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class ValidationSettings:
    """Bounds the aggregator enforces on every update."""

    max_update_bytes: int = 16 * 1024 * 1024
    max_examples: int = 1_000_000
    max_update_norm: float | None = None


@dataclass(frozen=True, kw_only=True)
class AggregatorSettings:
    """Lambda sizing and SQS event source mapping of the aggregator."""

    memory_mb: int = 1024
    timeout_seconds: int = 120
    ephemeral_storage_mb: int = 1024
    reserved_concurrency: int = 4
    batch_size: int = 10
    batching_window_seconds: int = 5
    max_receive_count: int = 5
    sweep_minutes: int = 5
    accumulator: str = FLOAT64

    @property
    def visibility_timeout_seconds(self) -> int:
        """SQS visibility timeout: six times the function timeout, as AWS advises."""
        return 6 * self.timeout_seconds


@dataclass(frozen=True, kw_only=True)
class MonitoringSettings:
    """Alarm targets and thresholds."""

    alarm_email: str = ""
    no_publish_deadline_multiple: int = 3
    max_rejected_ratio: float = 0.2


@dataclass(frozen=True, kw_only=True)
class DeploymentSettings:
    """Everything the stacks and the local runtime need to agree on."""

    prefix: str = "sfl"
    stage: str = "dev"
    round: RoundSettings = field(default_factory=RoundSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    aggregator: AggregatorSettings = field(default_factory=AggregatorSettings)
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)
    inference_image: str = ""
    retention_days: int = 30
    strategy: str = "fedavg"
    strategy_params: Mapping[str, float] = field(default_factory=dict)

    @property
    def federation(self) -> str:
        """Federation name: the ``Federation`` metric dimension and name stem."""
        return f"{self.prefix}-{self.stage}"

    @property
    def model_package_group_name(self) -> str:
        """SageMaker model package group of the published global models."""
        return f"{self.federation}-global-model"

    @property
    def metric_namespace(self) -> str:
        """CloudWatch namespace of the aggregator's metrics."""
        return METRIC_NAMESPACE

    @property
    def local_updates_bucket(self) -> str:
        """Updates bucket name in the embedded AWS (CDK lets CloudFormation name it)."""
        return f"{self.federation}-updates"

    @property
    def local_models_bucket(self) -> str:
        """Models bucket name in the embedded AWS."""
        return f"{self.federation}-models"

    @property
    def local_queue_name(self) -> str:
        """Update event queue name in the embedded AWS."""
        return f"{self.federation}-update-events"

    @property
    def local_dlq_name(self) -> str:
        """Dead-letter queue name in the embedded AWS."""
        return f"{self.federation}-update-events-dlq"


def aggregator_environment(
    settings: DeploymentSettings, *, updates_bucket: str, models_bucket: str
) -> dict[str, str]:
    """Build the aggregator's environment variables.

    The stacks pass CloudFormation bucket names (tokens); the local runtime passes the
    names it created.
    """
    norm = settings.validation.max_update_norm
    return {
        env.UPDATES_BUCKET: updates_bucket,
        env.MODELS_BUCKET: models_bucket,
        env.MODEL_PACKAGE_GROUP: settings.model_package_group_name,
        env.METRIC_NAMESPACE: settings.metric_namespace,
        env.FEDERATION: settings.federation,
        env.ROUND_TARGET_UPDATES: str(settings.round.target_updates),
        env.ROUND_MIN_UPDATES: str(settings.round.min_updates),
        env.ROUND_DEADLINE_SECONDS: str(settings.round.deadline_seconds),
        env.ROUND_ON_DEADLINE: settings.round.on_deadline,
        env.LEASE_SECONDS: str(settings.round.lease_seconds),
        env.MAX_UPDATE_BYTES: str(settings.validation.max_update_bytes),
        env.MAX_EXAMPLES: str(settings.validation.max_examples),
        env.MAX_UPDATE_NORM: "" if norm is None else repr(norm),
        env.INFERENCE_IMAGE: settings.inference_image,
        env.STRATEGY: settings.strategy,
        env.STRATEGY_PARAMS: json.dumps(
            dict(sorted(settings.strategy_params.items())), separators=(",", ":")
        ),
        env.AGGREGATION_ACCUMULATOR: settings.aggregator.accumulator,
        env.LOG_LEVEL: "INFO",
    }


def read_cdk_context(path: Path = CDK_JSON) -> dict[str, Any]:
    """Read the ``context`` object of ``cdk.json``."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SettingsError(f"cannot read the CDK context from {path}: {exc}") from exc
    context = document.get("context", {})
    if not isinstance(context, dict):
        raise SettingsError(f"'context' in {path} is not an object")
    return context


def load_settings(
    context: Mapping[str, Any] | None = None,
    *,
    lookup: Callable[[str], Any] | None = None,
) -> DeploymentSettings:
    """Build validated settings from CDK context.

    Parameters
    ----------
    context
        Context values; ``cdk.json``'s context when omitted.
    lookup
        Returns an override for a context key, or None; the CDK app passes
        ``app.node.try_get_context`` so that ``-c`` values win over ``cdk.json``.
    """
    values = dict(read_cdk_context() if context is None else context)
    if lookup is not None:
        for key in _KEYS:
            override = lookup(key)
            if override is not None:
                values[key] = _maybe_json(override)
    unknown = sorted(
        key for key in values if key.startswith("fl:") and key not in _KEYS
    )
    if unknown:
        raise SettingsError(
            f"unknown context keys {unknown}: expected some of {sorted(_KEYS)}"
        )
    prefix = _name(values.get("fl:prefix", "sfl"), "fl:prefix")
    stage = _name(values.get("fl:stage", "dev"), "fl:stage")
    round_settings = _section(RoundSettings, values.get("fl:round", {}), "fl:round")
    if round_settings.on_deadline not in ("abandon", "extend"):
        raise SettingsError(
            f"fl:round.on_deadline is {round_settings.on_deadline!r}, "
            "expected 'abandon' or 'extend'"
        )
    if round_settings.target_updates > MAX_TARGET_UPDATES:
        raise SettingsError(
            f"fl:round.target_updates {round_settings.target_updates} exceeds "
            f"{MAX_TARGET_UPDATES}: lower it"
        )
    if not 1 <= round_settings.deadline_seconds <= MAX_DEADLINE_SECONDS:
        raise SettingsError(
            f"fl:round.deadline_seconds {round_settings.deadline_seconds} must be "
            f"between 1 and {MAX_DEADLINE_SECONDS}"
        )
    if not 1 <= round_settings.min_updates <= round_settings.target_updates:
        raise SettingsError(
            f"fl:round.min_updates {round_settings.min_updates} must be between 1 and "
            f"target_updates {round_settings.target_updates}"
        )
    model = _section(ModelSettings, values.get("fl:model", {}), "fl:model")
    if model.architecture not in ("mlp", "softmax"):
        raise SettingsError(
            f"fl:model.architecture is {model.architecture!r}, "
            "expected 'mlp' or 'softmax'"
        )
    aggregator = _section(
        AggregatorSettings, values.get("fl:aggregator", {}), "fl:aggregator"
    )
    if aggregator.accumulator not in ACCUMULATORS:
        raise SettingsError(
            f"fl:aggregator.accumulator is {aggregator.accumulator!r}, "
            f"expected one of {list(ACCUMULATORS)}"
        )
    if round_settings.lease_seconds <= aggregator.timeout_seconds:
        raise SettingsError(
            f"fl:round.lease_seconds {round_settings.lease_seconds} must exceed "
            f"fl:aggregator.timeout_seconds {aggregator.timeout_seconds}, so that a "
            "closer still inside its timeout is never taken over"
        )
    monitoring = _section(
        MonitoringSettings, values.get("fl:monitoring", {}), "fl:monitoring"
    )
    registry = values.get("fl:registry", {})
    if not isinstance(registry, dict) or set(registry) - {"inference_image"}:
        raise SettingsError("fl:registry must be an object with only 'inference_image'")
    strategy, strategy_params = _strategy(values.get("fl:strategy", {}))
    least = least_updates(resolve(strategy, strategy_params))
    if round_settings.target_updates < least:
        raise SettingsError(
            f"fl:round.target_updates {round_settings.target_updates} is below the "
            f"{least} updates that fl:strategy {strategy!r} needs per round: "
            "raise target_updates or lower the strategy's f, m or nnm_f"
        )
    return DeploymentSettings(
        prefix=prefix,
        stage=stage,
        round=round_settings,
        model=model,
        validation=_section(
            ValidationSettings, values.get("fl:validation", {}), "fl:validation"
        ),
        aggregator=aggregator,
        monitoring=monitoring,
        inference_image=_string(registry.get("inference_image", ""), "fl:registry"),
        retention_days=_positive_int(
            values.get("fl:retention_days", 30), "fl:retention_days"
        ),
        strategy=strategy,
        strategy_params=strategy_params,
    )


_KEYS = frozenset(
    {
        "fl:prefix",
        "fl:stage",
        "fl:round",
        "fl:model",
        "fl:validation",
        "fl:aggregator",
        "fl:monitoring",
        "fl:registry",
        "fl:retention_days",
        "fl:strategy",
    }
)


def _strategy(raw: Any) -> tuple[str, dict[str, float]]:
    """Check ``fl:strategy`` and return the name and the parameters as given."""
    if not isinstance(raw, dict) or set(raw) - {"name", "params"}:
        raise SettingsError(
            f"fl:strategy is {raw!r}, expected an object with 'name' and 'params'"
        )
    name = _string(raw.get("name", "fedavg"), "fl:strategy.name")
    params = raw.get("params", {})
    if not isinstance(params, dict):
        raise SettingsError(f"fl:strategy.params is {params!r}, expected an object")
    try:
        resolve(name, params)
    except StrategyError as exc:
        raise SettingsError(f"fl:strategy: {exc}") from exc
    return name, {key: float(value) for key, value in params.items()}


def _maybe_json(value: Any) -> Any:
    """Decode a ``-c key={...}`` override, which the CDK CLI passes as a string."""
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise SettingsError(
                f"context value {value!r} is not valid JSON: {exc}"
            ) from exc
    return value


def _name(value: Any, key: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise SettingsError(
            f"{key} is {value!r}: expected 1-20 lowercase letters, digits or '-', "
            "starting with a letter"
        )
    return value


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise SettingsError(f"{key} is {value!r}, expected a string")
    return value


def _positive_int(value: Any, key: str, *, minimum: int = 1) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise SettingsError(f"{key} is {value!r}, expected an integer >= {minimum}")
    return value


def _section(cls: type[Any], raw: Any, key: str) -> Any:
    """Build one settings dataclass from a context object, checking every field."""
    if not isinstance(raw, dict):
        raise SettingsError(f"{key} is {raw!r}, expected an object")
    defaults = cls()
    fields = {name: getattr(defaults, name) for name in cls.__dataclass_fields__}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise SettingsError(
            f"{key} has unknown fields {unknown}: expected some of {sorted(fields)}"
        )
    checked: dict[str, Any] = {}
    for name, raw_value in raw.items():
        default = fields[name]
        path = f"{key}.{name}"
        value = raw_value
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise SettingsError(f"{path} is {value!r}, expected true or false")
        elif isinstance(default, int):
            value = _positive_int(value, path, minimum=0 if name == "seed" else 1)
        elif isinstance(default, float) or (
            default is None and name.startswith("max_")
        ):
            if value is not None and (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or value <= 0
            ):
                raise SettingsError(f"{path} is {value!r}, expected a positive number")
            value = None if value is None else float(value)
        elif isinstance(default, str):
            value = _string(value, path)
        checked[name] = value
    return cls(**checked)


def round_document(settings: DeploymentSettings) -> dict[str, Any]:
    """Return the round settings as a ``config/round.json`` document."""
    return {
        "target_updates": settings.round.target_updates,
        "min_updates": settings.round.min_updates,
        "deadline_seconds": settings.round.deadline_seconds,
        "on_deadline": settings.round.on_deadline,
        "strategy": settings.strategy,
        "strategy_params": dict(settings.strategy_params),
    }
