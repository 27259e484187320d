"""The main job: federated training end to end on the embedded AWS, on real digits.

Devices run the real edge client concurrently, S3 events reach SQS inside moto, and
the real aggregator handler publishes, registers and reports every round. The run
ends with a JSON report and a PNG plot, and their paths are printed. With
``--dp-noise`` the rounds run DP-FedAvg on Poisson-sampled devices
(:mod:`local_aws.privacy_demo`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edge_client.client import EdgeClient
from edge_client.trainers import NumpyTrainer
from fedcore import models
from fedcore.arguments import (
    Parser,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from fedcore.errors import FedCoreError
from fedcore.strategies import (
    PARAMETERS,
    Strategy,
    StrategyError,
    least_updates,
    resolve,
)
from infra.config import DeploymentSettings, SettingsError, load_settings
from local_aws import privacy_demo, report
from local_aws.attacks import ATTACKS, make_trainer
from local_aws.dataset import FederatedDigits, federated_digits
from local_aws.federation import (
    LocalFederation,
    run_federation,
    serve_until_interrupted,
    with_round_settings,
)

logger = logging.getLogger(__name__)

ROUND_TIMEOUT_SECONDS = 120.0
# Shorter than the wait above: a round where some updates were rejected cannot reach
# its target, so it closes (or is abandoned) at this deadline and the run goes on.
# A round without rejections closes at its target within seconds.
ROUND_DEADLINE_SECONDS = 60


def build_parser() -> argparse.ArgumentParser:
    """Describe the demo's command-line options."""
    parser = Parser(
        prog="sfl demo",
        description="Run federated training on the embedded AWS (no AWS account).",
    )
    parser.add_argument("--rounds", type=positive_int, default=30, help="rounds to run")
    parser.add_argument("--devices", type=positive_int, default=20, help="devices")
    parser.add_argument(
        "--alpha",
        type=positive_float,
        default=0.5,
        help="Dirichlet concentration of the label skew; smaller is more skewed",
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of data and model"
    )
    parser.add_argument(
        "--model", choices=models.ARCHITECTURES, default="mlp", help="architecture"
    )
    parser.add_argument(
        "--local-epochs",
        type=positive_int,
        default=5,
        help="epochs per device per round",
    )
    parser.add_argument("--batch-size", type=positive_int, default=16, help="SGD batch")
    parser.add_argument(
        "--learning-rate", type=positive_float, default=0.1, help="SGD learning rate"
    )
    parser.add_argument(
        "--central-epochs",
        type=positive_int,
        default=30,
        help="epochs of the centralized baseline on the pooled training data",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=2,
        help="concurrent aggregator invocations (the function's concurrency)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("runs"),
        help="folder for the report and the plot",
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="keep the embedded AWS up after the run, for the sfl operator commands",
    )
    parser.add_argument(
        "--strategy",
        choices=sorted(PARAMETERS),
        default=None,
        help="server aggregation strategy (default: fl:strategy of cdk.json)",
    )
    parser.add_argument(
        "--strategy-param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a numeric parameter of the strategy, such as eta=0.1; repeatable",
    )
    parser.add_argument(
        "--proximal-mu",
        type=non_negative_float,
        default=None,
        help="FedProx proximal weight of every device's local objective "
        "(default: the strategy's proximal_mu with --strategy fedprox, else 0)",
    )
    parser.add_argument(
        "--malicious",
        type=int,
        default=0,
        help="number of devices, the first ones, that upload attacked updates",
    )
    parser.add_argument(
        "--attack", choices=ATTACKS, default="sign_flip", help="what they upload"
    )
    parser.add_argument(
        "--attack-scale",
        type=float,
        default=10.0,
        help="factor of sign_flip and scale, standard deviation of noise",
    )
    privacy_demo.add_options(parser)
    parser.add_argument("--verbose", action="store_true", help="log every step")
    return parser


def _strategy(args: argparse.Namespace, settings: DeploymentSettings) -> Strategy:
    """Resolve the strategy of the options, falling back to the settings' one."""
    central = privacy_demo.central_strategy(args)
    if central is not None:
        return central
    params: dict[str, float] = dict(settings.strategy_params)
    name = settings.strategy
    if args.strategy is not None and args.strategy != name:
        name = args.strategy
        params = {}
    for pair in args.strategy_param:
        key, separator, raw = pair.partition("=")
        try:
            params[key] = float(raw)
        except ValueError:
            separator = ""
        if not separator or not key:
            raise StrategyError(
                f"--strategy-param {pair!r} is invalid: expected NAME=NUMBER"
            )
    return resolve(name, params)


def _device_clients(
    federation: LocalFederation, args: argparse.Namespace, proximal_mu: float
) -> list[EdgeClient]:
    clients = []
    for index in range(args.devices):
        honest = make_trainer(
            NumpyTrainer(
                epochs=args.local_epochs,
                batch_size=args.batch_size,
                learning_rate=args.learning_rate,
                proximal_mu=proximal_mu,
                seed=args.seed * 1000 + index,
            ),
            malicious=index < args.malicious,
            attack=args.attack,
            scale=args.attack_scale,
            seed=args.seed * 1000 + index,
        )
        trainer = privacy_demo.local_trainer(honest, args)
        clients.append(
            EdgeClient(
                device_id=f"device-{index:03d}",
                updates_bucket=federation.resources.updates_bucket,
                models_bucket=federation.resources.models_bucket,
                trainer=trainer,
                s3_client=federation.s3(),
                architecture=args.model,
            )
        )
    return clients


def run(args: argparse.Namespace) -> dict[str, object] | None:
    """Run the demo and return its report."""
    started = time.monotonic()
    data = federated_digits(devices=args.devices, alpha=args.alpha, seed=args.seed)
    base = load_settings()
    strategy = _strategy(args, base)
    base = dataclasses.replace(
        base, strategy=strategy.name, strategy_params=dict(strategy.params)
    )
    proximal_mu = args.proximal_mu
    if proximal_mu is None:
        proximal_mu = strategy.params.get("proximal_mu", 0.0)
    # min_updates is at least what the strategy needs, so a round that closes at
    # its deadline can always be aggregated.
    settings = with_round_settings(
        base,
        target_updates=args.devices,
        min_updates=max(1, args.devices // 2, least_updates(strategy)),
        deadline_seconds=ROUND_DEADLINE_SECONDS,
    )
    spec = settings.model
    initial = models.init_model(
        args.model,
        input_dim=spec.input_dim,
        hidden_units=spec.hidden_units,
        classes=spec.classes,
        seed=args.seed,
    )
    print(
        f"digits: {len(data.train_y)} training examples over {args.devices} devices "
        f"(Dirichlet alpha {args.alpha}), {len(data.holdout_y)} held out by the server"
    )
    print(
        f"strategy {strategy.name} {json.dumps(dict(sorted(strategy.params.items())))}"
        f", device proximal_mu {proximal_mu:g}"
        + (
            f", {args.malicious} malicious devices ({args.attack} x "
            f"{args.attack_scale:g})"
            if args.malicious
            else ""
        )
    )
    central_dp = privacy_demo.central_strategy(args)
    sampler = (
        None
        if central_dp is None
        else privacy_demo.PoissonSampler(args.devices, args.dp_sampling_rate, args.seed)
    )
    with run_federation(settings, workers=args.workers) as federation:
        print(f"embedded AWS on {federation.aws.endpoint}")
        if sampler is not None:
            # Round 1's participants and settings, before the round can open.
            _write_sample(federation, sampler.draw(), strategy)
        federation.initialize(
            initial,
            architecture=args.model,
            holdout=(data.holdout_x, data.holdout_y),
        )
        devices = _device_clients(federation, args, proximal_mu)
        print(report.table_header(private=sampler is not None))
        with ThreadPoolExecutor(max_workers=args.devices) as pool:
            rounds_run = 0
            for round_number in range(1, args.rounds + 1):
                round_started = time.monotonic()
                chosen = list(range(args.devices))
                if sampler is not None:
                    chosen = _next_sample(federation, sampler, strategy, round_number)
                uploads = list(
                    pool.map(
                        lambda index: devices[index].train_round(
                            *data.device_data(index)
                        ),
                        chosen,
                    )
                )
                federation.wait_for_round(round_number + 1, ROUND_TIMEOUT_SECONDS)
                row = report.round_row(federation, round_number)
                row["upload_bytes"] = sum(upload.size_bytes for upload in uploads)
                row["wall_seconds"] = time.monotonic() - round_started
                print(report.format_row(row), flush=True)
                rounds_run = round_number
                if row.get("budget_exhausted"):
                    print(
                        f"round {round_number} was not published: the privacy "
                        "budget is exhausted, stopping"
                    )
                    break
        central = _centralized(initial, data, args)
        result = report.collect(federation, args, central, started, rounds=rounds_run)
        result.update(
            privacy_demo.report_section(args, central_dp, result["per_round"], sampler)
        )
        if args.serve:
            _print_result(result, args.output_dir)
            # The demo's short deadline would abandon a round a minute while the
            # federation idles, so later rounds take the configured deadline.
            federation.store_round_settings(
                deadline_seconds=base.round.deadline_seconds
            )
            serve_until_interrupted(federation)
            return None
    return result


def _write_sample(
    federation: LocalFederation, drawn: list[int], strategy: Strategy
) -> None:
    privacy_demo.write_round_config(
        federation.s3(),
        federation.resources.models_bucket,
        privacy_demo.round_document(
            len(drawn), strategy, federation.settings.round.deadline_seconds
        ),
    )


def _next_sample(
    federation: LocalFederation,
    sampler: privacy_demo.PoissonSampler,
    strategy: Strategy,
    round_number: int,
) -> list[int]:
    """Return this round's drawn devices and write the next round's settings.

    The next round's ``config/round.json`` may only be written once this round
    has opened with its own, so this waits for the round's state first.
    """
    drawn = sampler.take()
    body = privacy_demo.wait_for_round_state(
        federation.s3(),
        federation.resources.models_bucket,
        round_number,
        ROUND_TIMEOUT_SECONDS,
    )
    if int(body["target_updates"]) != max(1, len(drawn)):
        raise RuntimeError(
            f"round {round_number} opened with target_updates "
            f"{body['target_updates']}, expected the {len(drawn)} devices drawn"
        )
    _write_sample(federation, sampler.draw(), strategy)
    return drawn


def _centralized(
    initial: dict[str, np.ndarray], data: FederatedDigits, args: argparse.Namespace
) -> float:
    """Train the same model on the pooled training data; return holdout accuracy."""
    weights, _ = models.sgd_fit(
        initial,
        data.train_x,
        data.train_y,
        epochs=args.central_epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        rng=np.random.default_rng(args.seed),
    )
    _, accuracy = models.evaluate(
        weights,
        data.holdout_x,
        data.holdout_y,
    )
    return accuracy


def main(argv: list[str] | None = None) -> int:
    """Run the demo from the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.malicious <= args.devices:
        parser.error(f"--malicious {args.malicious} is not between 0 and --devices")
    if not args.attack_scale > 0 or not math.isfinite(args.attack_scale):
        parser.error(f"--attack-scale {args.attack_scale} is not a number > 0")
    try:
        strategy = _strategy(args, load_settings())
    except SettingsError as exc:
        parser.error(f"invalid deployment settings in cdk.json: {exc}")
    except StrategyError as exc:
        parser.error(str(exc))
    least = least_updates(strategy)
    if least > args.devices:
        parser.error(
            f"strategy {strategy.name} with {dict(strategy.params)} needs at least "
            f"{least} updates per round, but --devices is "
            f"{args.devices}: add devices or lower f, m or nnm_f"
        )
    try:
        _check_output_dir(args.output_dir)
    except OSError as exc:
        parser.error(
            f"--output-dir {args.output_dir} is not writable: {exc.strerror or exc}"
        )
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("werkzeug", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        result = run(args)
    except FedCoreError as exc:
        # Settings the data or the model cannot meet, such as more devices than
        # the data set can give examples to.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # The context managers in run() have stopped the aggregator and the server.
        print("interrupted: the embedded AWS is stopped, no report was written")
        return 130
    if result is not None:
        _print_result(result, args.output_dir)
    return 0


def _check_output_dir(output_dir: Path) -> None:
    """Fail before training, not after it, when the report cannot be written."""
    output_dir.mkdir(parents=True, exist_ok=True)
    probe = output_dir / ".write-test"
    probe.write_text("")
    probe.unlink()


def _print_result(result: dict[str, object], output_dir: Path) -> None:
    paths = report.write(result, output_dir)
    print(report.summary(result))
    print(f"report: {paths['report']}")
    print(f"plot:   {paths['plot']}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
