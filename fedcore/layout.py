"""Object key layout shared by devices, the aggregator, stacks and the local runtime.

Device uploads go to the updates bucket under
``updates/<device_id>/round-<round>/<update_id>.safetensors``. The device id comes
first so that an IAM policy can confine each device to ``updates/<device_id>/*``.

Everything the aggregator writes goes to the models bucket, which has no event
notification, so nothing the aggregator writes can trigger it again.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from fedcore.errors import LayoutError

UPDATES_PREFIX = "updates/"
UPDATE_SUFFIX = ".safetensors"

POINTER_KEY = "global/pointer.json"
HOLDOUT_KEY = "holdout/holdout.safetensors"
ROUND_CONFIG_KEY = "config/round.json"

# The patterns end in \Z, not $, because $ also matches before a trailing newline.
DEVICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
UPDATE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
_UPDATE_KEY = re.compile(
    r"^updates/(?P<device>[^/]+)/round-(?P<round>[0-9]{6})/"
    r"(?P<update>[^/]+)\.safetensors\Z"
)
MAX_ROUND = 999_999
# UTF-8 bytes of an object key kept in the name of its rejection record.
REJECTION_NAME_BYTES = 900


@dataclass(frozen=True)
class UpdateKey:
    """The parts of an update object key."""

    device_id: str
    round: int
    update_id: str

    @property
    def key(self) -> str:
        """Object key of this update in the updates bucket."""
        return update_key(self.device_id, self.round, self.update_id)


def _check_round(round_number: int) -> None:
    if not 0 <= round_number <= MAX_ROUND:
        raise LayoutError(f"round {round_number} is outside 0..{MAX_ROUND}")


def update_key(device_id: str, round_number: int, update_id: str) -> str:
    """Build the key a device uploads its update for ``round_number`` to."""
    if not DEVICE_ID_PATTERN.match(device_id):
        raise LayoutError(
            f"invalid device id {device_id!r}: expected 1-64 characters of "
            "letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if not UPDATE_ID_PATTERN.match(update_id):
        raise LayoutError(
            f"invalid update id {update_id!r}: expected 1-64 characters of "
            "letters, digits, '_' or '-'"
        )
    _check_round(round_number)
    return (
        f"{UPDATES_PREFIX}{device_id}/round-{round_number:06d}/"
        f"{update_id}{UPDATE_SUFFIX}"
    )


def clipped(text: str, limit: int = 120) -> str:
    """Shorten text for a message, because an S3 key may be 1,024 bytes long."""
    return text if len(text) <= limit else text[:limit] + "..."


def parse_update_key(key: str) -> UpdateKey:
    """Split an update key into device id, round and update id.

    Raises
    ------
    LayoutError
        If the key does not follow ``updates/<device>/round-<NNNNNN>/<id>.safetensors``.
    """
    match = _UPDATE_KEY.match(key)
    clipped_key = clipped(key)
    if match is None:
        raise LayoutError(
            f"key {clipped_key!r} does not match "
            "updates/<device_id>/round-<NNNNNN>/<update_id>.safetensors"
        )
    device_id = match.group("device")
    update_id = match.group("update")
    if not DEVICE_ID_PATTERN.match(device_id):
        raise LayoutError(
            f"key {clipped_key!r} has an invalid device id {clipped(device_id)!r}"
        )
    if not UPDATE_ID_PATTERN.match(update_id):
        raise LayoutError(
            f"key {clipped_key!r} has an invalid update id {clipped(update_id)!r}"
        )
    return UpdateKey(device_id, int(match.group("round")), update_id)


def round_prefix(round_number: int) -> str:
    """Prefix of every object the aggregator keeps for one round."""
    _check_round(round_number)
    return f"rounds/round-{round_number:06d}/"


def round_state_key(round_number: int) -> str:
    """Key of the round state document, the single record of a round's membership."""
    return round_prefix(round_number) + "state.json"


def rejection_key(round_number: int | None, object_key: str) -> str:
    """Key of the record that stores why one uploaded object was rejected.

    The object key's ``/`` become ``__`` and it is cut to 900 UTF-8 bytes, so the
    record's key stays within S3's 1,024 bytes. Sixteen hex digits of the object
    key's SHA-256 follow, so two objects never share a record. Objects whose key
    names no valid round are recorded under ``rejections/unknown/``.
    """
    readable = object_key.replace("/", "__").encode("utf-8", "replace")
    safe = readable[:REJECTION_NAME_BYTES].decode("utf-8", "ignore")
    digest = hashlib.sha256(object_key.encode("utf-8", "surrogatepass")).hexdigest()
    name = f"{safe}.{digest[:16]}.json"
    if round_number is None:
        return f"rejections/unknown/{name}"
    _check_round(round_number)
    return f"rejections/round-{round_number:06d}/{name}"


def registration_key(round_number: int) -> str:
    """Key of the marker that records the registry version of a round's model."""
    return round_prefix(round_number) + "registration.json"


def model_prefix(round_number: int) -> str:
    """Prefix of the global model that devices train from in ``round_number``."""
    _check_round(round_number)
    return f"models/round-{round_number:06d}/"


def model_key(round_number: int) -> str:
    """Key of the global model file for ``round_number``."""
    return model_prefix(round_number) + "model.safetensors"


def model_archive_key(round_number: int) -> str:
    """Key of the ``model.tar.gz`` registered in the model registry."""
    return model_prefix(round_number) + "model.tar.gz"


def evaluation_key(round_number: int) -> str:
    """Key of the evaluation JSON referenced from the registry's ModelMetrics."""
    return model_prefix(round_number) + "evaluation.json"


def server_state_key(round_number: int) -> str:
    """Key of the server optimizer state stored beside the global model."""
    return model_prefix(round_number) + "server_state.safetensors"
