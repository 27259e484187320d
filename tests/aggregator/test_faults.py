"""Crashes at every failure point, under duplicates, reordering and concurrency.

Each scenario delivers one round's events in batches, crashes once at a named
point, then recovers the way AWS would: a crashed invocation's batch and every
reported failure are delivered again, and the sweep runs after the lease expires.
The invariant checker then runs on the settled federation.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from lambdas.aggregator import closer, faults, state

from .harness import Harness, Upload, expected_model, is_settled
from .invariants import check_all

BATCH_SIZE = 2
MAX_RECOVERY_PASSES = 6


@dataclass(frozen=True)
class Scenario:
    """One delivery plan: where to crash and how events arrive."""

    point: str
    duplicates: bool
    order: str
    workers: int


SCENARIOS = [
    Scenario(point, duplicates, order, workers)
    for point in faults.POINTS
    for duplicates, order, workers in (
        (False, "forward", 1),
        (True, "forward", 1),
        (False, "reverse", 1),
        (True, "shuffle", 2),
        (False, "shuffle", 3),
    )
]


def scenario_id(scenario: Scenario) -> str:
    duplicates = "dup" if scenario.duplicates else "once"
    return f"{scenario.point}-{duplicates}-{scenario.order}-w{scenario.workers}"


def arrange(events: list[Upload], scenario: Scenario, seed: int) -> list[Upload]:
    arranged = list(events)
    if scenario.duplicates:
        arranged += events[::2]
    if scenario.order == "reverse":
        arranged.reverse()
    elif scenario.order == "shuffle":
        random.Random(seed).shuffle(arranged)
    return arranged


def deliver_batch(harness: Harness, bodies: Sequence[str]) -> list[str]:
    """Invoke the handler; a crash fails the whole batch, as Lambda does."""
    try:
        return harness.deliver_bodies(bodies)
    except faults.InjectedFault:
        return list(bodies)


def deliver_all(
    harness: Harness, batches: list[list[str]], workers: int
) -> list[list[str]]:
    if workers == 1:
        retries = [deliver_batch(harness, batch) for batch in batches]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            retries = list(
                pool.map(lambda batch: deliver_batch(harness, batch), batches)
            )
    return [batch for batch in retries if batch]


def recover(harness: Harness, pending: list[list[str]], round_number: int) -> None:
    """Redeliver failed batches and sweep past the lease until the round settles."""
    for _ in range(MAX_RECOVERY_PASSES):
        pending = deliver_all(harness, pending, 1)
        lease_over = time.time() + harness.config.lease_seconds + 1
        with contextlib.suppress(faults.InjectedFault):
            harness.sweep(lease_over)
        if not pending and is_settled(harness, round_number):
            return
    raise AssertionError(
        f"round {round_number} did not settle: {harness.state(round_number)}"
    )


def round_events(harness: Harness) -> tuple[list[Upload], list[Upload]]:
    """Four valid devices (target 4), a NaN update and a second upload by dev-0."""
    valid = [
        harness.upload(f"dev-{index}", num_examples=index + 1) for index in range(4)
    ]
    nan = harness.delta()
    name = sorted(nan)[0]
    nan[name] = nan[name].copy()
    nan[name].flat[0] = np.nan
    invalid = [
        harness.upload("dev-nan", tensors=nan),
        harness.upload("dev-0", num_examples=99),
    ]
    return valid, invalid


@pytest.mark.parametrize("scenario", SCENARIOS, ids=scenario_id)
def test_crash_recovers(
    make_harness: Callable[..., Harness], scenario: Scenario
) -> None:
    harness = make_harness(target_updates=4, min_updates=2)
    valid, invalid = round_events(harness)
    events = arrange(valid + invalid, scenario, seed=len(scenario.point))
    bodies = [harness.body(upload) for upload in events]
    batches = [bodies[i : i + BATCH_SIZE] for i in range(0, len(bodies), BATCH_SIZE)]
    faults.arm(scenario.point)
    pending = deliver_all(harness, batches, scenario.workers)
    recover(harness, pending, 1)
    faults.disarm_all()

    accepted = harness.state(1)["accepted"]
    second = invalid[1]
    first_of_dev0 = valid[0] if accepted["dev-0"]["key"] == valid[0].key else second
    other_of_dev0 = second if first_of_dev0 is valid[0] else valid[0]
    counted = [first_of_dev0, *valid[1:]]
    assert harness.state(1)["status"] == "published"
    assert harness.rejection(1, other_of_dev0.key)["reason"] in (
        "duplicate_device",
        "stale_round",
    )
    assert harness.rejection(1, invalid[0].key)["reason"] in (
        "non_finite",
        "stale_round",
    )
    stored = harness.model(2)
    for name, array in expected_model(harness.base, counted).items():
        np.testing.assert_allclose(stored[name], array, rtol=0, atol=1e-6)
    check_all(harness, valid + invalid, [upload.key for upload in counted])


def test_scenario_count() -> None:
    assert len(SCENARIOS) >= 30
    assert {scenario.point for scenario in SCENARIOS} == set(faults.POINTS)


class Pause:
    """Block one thread at a failure point until the test releases it."""

    def __init__(self, point: str, thread_name: str) -> None:
        self.point = point
        self.thread_name = thread_name
        self.reached = threading.Event()
        self.release = threading.Event()
        self.original = faults.check

    def __call__(self, point: str) -> None:
        if point == self.point and threading.current_thread().name == self.thread_name:
            self.reached.set()
            assert self.release.wait(30)
        self.original(point)


CLOSER_POINTS = [
    "after_claim_close",
    "after_write_model",
    "after_register",
    "after_move_pointer",
    "before_mark_published",
]


@pytest.mark.parametrize("point", CLOSER_POINTS)
def test_zombie_closer_harmless(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """A closer stalled past its lease is taken over and later changes nothing."""
    uploads = [harness.upload(f"dev-{index}") for index in range(3)]
    harness.deliver(*uploads[:2])
    pause = Pause(point, "zombie")
    monkeypatch.setattr(faults, "check", pause)
    result: list[Any] = []
    zombie = threading.Thread(
        target=lambda: result.append(harness.deliver(uploads[2])), name="zombie"
    )
    zombie.start()
    try:
        assert pause.reached.wait(30)
        owner = harness.state(1)["closing"]["owner"]
        harness.sweep(time.time() + harness.config.lease_seconds + 1)
    finally:
        pause.release.set()
        zombie.join(30)
    assert harness.state(1)["status"] == "published"
    assert harness.state(1)["closing"]["owner"] != owner
    assert harness.state(1)["closing"]["takeovers"] == 1
    assert result == [[]]
    check_all(harness, uploads, [upload.key for upload in uploads])


def test_concurrent_batches_one_close(harness: Harness) -> None:
    """Six devices in three concurrent batches, target 3: one claim, one publish."""
    uploads = [harness.upload(f"dev-{index}") for index in range(6)]
    batches = [[harness.body(u) for u in uploads[i : i + 2]] for i in range(0, 6, 2)]
    start = threading.Barrier(3)

    def run(batch: list[str]) -> list[str]:
        start.wait()
        return harness.deliver_bodies(batch)

    with ThreadPoolExecutor(max_workers=3) as pool:
        failures = list(pool.map(run, batches))
    assert failures == [[], [], []]
    body = harness.state(1)
    counted = [upload for upload in uploads if upload.device in body["accepted"]]
    late = [upload for upload in uploads if upload.device not in body["accepted"]]
    assert len(counted) >= 3
    for upload in late:
        assert harness.rejection(1, upload.key)["reason"] == "stale_round"
    check_all(harness, uploads, [upload.key for upload in counted])


def test_takeover_only_after_lease(harness: Harness) -> None:
    uploads = [harness.upload(f"dev-{index}") for index in range(3)]
    faults.arm("after_claim_close")
    with pytest.raises(faults.InjectedFault):
        harness.deliver(*uploads)
    claim = harness.state(1)["closing"]
    assert closer.take_over(harness.config, 1, claim["lease_expires"] - 0.5) is None
    assert harness.state(1)["status"] == state.CLOSING
    assert harness.sweep(claim["lease_expires"]) == "closed"
    check_all(harness, uploads, [upload.key for upload in uploads])


def test_stuck_behind_pointer_finished(harness: Harness) -> None:
    """A closer that dies after moving the pointer is finished by the sweep."""
    uploads = [harness.upload(f"dev-{index}") for index in range(3)]
    faults.arm("before_mark_published")
    with pytest.raises(faults.InjectedFault):
        harness.deliver(*uploads)
    assert harness.pointer()["round"] == 2
    assert harness.state(1)["status"] == state.CLOSING
    assert harness.deliver(*uploads) == []
    lease_over = time.time() + harness.config.lease_seconds + 1
    harness.sweep(lease_over)
    assert harness.state(1)["status"] == state.PUBLISHED
    check_all(harness, uploads, [upload.key for upload in uploads])
