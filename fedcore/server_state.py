"""Server optimizer state: moments, step counter and adaptive clip norm.

The state that the close of round R produces is stored beside the model it publishes,
at ``models/round-(R+1)/server_state.safetensors``, and the close of the next round
reads it back. Nothing is kept in memory between invocations, so a fresh process
continues exactly where the last one stopped. Moments are stored as float64 tensors
named ``<slot>/<tensor>`` (slots ``m`` and ``v`` for the adaptive optimizers,
``momentum`` for FedAvgM), and the scalars as strings in the safetensors metadata.
The privacy ledger of ``dp_fedavg`` (the accountant's composed rounds) is stored as a
JSON string in the metadata too.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedcore import jsontext, layout, safetensors_io
from fedcore.errors import FedCoreError
from fedcore.strategies import Strategy

logger = logging.getLogger(__name__)

FORMAT_VERSION = "1"
KIND = "server_state"
_MODEL_KEY = re.compile(r"^models/round-(?P<round>[0-9]{6})/model\.safetensors\Z")


class ServerStateError(FedCoreError, ValueError):
    """A stored server state that cannot be read back."""


@dataclass
class ServerState:
    """Everything a strategy carries from one round to the next.

    Attributes
    ----------
    strategy
        Name of the strategy that produced the state. A state of another strategy is
        not reused: the next round starts from :meth:`initial`.
    steps
        Server steps taken so far with this strategy.
    clip_norm
        Current clip bound when the strategy clips, else None.
    slots
        Optimizer tensors by slot and tensor name, float64.
    privacy
        The privacy ledger, JSON-ready: ``{"accountant": RdpAccountant.to_dict()}``
        once a ``dp_fedavg`` round was published, else None.
    """

    strategy: str
    steps: int = 0
    clip_norm: float | None = None
    slots: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    privacy: dict[str, Any] | None = None

    @classmethod
    def initial(cls, strategy: Strategy) -> ServerState:
        """Return the state before the first round of ``strategy``."""
        clip = strategy.params.get("clip_norm", 0.0)
        return cls(strategy=strategy.name, clip_norm=clip if clip > 0 else None)

    def continued(self, strategy: Strategy) -> ServerState:
        """Return a copy of this state if ``strategy`` produced it, else a fresh one.

        An adaptive clip bound carries over, and starts from ``clip_norm`` when
        clipping was just turned on. A fixed bound is always the current
        ``clip_norm``, and no bound is kept when clipping is off. The privacy
        ledger always carries over, even to another strategy, because the rounds
        it counts stay published.
        """
        if self.strategy != strategy.name:
            if self.strategy:
                logger.info(
                    "server state of strategy %s does not apply to %s, starting afresh",
                    self.strategy,
                    strategy.name,
                )
            fresh = ServerState.initial(strategy)
            fresh.privacy = copy.deepcopy(self.privacy)
            return fresh
        clip_norm = self.clip_norm
        if not strategy.clips:
            clip_norm = None
        elif clip_norm is None or not strategy.adaptive_clip:
            clip_norm = strategy.params["clip_norm"]
        return ServerState(
            strategy=self.strategy,
            steps=self.steps,
            clip_norm=clip_norm,
            slots={slot: dict(arrays) for slot, arrays in self.slots.items()},
            privacy=copy.deepcopy(self.privacy),
        )


def key_beside(model_key: str) -> str:
    """Return the server state key beside a global model key.

    Raises
    ------
    ServerStateError
        If ``model_key`` is not ``models/round-NNNNNN/model.safetensors``.
    """
    match = _MODEL_KEY.match(model_key)
    if match is None:
        raise ServerStateError(
            f"model key {model_key!r} is not models/round-NNNNNN/model.safetensors, "
            "so there is no server state key beside it"
        )
    return layout.server_state_key(int(match.group("round")))


def encode(state: ServerState, *, produced_by_round: int) -> bytes:
    """Serialize a state to safetensors bytes; equal states give equal bytes."""
    tensors = {
        f"{slot}/{name}": np.asarray(array, dtype=np.float64)
        for slot, arrays in state.slots.items()
        for name, array in arrays.items()
    }
    metadata = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "strategy": state.strategy,
        "steps": str(state.steps),
        "clip_norm": "" if state.clip_norm is None else repr(state.clip_norm),
        "produced_by_round": str(produced_by_round),
        "slots": json.dumps(sorted(state.slots)),
    }
    if state.privacy is not None:
        metadata["privacy"] = json.dumps(state.privacy, sort_keys=True)
    return safetensors_io.encode(tensors, metadata)


def decode(data: bytes) -> ServerState:
    """Parse bytes written by :func:`encode`.

    Raises
    ------
    ServerStateError
        If the bytes are not a server state of this format.
    """
    try:
        tensors, metadata = safetensors_io.decode(data, max_header_bytes=64 << 20)
    except FedCoreError as exc:
        raise ServerStateError(f"server state is not valid safetensors: {exc}") from exc
    if metadata.get("kind") != KIND or metadata.get("format_version") != FORMAT_VERSION:
        raise ServerStateError(
            f"server state has kind {metadata.get('kind')!r} and format_version "
            f"{metadata.get('format_version')!r}, expected {KIND!r} and "
            f"{FORMAT_VERSION!r}"
        )
    try:
        steps = int(metadata["steps"])
        raw_clip = metadata.get("clip_norm", "")
        clip_norm = float(raw_clip) if raw_clip else None
        slot_names = jsontext.loads(metadata.get("slots", "[]"))
        privacy = jsontext.loads(metadata["privacy"]) if "privacy" in metadata else None
    except (KeyError, ValueError) as exc:
        raise ServerStateError(f"server state metadata is invalid: {exc}") from exc
    if privacy is not None and not isinstance(privacy, dict):
        raise ServerStateError(
            f"server state privacy ledger is {privacy!r}, expected a JSON object"
        )
    slots: dict[str, dict[str, np.ndarray]] = {name: {} for name in slot_names}
    for full_name, array in tensors.items():
        slot, _, name = full_name.partition("/")
        if slot not in slots or not name:
            raise ServerStateError(
                f"server state tensor {full_name!r} names no slot of {slot_names}"
            )
        slots[slot][name] = np.array(array, dtype=np.float64)
    return ServerState(
        strategy=metadata.get("strategy", ""),
        steps=steps,
        clip_norm=clip_norm,
        slots=slots,
        privacy=privacy,
    )


def check_slots(state: ServerState, specs: Mapping[str, tuple[int, ...]]) -> None:
    """Drop optimizer slots whose tensors no longer match the model's shapes."""
    for slot, arrays in list(state.slots.items()):
        if set(arrays) != set(specs) or any(
            arrays[name].shape != shape for name, shape in specs.items()
        ):
            logger.warning(
                "server state slot %s does not match the model's tensors, resetting it",
                slot,
            )
            del state.slots[slot]
