"""Measure the privacy/utility frontier of DP-FedAvg on the digits data.

Usage: ``python -m benchmarks.privacy [--rounds 200] [--seeds 3] [--output FILE]``.
``make privacy`` runs it in the environment that also has dp-accounting and writes
``docs/privacy.md``.

The federation is simulated in process with the real core functions
(:class:`fedcore.privacy.DpSum`, :class:`fedcore.privacy.AdaptiveClip`,
:func:`fedcore.aggregation.apply_delta`, :class:`fedcore.accounting.RdpAccountant`,
:class:`edge_client.trainers.NumpyTrainer` and
:class:`edge_client.local_dp.LocalDpTrainer`); it does not go through the embedded
AWS. Every round, each of the devices takes part independently with the sampling
rate (Poisson sampling), as the accountant assumes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import cpu_model
from edge_client.local_dp import LocalDpTrainer, local_epsilon
from edge_client.trainers import NumpyTrainer
from fedcore import models
from fedcore.accounting import PrivacyBudget, RdpAccountant, RoundEvent
from fedcore.aggregation import WeightedMean, apply_delta
from fedcore.privacy import (
    AdaptiveClip,
    DpSum,
    secure_rng,
    sum_noise_multiplier,
)
from fedcore.update import specs_of
from local_aws.dataset import FederatedDigits, federated_digits

HIDDEN_UNITS = 32
LOCAL_EPOCHS = 5
BATCH_SIZE = 16
LEARNING_RATE = 0.1


@dataclass(frozen=True)
class Setting:
    """One federation to run: how updates are aggregated and noised."""

    label: str
    kind: str  # "fedavg", "central", "adaptive" or "local"
    noise_multiplier: float = 0.0


@dataclass(frozen=True)
class Options:
    """Shared settings of every run."""

    devices: int
    participants: int
    rounds: int
    alpha: float
    clip_norm: float
    delta: float
    checkpoints: tuple[int, ...]

    @property
    def sampling_rate(self) -> float:
        """Probability that a device takes part in a round."""
        return self.participants / self.devices


def trained_delta(
    trainer: NumpyTrainer | LocalDpTrainer,
    model: dict[str, np.ndarray],
    data: FederatedDigits,
    device: int,
) -> dict[str, np.ndarray]:
    """Train from the global model on one device; return weights minus global."""
    x, y = data.device_data(device)
    trainer.set_weights(model)
    trainer.fit(x, y)
    trained = trainer.get_weights()
    return {name: trained[name].astype(np.float64) - model[name] for name in model}


def run(setting: Setting, options: Options, seed: int) -> dict[str, Any]:
    """Run one federation; return holdout accuracy and clip norm at the checkpoints."""
    data = federated_digits(devices=options.devices, alpha=options.alpha, seed=seed)
    model = models.init_model(
        "mlp",
        input_dim=data.train_x.shape[1],
        hidden_units=HIDDEN_UNITS,
        classes=10,
        seed=seed,
    )
    trainer = NumpyTrainer(
        epochs=LOCAL_EPOCHS,
        batch_size=BATCH_SIZE,
        learning_rate=LEARNING_RATE,
        seed=seed,
    )
    device_trainer: NumpyTrainer | LocalDpTrainer = trainer
    if setting.kind == "local":
        device_trainer = LocalDpTrainer(
            trainer,
            clip_norm=options.clip_norm,
            noise_multiplier=setting.noise_multiplier,
            seed=seed + 1000,
        )
    sampler = np.random.default_rng(seed + 2000)
    # A fixed seed makes the simulation repeatable; production uses secure_rng().
    noise = secure_rng(seed + 3000)
    adaptive = AdaptiveClip(clip_norm=0.1, count_stddev=options.participants / 20)
    expected = float(options.participants)

    accuracy: dict[int, float] = {}
    clip_norms: dict[int, float] = {}
    for round_number in range(1, options.rounds + 1):
        chosen = np.flatnonzero(sampler.random(options.devices) < options.sampling_rate)
        if setting.kind in ("fedavg", "local"):
            mean = WeightedMean(specs_of(model))
            for device in chosen:
                delta = trained_delta(device_trainer, model, data, int(device))
                weight = len(data.shards[device]) if setting.kind == "fedavg" else 1
                mean.add(delta, float(weight))

            if mean.count:
                model = apply_delta(model, mean.result())
        else:
            clip_norm = (
                adaptive.clip_norm if setting.kind == "adaptive" else options.clip_norm
            )
            dp_sum = DpSum(specs_of(model), clip_norm)
            for device in chosen:
                dp_sum.add(trained_delta(device_trainer, model, data, int(device)))
            noise_multiplier = setting.noise_multiplier
            if setting.kind == "adaptive":
                noise_multiplier = sum_noise_multiplier(
                    setting.noise_multiplier, adaptive.count_stddev
                )
            model = apply_delta(
                model,
                dp_sum.finalize(
                    expected_weight=expected,
                    noise_multiplier=noise_multiplier,
                    rng=noise,
                ),
            )
            if setting.kind == "adaptive":
                adaptive = adaptive.next(
                    unclipped_count=dp_sum.unclipped_count,
                    count=dp_sum.count,
                    expected_participants=expected,
                    rng=noise,
                )

        if round_number in options.checkpoints:
            _, accuracy[round_number] = models.evaluate(
                model, data.holdout_x, data.holdout_y
            )
            clip_norms[round_number] = adaptive.clip_norm
    return {"accuracy": accuracy, "clip_norm": clip_norms}


def epsilon_of(setting: Setting, options: Options, rounds: int) -> float:
    """Return the device-level epsilon at ``options.delta`` after ``rounds``."""
    if setting.kind == "fedavg" or setting.noise_multiplier == 0:
        return math.inf
    if setting.kind == "local":
        # A device's local guarantee composes over its own uploads: q * rounds of
        # them on average.
        uploads = max(1, round(options.sampling_rate * rounds))
        return local_epsilon(setting.noise_multiplier, uploads, options.delta)
    accountant = RdpAccountant()
    accountant.compose(
        RoundEvent(options.sampling_rate, setting.noise_multiplier), rounds
    )
    return accountant.epsilon(options.delta)


def library_epsilon(setting: Setting, options: Options, rounds: int) -> float | None:
    """Return dp-accounting's epsilon for the same rounds, or None without it."""
    try:
        import dp_accounting  # type: ignore[import-not-found]  # noqa: PLC0415
    except ImportError:
        return None
    if setting.kind != "central" or setting.noise_multiplier == 0:
        return None
    # dp-accounting warns through absl for every order it leaves out.
    logging.getLogger("absl").setLevel(logging.ERROR)
    event = dp_accounting.PoissonSampledDpEvent(
        options.sampling_rate, dp_accounting.GaussianDpEvent(setting.noise_multiplier)
    )
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return float(accountant.get_epsilon(options.delta))


def describe_machine() -> str:
    """Return the CPU model, core count and Python version."""
    model = cpu_model() or platform.processor() or platform.machine()
    return (
        f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"numpy {np.__version__}"
    )


def format_epsilon(value: float) -> str:
    """Format epsilon to three significant figures; infinity as a sign."""
    return "∞" if math.isinf(value) else f"{value:.3g}"


def format_accuracy(values: Sequence[float]) -> str:
    """Format the mean and standard deviation over seeds."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def frontier_table(
    settings: Sequence[Setting],
    results: dict[str, list[dict[str, Any]]],
    options: Options,
) -> list[str]:
    """Render accuracy and epsilon at every checkpoint, one row per setting."""
    header = "| setting | z |"
    rule = "| --- | --- |"
    for checkpoint in options.checkpoints:
        header += f" accuracy @{checkpoint} | ε @{checkpoint} |"
        rule += " --- | --- |"
    lines = [header, rule]
    for setting in settings:
        noise = "-" if setting.kind == "fedavg" else f"{setting.noise_multiplier:g}"
        row = f"| {setting.label} | {noise} |"
        for checkpoint in options.checkpoints:
            accuracies = [run["accuracy"][checkpoint] for run in results[setting.label]]
            epsilon = epsilon_of(setting, options, checkpoint)
            row += f" {format_accuracy(accuracies)} | {format_epsilon(epsilon)} |"
        lines.append(row)
    return lines


def library_table(settings: Sequence[Setting], options: Options) -> list[str]:
    """Render our epsilon beside dp-accounting's, when it is installed."""
    lines = [
        "| z | rounds | ε (fedcore.accounting) | ε (dp-accounting RdpAccountant) |",
        "| --- | --- | --- | --- |",
    ]
    for setting in settings:
        for checkpoint in options.checkpoints:
            reference = library_epsilon(setting, options, checkpoint)
            if reference is None:
                continue
            ours = epsilon_of(setting, options, checkpoint)
            lines.append(
                f"| {setting.noise_multiplier:g} | {checkpoint} | {ours:.10g} | "
                f"{reference:.10g} |"
            )
    return lines if len(lines) > 2 else []


def population_table(options: Options) -> list[str]:
    """Render epsilon for larger populations with the same noise on the mean.

    The noise standard deviation on the mean is ``z C / (q N)``. Keeping ``z / (q
    N)`` at its value for ``z = 1`` and ``q N = participants`` leaves the noise
    added to the model unchanged while the population grows.
    """
    lines = [
        "| population N | participants per round qN | z | "
        f"ε after {options.rounds} rounds |",
        "| --- | --- | --- | --- |",
    ]
    for population, participants in (
        (options.devices, options.participants),
        (10_000, 200),
        (100_000, 1_000),
        (1_000_000, 5_000),
    ):
        noise_multiplier = participants / options.participants
        accountant = RdpAccountant()
        accountant.compose(
            RoundEvent(participants / population, noise_multiplier), options.rounds
        )
        lines.append(
            f"| {population:,} | {participants:,} | {noise_multiplier:g} | "
            f"{format_epsilon(accountant.epsilon(options.delta))} |"
        )
    return lines


def budget_table(settings: Sequence[Setting], options: Options) -> list[str]:
    """Render how many rounds fit in a few epsilon budgets."""
    budgets = (1.0, 3.0, 8.0)
    lines = [
        "| z | " + " | ".join(f"rounds within ε ≤ {b:g}" for b in budgets) + " |",
        "| --- |" + " --- |" * len(budgets),
    ]
    for setting in settings:
        if setting.kind != "central" or setting.noise_multiplier == 0:
            continue
        event = RoundEvent(options.sampling_rate, setting.noise_multiplier)
        counts = [
            PrivacyBudget(budget, options.delta).rounds_left(event, limit=100_000)
            for budget in budgets
        ]
        lines.append(
            f"| {setting.noise_multiplier:g} | "
            + " | ".join(f"{count:,}" for count in counts)
            + " |"
        )
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200, help="rounds per run")
    parser.add_argument("--seeds", type=int, default=3, help="runs per setting")
    parser.add_argument("--devices", type=int, default=100, help="population N")
    parser.add_argument(
        "--participants", type=int, default=20, help="expected participants qN"
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet skew")
    parser.add_argument(
        "--clip-norm", type=float, default=0.3, help="fixed clip norm C (L2)"
    )
    parser.add_argument(
        "--noise",
        type=float,
        nargs="+",
        default=[0.5, 1.0, 2.0, 4.0],
        help="noise multipliers z of the central DP runs",
    )
    parser.add_argument("--delta", type=float, default=1e-5, help="target delta")
    parser.add_argument(
        "--output", type=Path, default=Path("docs/privacy.md"), help="Markdown page"
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every setting and write the results page."""
    args = parse_args(argv)
    checkpoints = tuple(
        sorted({max(1, args.rounds // 4), max(1, args.rounds // 2), args.rounds})
    )
    options = Options(
        devices=args.devices,
        participants=args.participants,
        rounds=args.rounds,
        alpha=args.alpha,
        clip_norm=args.clip_norm,
        delta=args.delta,
        checkpoints=checkpoints,
    )
    settings = [
        Setting("FedAvg weighted by examples, no DP", "fedavg"),
        Setting("DP-FedAvg, clipping only", "central", 0.0),
        *(Setting(f"DP-FedAvg z={z:g}", "central", z) for z in args.noise),
        Setting("DP-FedAvg z=1, adaptive clip", "adaptive", 1.0),
        Setting("local DP z=1 on each device", "local", 1.0),
    ]
    results: dict[str, list[dict[str, Any]]] = {}
    started = time.perf_counter()
    for setting in settings:
        results[setting.label] = [
            run(setting, options, seed) for seed in range(args.seeds)
        ]
        accuracies = [r["accuracy"][args.rounds] for r in results[setting.label]]
        print(
            f"{setting.label}: accuracy {format_accuracy(accuracies)} after "
            f"{args.rounds} rounds ({time.perf_counter() - started:.0f} s so far)",
            flush=True,
        )
    wall = time.perf_counter() - started
    args.output.write_text(render(settings, results, options, args, wall), "utf-8")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(f"wrote {args.output} in {wall:.0f} s")
    return 0


def final_accuracy(runs: list[dict[str, Any]], rounds: int) -> float:
    """Return the mean holdout accuracy over seeds after ``rounds``."""
    return float(statistics.mean(run["accuracy"][rounds] for run in runs))


def findings(
    settings: Sequence[Setting],
    results: dict[str, list[dict[str, Any]]],
    options: Options,
) -> list[str]:
    """State what the frontier table shows, from the measured numbers."""
    rounds = options.rounds
    baseline = final_accuracy(results[settings[0].label], rounds)
    lines = [
        f"- The non-private FedAvg run reaches {baseline:.3f} after {rounds} rounds."
    ]
    for setting in settings:
        if setting.kind not in ("central", "adaptive"):
            continue
        accuracy = final_accuracy(results[setting.label], rounds)
        epsilon = epsilon_of(setting, options, rounds)
        lines.append(
            f"- {setting.label}: {accuracy:.3f} ({accuracy - baseline:+.3f} against "
            f"FedAvg) at ε = {format_epsilon(epsilon)}, δ = {options.delta:g}."
        )
    private = [
        (epsilon_of(s, options, rounds), final_accuracy(results[s.label], rounds))
        for s in settings
        if s.kind in ("central", "adaptive") and s.noise_multiplier > 0
    ]
    for limit in (1.0, 8.0):
        within = [accuracy for epsilon, accuracy in private if epsilon <= limit]
        if within:
            lines.append(
                f"- The best accuracy measured at ε ≤ {limit:g} after {rounds} "
                f"rounds is {max(within):.3f}."
            )
        else:
            lines.append(
                f"- No measured setting stays within ε ≤ {limit:g} over {rounds} "
                "rounds."
            )
    return lines


def render(
    settings: Sequence[Setting],
    results: dict[str, list[dict[str, Any]]],
    options: Options,
    args: argparse.Namespace,
    wall: float,
) -> str:
    """Render the results page."""
    adaptive_clips = [
        run["clip_norm"][options.rounds]
        for setting in settings
        if setting.kind == "adaptive"
        for run in results[setting.label]
    ]
    library = library_table(settings, options)
    command = "python -m benchmarks.privacy " + " ".join(
        [
            f"--rounds {args.rounds}",
            f"--seeds {args.seeds}",
            f"--devices {args.devices}",
            f"--participants {args.participants}",
            f"--alpha {args.alpha:g}",
            f"--clip-norm {args.clip_norm:g}",
            "--noise " + " ".join(f"{z:g}" for z in args.noise),
            f"--delta {args.delta:g}",
        ]
    )
    parts = [
        "# Differential privacy: measured privacy and accuracy",
        "",
        "This page is generated by `make privacy` (`benchmarks/privacy.py`); edit",
        "the script, not the page.",
        "",
        "## Setup",
        "",
        f"- Data: scikit-learn's digits, 20% held out by the server, the rest split "
        f"over N = {options.devices} devices with Dirichlet({options.alpha:g}) "
        "label skew (`local_aws.dataset.federated_digits`).",
        f"- Model: the `mlp` of `fedcore.models` (64-{HIDDEN_UNITS}-10); each "
        f"device trains {LOCAL_EPOCHS} epochs of SGD, batch {BATCH_SIZE}, learning "
        f"rate {LEARNING_RATE} (`NumpyTrainer`).",
        f"- Sampling: every round each device takes part independently with "
        f"probability q = {options.sampling_rate:g} (Poisson sampling, "
        f"{options.participants} expected participants).",
        f"- {options.rounds} rounds, {args.seeds} seeds (seed s fixes the split, "
        "the initial model, the sampling and the noise); accuracy is on the "
        "holdout, mean ± standard deviation over seeds.",
        f"- DP-FedAvg: each delta clipped to L2 norm C = {options.clip_norm:g}, "
        "summed with equal weights, Gaussian noise of standard deviation z·C added "
        f"once to the sum, divided by qN = {options.participants} "
        "(`fedcore.privacy.DpSum`). The clip norm was picked near the median "
        "update norm of a non-private run, which a real deployment could not do "
        "without spending privacy; the adaptive run needs no such choice.",
        "- Adaptive clip: starts at C = 0.1 and follows the median update norm "
        "(target quantile 0.5, learning rate 0.2, count noise "
        f"standard deviation {options.participants / 20:g}); the sum's noise "
        "multiplier is "
        "raised so that sum and count together have z = 1.",
        "- Local DP: each device clips its own delta to C and adds noise z·C before "
        "upload (`edge_client.local_dp.LocalDpTrainer`); the server takes the plain "
        "mean. Its ε is per device, over the q·rounds uploads a device makes on "
        "average, with no amplification by sampling.",
        "- ε is device-level (adding or removing one device's whole data), from "
        "`fedcore.accounting.RdpAccountant` at δ = "
        f"{options.delta:g}.",
        "- The federation runs in process with the real core functions; it does "
        "not go through the embedded AWS.",
        "",
        "ε holds only if the deployment samples as the accountant assumes: each "
        "round, every device is selected independently with probability q by a "
        "coin that devices cannot bias, updates from devices not selected are "
        "rejected, a round never closes early on a fixed count of updates, and "
        "each person is one device. The noise is sampled in floating point, "
        "whose known low-order-bit leaks the accounting ignores.",
        "",
        "## Accuracy against ε",
        "",
        *frontier_table(settings, results, options),
        "",
        *findings(settings, results, options),
    ]
    if adaptive_clips:
        parts += [
            f"- The adaptive clip norm ended at "
            f"{statistics.mean(adaptive_clips):.3g} on average over seeds.",
        ]
    parts += [
        "",
        f"With {options.devices} devices the noise on the mean is z·C/(qN) with "
        f"only qN = {options.participants} participants a round, so accuracy "
        "stays high only for a small z, and every round spends privacy at a "
        f"sampling rate of {options.sampling_rate:g}. The same noise on the mean "
        "costs far less ε in a larger population, as the next table shows.",
        "",
        "## Larger populations (accounting only, no training)",
        "",
        "Keeping z/(qN) fixed keeps the noise on the mean the same as in the z = 1 "
        "run above, so the model gets the same noise, while ε drops with the "
        "sampling rate and the larger z:",
        "",
        *population_table(options),
        "",
        "## Rounds within a budget",
        "",
        "`fedcore.accounting.PrivacyBudget.would_exceed` turns true at the first "
        "round that would take ε over the budget; at q = "
        f"{options.sampling_rate:g} and δ = {options.delta:g}:",
        "",
        *budget_table(settings, options),
        "",
    ]
    if library:
        parts += [
            "## Cross-check with dp-accounting",
            "",
            "The same rounds through `dp_accounting.rdp.RdpAccountant` "
            "(dp-accounting 0.6.0, default orders):",
            "",
            *library,
            "",
        ]
    parts += [
        "## Run",
        "",
        f"`{command}`, {wall:.0f} s on {describe_machine()}, "
        f"{datetime.date.today().isoformat()}.",
        "",
        "How to run DP-FedAvg in the aggregator and the demo: "
        "[dp-fedavg.md](dp-fedavg.md).",
        "",
    ]
    return "\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
