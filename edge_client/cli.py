r"""``sfl-edge``: take part in federated rounds as one device.

Example, against a local S3 on 127.0.0.1::

    sfl-edge --device-id phone-7 --updates-bucket sfl-dev-updates \
        --models-bucket sfl-dev-models --data local.csv --label-column label \
        --endpoint-url http://127.0.0.1:5000 --region us-east-1 --rounds 3

Exit status:

- 0: every round uploaded its update.
- 1: an S3 request, the global model or an upload failed.
- 2: invalid arguments or data, or a global model that does not fit the data.
- 3: the next round did not open within ``--wait-timeout``.
- 130: interrupted with Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from botocore.exceptions import BotoCoreError, NoRegionError

from edge_client.client import EdgeClient
from edge_client.data import LocalData, load_data
from edge_client.errors import (
    DataError,
    EdgeClientError,
    ModelMismatchError,
    RoundTimeoutError,
)
from edge_client.s3_access import make_s3_client
from edge_client.trainers import NumpyTrainer
from fedcore.arguments import (
    Parser,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from fedcore.encoding import DEFAULT_TOPK_FRACTION, ENCODINGS
from fedcore.errors import FedCoreError
from fedcore.models import ARCHITECTURES

logger = logging.getLogger("edge_client")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_INTERRUPTED = 130
PROG = "sfl-edge"


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value} is not a number in (0, 1]")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``sfl-edge``."""
    parser = Parser(
        prog=PROG,
        description=(
            "Train on the federation's global model with local data and upload the "
            "update, for one or more consecutive rounds."
        ),
    )

    target = parser.add_argument_group("federation")
    target.add_argument("--device-id", required=True, help="this device's id")
    target.add_argument(
        "--updates-bucket", required=True, help="bucket the update is uploaded to"
    )
    target.add_argument(
        "--models-bucket",
        required=True,
        help="bucket with global/pointer.json and the global models",
    )
    target.add_argument(
        "--endpoint-url",
        help="S3 endpoint URL, for example http://127.0.0.1:5000 (default: AWS)",
    )
    target.add_argument(
        "--region", help="AWS region (default: AWS_REGION or the AWS profile)"
    )
    target.add_argument(
        "--max-retries",
        type=non_negative_int,
        default=4,
        help="retries of a failed S3 request, with backoff (default: 4)",
    )

    data = parser.add_argument_group("local data")
    data.add_argument(
        "--data", required=True, help="training data, a .csv or .npz file"
    )
    data.add_argument(
        "--label-column",
        default="label",
        help="CSV column with the class labels (default: label)",
    )
    data.add_argument(
        "--x-key", default="x", help="NPZ array with the features (default: x)"
    )
    data.add_argument(
        "--y-key", default="y", help="NPZ array with the labels (default: y)"
    )

    training = parser.add_argument_group("training")
    training.add_argument(
        "--model",
        choices=ARCHITECTURES,
        help="expected architecture; a different global model stops the run",
    )
    training.add_argument(
        "--epochs", type=positive_int, default=1, help="local epochs (default: 1)"
    )
    training.add_argument(
        "--batch-size",
        type=positive_int,
        default=16,
        help="examples per SGD step (default: 16)",
    )
    training.add_argument(
        "--learning-rate",
        type=positive_float,
        default=0.1,
        help="SGD learning rate (default: 0.1)",
    )
    training.add_argument(
        "--proximal-mu",
        type=non_negative_float,
        default=None,
        help="FedProx proximal weight, 0 for FedAvg (default: the proximal_mu that "
        "the global model's metadata names under the fedprox strategy, else 0)",
    )
    training.add_argument(
        "--seed",
        type=non_negative_int,
        help="seed of the data shuffling and of q8's stochastic rounding "
        "(default: random)",
    )

    upload = parser.add_argument_group("update encoding")
    upload.add_argument(
        "--encoding",
        choices=ENCODINGS,
        default="none",
        help="compression of the uploaded update: float16, q8 (8-bit stochastic "
        "quantization), topk or topk_q8 (top-k sparsification with error feedback, "
        "values in float32 or 8 bits) (default: none)",
    )
    upload.add_argument(
        "--topk-fraction",
        type=_fraction,
        default=DEFAULT_TOPK_FRACTION,
        help="share of the values that topk and topk_q8 send, in (0, 1] "
        f"(default: {DEFAULT_TOPK_FRACTION})",
    )
    upload.add_argument(
        "--residual-file",
        help="safetensors file that keeps the top-k error-feedback residual between "
        "runs (default: kept in memory for this run only)",
    )

    rounds = parser.add_argument_group("rounds")
    rounds.add_argument(
        "--rounds",
        type=positive_int,
        default=1,
        help="consecutive rounds to take part in (default: 1)",
    )
    rounds.add_argument(
        "--wait-timeout",
        type=positive_float,
        default=900.0,
        help="seconds to wait for the next round to open (default: 900)",
    )
    rounds.add_argument(
        "--poll-interval",
        type=positive_float,
        default=5.0,
        help="seconds between reads of the round pointer (default: 5)",
    )

    parser.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        default="INFO",
        help="logging level on stderr (default: INFO)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sfl-edge`` and return its exit status.

    Each uploaded round prints one line to stdout; logs and the one-line error
    message of a failure go to stderr.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return _main(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(args: argparse.Namespace) -> int:
    try:
        local = load_data(
            args.data,
            label_column=args.label_column,
            x_key=args.x_key,
            y_key=args.y_key,
        )
        client = _build_client(args)
    except (DataError, ValueError) as exc:
        return _fail(EXIT_USAGE, exc)
    except NoRegionError as exc:
        return _fail(EXIT_USAGE, ValueError(f"{exc} Pass --region or set AWS_REGION."))
    except (BotoCoreError, EdgeClientError) as exc:
        return _fail(EXIT_FAILURE, exc)
    try:
        return _run_rounds(client, local, args)
    except ModelMismatchError as exc:
        return _fail(EXIT_USAGE, exc)
    except RoundTimeoutError as exc:
        return _fail(EXIT_TIMEOUT, exc)
    except (EdgeClientError, FedCoreError, BotoCoreError) as exc:
        return _fail(EXIT_FAILURE, exc)


def _fail(status: int, exc: Exception) -> int:
    logger.debug("%s failed", PROG, exc_info=exc)
    message = " ".join(str(exc).split())
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status


def _build_client(args: argparse.Namespace) -> EdgeClient:
    trainer = NumpyTrainer(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        proximal_mu=args.proximal_mu or 0.0,
        seed=args.seed,
    )
    s3 = make_s3_client(
        endpoint_url=args.endpoint_url,
        region=args.region,
        max_retries=args.max_retries,
    )
    return EdgeClient(
        device_id=args.device_id,
        updates_bucket=args.updates_bucket,
        models_bucket=args.models_bucket,
        trainer=trainer,
        proximal_mu_from_model=args.proximal_mu is None,
        s3_client=s3,
        architecture=args.model,
        encoding=args.encoding,
        topk_fraction=args.topk_fraction,
        encoding_seed=args.seed,
        residual_path=args.residual_file,
    )


def _run_rounds(client: EdgeClient, local: LocalData, args: argparse.Namespace) -> int:
    last_round: int | None = None
    for index in range(args.rounds):
        if last_round is not None:
            logger.info(
                "waiting up to %g s for the round after %d",
                args.wait_timeout,
                last_round,
            )
            client.wait_for_round(last_round, args.wait_timeout, args.poll_interval)
        result = client.train_round(local.x, local.y)
        last_round = result.round
        print(
            f"round {result.round}: uploaded s3://{result.bucket}/{result.key} "
            f"({result.size_bytes} bytes, {result.num_examples} examples, "
            f"loss {result.metrics.get('loss', float('nan')):.4f}, "
            f"accuracy {result.metrics.get('accuracy', float('nan')):.4f})",
            flush=True,
        )
        logger.debug("finished %d of %d rounds", index + 1, args.rounds)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
