"""The invariant checker run at the end of every scenario.

(a) Every accepted update is counted once, in one round. (b) Each published round
has one model and one registry version, and the pointer only moves forward.
(c) Replaying the events of finished rounds changes nothing.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import pairwise
from typing import Any

from fedcore import layout
from lambdas.aggregator import state
from lambdas.aggregator.store import sha256_hex

from .harness import Harness, Upload

SETTLED = (state.PUBLISHED, state.ABANDONED)


def check_counted_once(harness: Harness, expected_keys: Iterable[str] | None) -> None:
    """(a) Each accepted key appears once, under its own device and round."""
    entries = harness.accepted_entries()
    keys = [entry["key"] for _, _, entry in entries]
    assert len(keys) == len(set(keys)), f"a key is counted twice: {Counter(keys)}"
    for round_number, device, entry in entries:
        parsed = layout.parse_update_key(entry["key"])
        assert parsed.device_id == device, entry
        assert parsed.round == round_number, entry
    if expected_keys is not None:
        assert set(keys) == set(expected_keys)
    for body in harness.rounds().values():
        if body["status"] in (state.CLOSING, state.PUBLISHED):
            assert body["closing"]["members"] == sorted(body["accepted"])


def check_published_once(harness: Harness, *, settled: bool = True) -> None:
    """(b) One model and one registry version per published round; forward pointer."""
    rounds = harness.rounds()
    registry = harness.registry()
    by_round = Counter(item["CustomerMetadataProperties"]["round"] for item in registry)
    published = [
        number for number, body in rounds.items() if body["status"] == "published"
    ]
    for number in published:
        body = rounds[number]
        versions = harness.versions(layout.model_key(number + 1))
        assert len(versions) == 1, (
            f"round {number} wrote its model {len(versions)} times"
        )
        assert by_round[str(number)] == 1, f"round {number}: {by_round[str(number)]}"
        stored = harness.s3.get_object(
            Bucket=harness.models_bucket, Key=layout.model_key(number + 1)
        )["Body"].read()
        assert body["published"]["model_sha256"] == sha256_hex(stored)
    unpublished = {str(number) for number in rounds if number not in published}
    if settled:
        assert not (unpublished & set(by_round)), by_round
    assert sum(by_round.values()) == len(registry)
    history = harness.pointer_history()
    steps = [after - before for before, after in pairwise(history)]
    assert all(step == 1 for step in steps), f"pointer history {history}"
    pointer = harness.pointer()["round"]
    assert history[-1] == pointer
    if settled:
        for number in range(1, pointer):
            assert rounds[number]["status"] in SETTLED, (number, rounds[number])
    assert harness.total("RoundsPublished") == len(published)


def snapshot(harness: Harness) -> dict[str, Any]:
    """Everything a replay could change: object versions, registry, counters."""
    return {
        "versions": harness.all_versions(),
        "registry": len(harness.registry()),
        "accepted": harness.total("UpdatesAccepted"),
        "rejected": harness.total("UpdatesRejected"),
        "published": harness.total("RoundsPublished"),
    }


def check_replay_changes_nothing(
    harness: Harness, uploads: Sequence[Upload], *, seed: int = 0
) -> None:
    """(c) Deliver the events of finished rounds again, shuffled, some twice."""
    open_round = harness.pointer()["round"]
    finished = [upload for upload in uploads if upload.round < open_round]
    if not finished:
        return
    before = snapshot(harness)
    events = finished + finished[:2]
    random.Random(seed).shuffle(events)
    for start in range(0, len(events), 10):
        failed = harness.deliver(*events[start : start + 10])
        assert failed == []
    assert snapshot(harness) == before


def check_all(
    harness: Harness,
    uploads: Sequence[Upload],
    expected_keys: Iterable[str] | None = None,
) -> None:
    """Run (a), (b) and (c) on a scenario that has settled."""
    check_counted_once(harness, expected_keys)
    check_published_once(harness)
    # The replay check compares every object version, so (a) and (b) still hold.
    check_replay_changes_nothing(harness, uploads)
