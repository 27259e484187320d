"""Differential privacy in the demo: its options, Poisson sampling and round configs.

Central DP (``--dp-noise``) runs the strategy ``dp_fedavg``. Its epsilon holds only
if devices are drawn by Poisson sampling and a round never closes early on a fixed
count. So each round, before it opens, the demo draws every device independently
with probability ``q`` and writes ``config/round.json`` with ``target_updates`` and
``min_updates`` both equal to the number drawn, and only the drawn devices train.
The draws come from a generator seeded by ``--seed``, so a run's participants are
reproducible. A deployment must draw with a coin that nobody can predict or bias.

A round with nobody drawn is written with target and minimum 1 and a 1 s deadline,
nobody uploads, and the sweep abandons it. Redrawing instead would bias the sample.

NOTE: the accountant assumes every round publishes ``noise / (q N)`` even when
nobody was drawn, but the aggregator cannot close a round without updates, so an
empty round is abandoned. Whether a round was abandoned then reveals that nobody
was drawn, an event of probability ``(1 - q)^N`` per round that the reported
epsilon does not cover (about 1e-3 for 10 devices at q = 0.5, 2e-10 for 100 at
q = 0.2).

Local DP (``--local-dp-noise``, ``--local-dp-clip``) wraps each device's trainer in
:class:`edge_client.local_dp.LocalDpTrainer`, whose noise is seeded from
:mod:`secrets`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import numpy as np

from edge_client.local_dp import LocalDpTrainer, local_epsilon
from edge_client.trainers import Trainer
from fedcore import layout
from fedcore.round_config import RoundConfig
from fedcore.strategies import Strategy, resolve

# Added to --seed for the sampling generator, so the draws do not repeat the
# sequence of the data split or the model initialization.
SAMPLING_SEED_OFFSET = 7919
EMPTY_ROUND_DEADLINE_SECONDS = 1


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add the demo's differential privacy options."""
    group = parser.add_argument_group("differential privacy")
    group.add_argument(
        "--dp-noise",
        type=float,
        default=None,
        metavar="Z",
        help="turn on central DP-FedAvg with this noise multiplier z (noise standard "
        "deviation over the clip norm)",
    )
    group.add_argument(
        "--dp-clip",
        type=float,
        default=0.3,
        metavar="C",
        help="L2 clip norm of each device's delta (the starting norm with "
        "--dp-adaptive-clip)",
    )
    group.add_argument(
        "--dp-sampling-rate",
        type=float,
        default=0.2,
        metavar="Q",
        help="probability that each device takes part in a round (Poisson sampling)",
    )
    group.add_argument(
        "--dp-delta", type=float, default=1e-5, help="delta at which epsilon is given"
    )
    group.add_argument(
        "--dp-epsilon-budget",
        type=float,
        default=0.0,
        help="stop publishing before epsilon would exceed this; 0 for no budget",
    )
    group.add_argument(
        "--dp-adaptive-clip",
        action="store_true",
        help="let the clip norm follow the median update norm (Andrew et al. 2021)",
    )
    group.add_argument(
        "--local-dp-noise",
        type=float,
        default=None,
        metavar="Z",
        help="turn on local DP on every device with this noise multiplier",
    )
    group.add_argument(
        "--local-dp-clip",
        type=float,
        default=0.3,
        metavar="C",
        help="L2 clip norm of each device's delta under local DP",
    )


def central_strategy(args: argparse.Namespace) -> Strategy | None:
    """Return the ``dp_fedavg`` strategy of the options, or None without --dp-noise.

    With adaptive clipping the count of unclipped updates gets noise of standard
    deviation ``max(q N / 20, z)``: Andrew et al. suggest ``q N / 20``, and it must
    exceed ``z / 2``.

    Raises
    ------
    fedcore.strategies.StrategyError
        If a value is out of range.
    """
    if args.dp_noise is None:
        return None
    expected = args.dp_sampling_rate * args.devices
    params: dict[str, float] = {
        "clip_norm": args.dp_clip,
        "noise_multiplier": args.dp_noise,
        "population": args.devices,
        "sampling_rate": args.dp_sampling_rate,
        "delta": args.dp_delta,
        "epsilon_budget": args.dp_epsilon_budget,
    }
    if args.dp_adaptive_clip:
        params["adaptive"] = 1
        params["count_stddev"] = max(expected / 20, args.dp_noise)
    return resolve("dp_fedavg", params)


def local_trainer(trainer: Trainer, args: argparse.Namespace) -> Trainer:
    """Wrap ``trainer`` in local DP when --local-dp-noise is given."""
    if args.local_dp_noise is None:
        return trainer
    return LocalDpTrainer(
        trainer, clip_norm=args.local_dp_clip, noise_multiplier=args.local_dp_noise
    )


class PoissonSampler:
    """Draws each round's participants: every device independently with rate ``q``.

    Parameters
    ----------
    devices
        Population size N.
    rate
        Sampling rate q.
    seed
        Seed of the demo run; the draws are reproducible from it.
    """

    def __init__(self, devices: int, rate: float, seed: int) -> None:
        self.devices = devices
        self.rate = rate
        self._rng = np.random.default_rng(seed + SAMPLING_SEED_OFFSET)
        self.participations = [0] * devices
        self.pending: list[int] = []

    def draw(self) -> list[int]:
        """Draw the devices of the next round and keep them as :attr:`pending`."""
        coins = self._rng.random(self.devices) < self.rate
        self.pending = [int(index) for index in np.flatnonzero(coins)]
        return self.pending

    def take(self) -> list[int]:
        """Return the pending draw for the round that starts, counting its uploads."""
        for index in self.pending:
            self.participations[index] += 1
        return self.pending


def wait_for_round_state(
    s3: Any, bucket: str, round_number: int, timeout: float
) -> dict[str, Any]:
    """Wait until round ``round_number`` has opened; return its state document.

    Raises
    ------
    TimeoutError
        If the round does not open within ``timeout`` seconds.
    """
    key = layout.round_state_key(round_number)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except s3.exceptions.NoSuchKey:
            time.sleep(0.05)
            continue
        document: dict[str, Any] = json.loads(body)
        return document
    raise TimeoutError(f"round {round_number} did not open within {timeout} s")


def round_document(
    drawn: int, strategy: Strategy, deadline_seconds: int
) -> dict[str, Any]:
    """Build ``config/round.json`` for a round with ``drawn`` participants."""
    if drawn == 0:
        return RoundConfig(
            target_updates=1,
            min_updates=1,
            deadline_seconds=EMPTY_ROUND_DEADLINE_SECONDS,
            strategy=strategy.name,
            strategy_params=dict(strategy.params),
        ).to_document()
    return RoundConfig(
        target_updates=drawn,
        min_updates=drawn,
        deadline_seconds=deadline_seconds,
        strategy=strategy.name,
        strategy_params=dict(strategy.params),
    ).to_document()


def write_round_config(s3: Any, bucket: str, document: dict[str, Any]) -> None:
    """Write ``config/round.json``; the aggregator applies it to the next round."""
    s3.put_object(
        Bucket=bucket,
        Key=layout.ROUND_CONFIG_KEY,
        Body=json.dumps(document, sort_keys=True).encode(),
        ContentType="application/json",
    )


def report_section(
    args: argparse.Namespace,
    strategy: Strategy | None,
    rows: list[dict[str, Any]],
    sampler: PoissonSampler | None,
) -> dict[str, Any]:
    """Return the privacy fields of the run report; {} with no DP option."""
    section: dict[str, Any] = {}
    if strategy is not None:
        epsilons = [row["epsilon"] for row in rows if row.get("epsilon") is not None]
        section["epsilon"] = epsilons[-1] if epsilons else 0.0
        section["delta"] = args.dp_delta
        section["dp_settings"] = {
            "noise_multiplier": args.dp_noise,
            "clip_norm": args.dp_clip,
            "sampling_rate": args.dp_sampling_rate,
            "population": args.devices,
            "epsilon_budget": args.dp_epsilon_budget,
            "adaptive_clip": args.dp_adaptive_clip,
            "count_stddev": strategy.params["count_stddev"],
            "sampling_seed": args.seed + SAMPLING_SEED_OFFSET,
            "budget_exhausted": any(row.get("budget_exhausted") for row in rows),
        }
    if args.local_dp_noise is not None:
        uploads = max(sampler.participations) if sampler else len(rows)
        section["local_dp"] = {
            "noise_multiplier": args.local_dp_noise,
            "clip_norm": args.local_dp_clip,
            "max_uploads_per_device": uploads,
            "epsilon_per_device": local_epsilon(args.local_dp_noise, uploads, 1e-5)
            if uploads
            else 0.0,
            "delta": 1e-5,
        }
    return section


def check_options(args: argparse.Namespace) -> str | None:
    """Return an error message for invalid DP options, or None."""
    checks = [
        ("--dp-noise", args.dp_noise, args.dp_noise is None or args.dp_noise > 0),
        ("--dp-clip", args.dp_clip, args.dp_clip > 0),
        ("--dp-sampling-rate", args.dp_sampling_rate, 0 < args.dp_sampling_rate <= 1),
        ("--dp-delta", args.dp_delta, 0 < args.dp_delta < 1),
        ("--dp-epsilon-budget", args.dp_epsilon_budget, args.dp_epsilon_budget >= 0),
        (
            "--local-dp-noise",
            args.local_dp_noise,
            args.local_dp_noise is None or args.local_dp_noise > 0,
        ),
        ("--local-dp-clip", args.local_dp_clip, args.local_dp_clip > 0),
    ]
    for option, value, valid in checks:
        if not valid or (isinstance(value, float) and not math.isfinite(value)):
            return f"{option} {value} is out of range: see --help"
    if args.dp_noise is not None and args.strategy not in (None, "dp_fedavg"):
        return (
            f"--dp-noise runs dp_fedavg and cannot be used with --strategy "
            f"{args.strategy}"
        )
    return None
