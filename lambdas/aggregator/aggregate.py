"""Aggregating a closing round with its strategy, and the server state it carries.

The mean family streams whole updates one at a time (O(model) memory). The robust
rules read coordinate blocks of every update with S3 ranged GETs, so memory is
O(block x updates): each update's SHA-256 is first checked by streaming the object
once, its header is parsed from a ranged read of the first bytes, and every later
ranged GET names the version and ETag that were checked.

The server state (optimizer moments, step counter, adaptive clip norm, privacy
ledger) is read from beside the base model and the next one is returned for the
closer to write beside the next model.

``dp_fedavg`` streams like the mean family. Its budget is checked from the stored
ledger before any update is read, and its noise comes from
:func:`fedcore.privacy.secure_rng`, seeded from :mod:`secrets` unless a test set
:data:`_TEST_NOISE_SEED`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from botocore.exceptions import ClientError

from fedcore import safetensors_io, server_state
from fedcore.encoding import NONE, SPARSE_ENCODINGS, decode_update
from fedcore.errors import FedCoreError
from fedcore.server_state import ServerState
from fedcore.server_update import ClippedMean, next_clip_norm, server_step
from fedcore.strategies import DP, MEAN, Strategy, StrategyError, resolve
from fedcore.update import TensorSpec
from lambdas.aggregator import store
from lambdas.aggregator.clients import client
from lambdas.aggregator.config import AggregatorConfig
from lambdas.aggregator.modelcache import LoadedModel, load_model

if TYPE_CHECKING:
    from fedcore import dp_fedavg

logger = logging.getLogger(__name__)

# Robust rules that take each coordinate's median or trimmed mean across updates.
COORDINATE_WISE = frozenset({"median", "trimmed_mean"})
# The first ranged read of an update; most headers fit, longer ones get a second read.
HEADER_PREFIX_BYTES = 64 * 1024
_CHUNK_BYTES = 1 << 20
# Seed of the DP noise, for tests only: they assign it in process. No environment
# variable or configuration sets it, so a deployed function always seeds from
# the secrets module.
_TEST_NOISE_SEED: int | None = None


class AggregationFailed(store.StoreError):
    """A round whose updates cannot be aggregated with its strategy."""


class MemberChanged(AggregationFailed):
    """An accepted update that can no longer be read as it was accepted.

    Its version was deleted, or an unversioned object was overwritten. Every
    retry would fail the same way, so the round is abandoned instead of staying
    in ``closing``.
    """


class BudgetExhausted(AggregationFailed):
    """A ``dp_fedavg`` round that would take epsilon over the privacy budget."""


@dataclass(frozen=True)
class Aggregate:
    """The next model of a closing round and what the closer publishes with it."""

    model: dict[str, np.ndarray]
    metadata: dict[str, str]
    examples: int
    state_bytes: bytes

    @property
    def private(self) -> bool:
        """Whether the model was published by ``dp_fedavg``."""
        return "dp_epsilon" in self.metadata


def round_strategy(body: Mapping[str, Any]) -> Strategy:
    """Return the strategy a round was opened with; older rounds used FedAvg."""
    try:
        return resolve(
            str(body.get("strategy") or "fedavg"), body.get("strategy_params") or {}
        )
    except StrategyError as exc:
        raise AggregationFailed(
            f"round {body.get('round')} records an invalid strategy: {exc}"
        ) from exc


def aggregate(config: AggregatorConfig, body: Mapping[str, Any]) -> Aggregate:
    """Aggregate the frozen members of a closing round into the next model.

    Raises
    ------
    BudgetExhausted
        If a ``dp_fedavg`` round would take epsilon over its budget.
    MemberChanged
        If an accepted update's version is gone or its bytes changed.
    AggregationFailed
        If the strategy cannot aggregate this round, for example with too few
        updates for Krum, or its server step makes the model non-finite.
    store.StoreError
        If S3 fails in a way a retry may fix.
    """
    strategy = round_strategy(body)
    state = read_state(config, body["base_model_key"]).continued(strategy)
    settings: dp_fedavg.DpSettings | None = None
    if strategy.family == DP:
        # The privacy modules load on the first dp_fedavg round only, so the cold
        # start of every other invocation does not pay for them.
        from fedcore import dp_fedavg  # noqa: PLC0415

        settings = dp_fedavg.DpSettings.from_strategy(strategy)
        try:
            dp_fedavg.check_budget(settings, state)
        except dp_fedavg.PrivacyBudgetExhausted as exc:
            raise BudgetExhausted(f"round {body['round']}: {exc}") from exc
    base = load_model(config, body["base_model_key"], body["base_model_sha256"])
    members = list(body["closing"]["members"])
    entries = [body["accepted"][device_id] for device_id in members]
    report: dp_fedavg.DpReport | None = None
    try:
        if settings is not None:
            weights, others, report = _stream_dp(config, settings, base, entries, state)
        elif strategy.family == MEAN:
            weights, others, norms = _stream_mean(
                config, strategy, base, entries, state
            )
            state.clip_norm = next_clip_norm(strategy, state.clip_norm, norms)
        else:
            weights, others = _ranged_robust(config, strategy, base, entries)
        model, next_state = server_step(strategy, base.tensors, weights, others, state)
    except (StrategyError, FedCoreError) as exc:
        raise AggregationFailed(
            f"round {body['round']} cannot be aggregated with {strategy.name}: {exc}"
        ) from exc
    examples = sum(int(entry["num_examples"]) for entry in entries)
    metadata = {
        "format_version": "1",
        "kind": "model",
        "architecture": base.metadata.get("architecture", ""),
        "round": str(int(body["round"]) + 1),
        "produced_by_round": str(body["round"]),
        "base_model_sha256": base.sha256,
        "strategy": strategy.name,
        "strategy_params": json.dumps(dict(sorted(strategy.params.items()))),
        "server_steps": str(next_state.steps),
    }
    if report is None:
        metadata["participants"] = str(len(members))
        metadata["examples"] = str(examples)
    else:
        # The exact counts of participants and examples are not noised, so a
        # private model does not carry them; the round state keeps them.
        metadata.update(report.to_metadata())
    if "proximal_mu" in strategy.params:
        # Devices read the FedProx weight of their local objective from here.
        metadata["proximal_mu"] = repr(strategy.params["proximal_mu"])
    state_bytes = server_state.encode(next_state, produced_by_round=int(body["round"]))
    return Aggregate(model, metadata, examples, state_bytes)


def read_state(config: AggregatorConfig, base_model_key: str) -> ServerState:
    """Read the server state beside the base model; a missing one starts afresh."""
    key = server_state.key_beside(base_model_key)
    data = store.read_optional_bytes(config.models_bucket, key)
    if data is None:
        logger.info("no server state at s3://%s/%s", config.models_bucket, key)
        return ServerState(strategy="")
    try:
        return server_state.decode(data)
    except server_state.ServerStateError as exc:
        raise AggregationFailed(
            f"s3://{config.models_bucket}/{key} is not a server state: {exc}"
        ) from exc


def _read_update(
    config: AggregatorConfig, base: LoadedModel, entry: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """Read, check and decode one accepted update.

    Callers drop the result before reading the next update: an uncompressed
    update's tensors are views of its bytes, which would otherwise stay alive
    while the next update is read.
    """
    try:
        data = store.read_bytes(
            config.updates_bucket, entry["key"], version_id=entry.get("version_id")
        )
    except store.ObjectMissing as exc:
        raise MemberChanged(f"accepted update {entry['key']} is gone: {exc}") from exc
    _check_sha(entry, store.sha256_hex(data))
    tensors, metadata = safetensors_io.decode(
        data, max_header_bytes=config.limits.max_header_bytes
    )
    return decode_update(tensors, metadata, base.specs)


def _stream_mean(
    config: AggregatorConfig,
    strategy: Strategy,
    base: LoadedModel,
    entries: list[dict[str, Any]],
    state: ServerState,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[float]]:
    logger.info(
        "%s: folding %d updates into a %s accumulator",
        strategy.name,
        len(entries),
        config.accumulator,
    )
    mean = ClippedMean(strategy, base.specs, state.clip_norm, config.accumulator)
    for entry in entries:
        tensors = _read_update(config, base, entry)
        mean.add(tensors, int(entry["num_examples"]))
        del tensors
    weights, others = mean.result()
    return weights, others, mean.norms


def _stream_dp(
    config: AggregatorConfig,
    settings: dp_fedavg.DpSettings,
    base: LoadedModel,
    entries: list[dict[str, Any]],
    state: ServerState,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dp_fedavg.DpReport]:
    from fedcore import dp_fedavg, privacy  # noqa: PLC0415

    dp_round = dp_fedavg.DpRound(
        settings, base.specs, state.clip_norm or settings.clip_norm
    )
    for entry in entries:
        tensors = _read_update(config, base, entry)
        dp_round.add(tensors, int(entry["num_examples"]))
        del tensors
    rng = privacy.secure_rng(_TEST_NOISE_SEED)
    return dp_fedavg.finish_round(settings, state, dp_round, rng)


def _check_sha(entry: Mapping[str, Any], actual: str) -> None:
    if actual != entry["sha256"]:
        raise MemberChanged(
            f"update {entry['key']} changed after it was accepted: "
            f"SHA-256 {actual} differs from {entry['sha256']}"
        )


def _ranged_robust(
    config: AggregatorConfig,
    strategy: Strategy,
    base: LoadedModel,
    entries: list[dict[str, Any]],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    from fedcore.robust import aggregate_blocks  # noqa: PLC0415

    readers = [RangedUpdate(config, entry, base.specs) for entry in entries]
    sparse = [reader.key for reader in readers if reader.encoding in SPARSE_ENCODINGS]
    if sparse and strategy.name in COORDINATE_WISE:
        logger.warning(
            "%s: %d of %d updates are top-k encoded, so most of their coordinates "
            "are 0 and the coordinate-wise %s barely moves the model. Devices "
            "should use float16 or q8 under this rule: %s",
            strategy.name,
            len(sparse),
            len(readers),
            strategy.name,
            sparse[:5],
        )
    result = aggregate_blocks(
        strategy,
        base.specs,
        _Readers(readers),
        [int(entry["num_examples"]) for entry in entries],
        block_elements=max(1, config.block_bytes // 8),
    )
    if result.selected:
        logger.info(
            "%s kept updates %s",
            strategy.name,
            [entries[index]["key"] for index in result.selected],
        )
    return result.weights, result.others


class _Readers:
    def __init__(self, readers: list[RangedUpdate]) -> None:
        self._readers = readers

    def read(self, index: int, name: str, start: int, stop: int) -> np.ndarray:
        return self._readers[index].read(name, start, stop)


class RangedUpdate:
    """One accepted update in S3, read block by block with ranged GETs.

    Parameters
    ----------
    config
        The aggregator's configuration.
    entry
        The update's entry in the round state (key, version_id, sha256).
    specs
        The global model's tensors, which the update must match.
    """

    def __init__(
        self,
        config: AggregatorConfig,
        entry: Mapping[str, Any],
        specs: Mapping[str, TensorSpec],
    ) -> None:
        self.bucket = config.updates_bucket
        self.key = str(entry["key"])
        self.version_id = entry.get("version_id")
        self.etag, length = self._verify(entry)
        prefix = self._range(0, min(length, HEADER_PREFIX_BYTES) - 1)
        size = safetensors_io.header_length(
            prefix, max_header_bytes=config.limits.max_header_bytes
        )
        if len(prefix) < 8 + size:
            prefix = self._range(0, 8 + size - 1)
        self.header = safetensors_io.parse_header(
            prefix,
            file_length=length,
            max_header_bytes=config.limits.max_header_bytes,
        )
        self._dense: dict[str, np.ndarray] | None = None
        self.encoding = str(self.header.metadata.get("encoding", NONE))
        if self.encoding != NONE:
            # NOTE: a compressed update has no byte range per coordinate, so it is
            # read and decoded whole, and kept for the whole aggregation: memory is
            # O(model) for each compressed update in a robust round.
            tensors, metadata = safetensors_io.decode(
                self._range(0, length - 1),
                max_header_bytes=config.limits.max_header_bytes,
            )
            self._dense = decode_update(tensors, metadata, specs)
        else:
            self._check_specs(specs)

    def _check_specs(self, specs: Mapping[str, TensorSpec]) -> None:
        found = {
            name: TensorSpec(info.shape, info.dtype)
            for name, info in self.header.tensors.items()
        }
        if found != dict(specs):
            raise store.StoreError(
                f"update {self.key} has tensors {sorted(found)} that differ from the "
                "global model's names, shapes or dtypes"
            )

    def _extra(self) -> dict[str, str]:
        return {"VersionId": self.version_id} if self.version_id else {}

    def _verify(self, entry: Mapping[str, Any]) -> tuple[str, int]:
        """Stream the object once to check its SHA-256; return its ETag and size."""
        try:
            response = client("s3").get_object(
                Bucket=self.bucket, Key=self.key, **self._extra()
            )
            digest = hashlib.sha256()
            length = 0
            for chunk in response["Body"].iter_chunks(_CHUNK_BYTES):
                digest.update(chunk)
                length += len(chunk)
        except ClientError as exc:
            raise _read_error(
                exc, f"reading s3://{self.bucket}/{self.key} failed: {exc}"
            ) from exc
        _check_sha(entry, digest.hexdigest())
        return str(response["ETag"]), length

    def _range(self, first: int, last: int) -> bytes:
        try:
            response = client("s3").get_object(
                Bucket=self.bucket,
                Key=self.key,
                Range=f"bytes={first}-{last}",
                IfMatch=self.etag,
                **self._extra(),
            )
            data = bytes(response["Body"].read())
        except ClientError as exc:
            raise _read_error(
                exc,
                f"ranged read bytes={first}-{last} of s3://{self.bucket}/{self.key} "
                f"failed: {exc}",
            ) from exc
        if len(data) != last - first + 1:
            raise store.StoreError(
                f"ranged read bytes={first}-{last} of s3://{self.bucket}/{self.key} "
                f"returned {len(data)} bytes"
            )
        return data

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        """Return elements ``start:stop`` of the flattened tensor ``name``, float64."""
        if self._dense is not None:
            flat = np.asarray(self._dense[name]).reshape(-1)[start:stop]
            return flat.astype(np.float64)
        info = self.header.tensors[name]
        itemsize = info.numpy_dtype.itemsize
        first = self.header.data_start + info.begin + start * itemsize
        data = self._range(first, first + (stop - start) * itemsize - 1)
        return np.frombuffer(data, dtype=info.numpy_dtype).astype(np.float64)


def _read_error(exc: ClientError, message: str) -> store.StoreError:
    """Classify a failed read of an accepted update.

    A missing version, or a changed ETag under ``If-Match``, fails every retry
    the same way, so it is :class:`MemberChanged`. Anything else may pass on a
    retry.
    """
    if store.is_missing(exc) or store.is_precondition_failure(exc):
        return MemberChanged(message)
    return store.StoreError(message)
