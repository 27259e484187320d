"""The demo's per-round table, its JSON run report and its plot.

Every figure in the report is read back from the embedded AWS: round states from
S3, versions from the SageMaker Model Registry, metrics from CloudWatch.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from fedcore import layout
from lambdas.aggregator import constants as names
from local_aws.federation import LocalFederation, rejections_by_reason

TABLE_HEADER = (
    "round  accepted  rejected  examples  holdout_loss  holdout_acc  round_s  upload_kb"
)


def table_header(*, private: bool = False) -> str:
    """Return the header of the per-round table; ``private`` adds epsilon."""
    return TABLE_HEADER + ("    epsilon" if private else "")


def _read_json(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    return dict(json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))


def round_row(federation: LocalFederation, round_number: int) -> dict[str, Any]:
    """Summarize one finished round from its state document."""
    s3 = federation.s3()
    bucket = federation.resources.models_bucket
    body = _read_json(s3, bucket, layout.round_state_key(round_number))
    published = body.get("published") or {}
    evaluation = published.get("evaluation", {})
    rejected = s3.list_objects_v2(
        Bucket=bucket, Prefix=f"rejections/round-{round_number:06d}/"
    ).get("KeyCount", 0)
    row = {
        "round": round_number,
        "status": body["status"],
        "accepted": len(body["accepted"]),
        "rejected": int(rejected),
        "examples": sum(
            int(item["num_examples"]) for item in body["accepted"].values()
        ),
        "holdout_loss": evaluation.get("loss"),
        "holdout_accuracy": evaluation.get("accuracy"),
        "round_seconds": (published.get("published_at", body["opened_at"]))
        - body["opened_at"],
        "model_package_arn": published.get("model_package_arn"),
    }
    if body.get("strategy") == "dp_fedavg":
        row["epsilon"] = evaluation.get("dp_epsilon")
        abandoned = body.get("abandoned") or {}
        row["budget_exhausted"] = bool(abandoned.get("privacy_budget_exhausted"))
    return row


def format_row(row: dict[str, Any]) -> str:
    """Render one row of the per-round table."""
    loss = row["holdout_loss"]
    accuracy = row["holdout_accuracy"]
    line = (
        f"{row['round']:>5}  {row['accepted']:>8}  {row['rejected']:>8}  "
        f"{row['examples']:>8}  {'-' if loss is None else f'{loss:.4f}':>12}  "
        f"{'-' if accuracy is None else f'{accuracy:.4f}':>11}  "
        f"{row['round_seconds']:>7.2f}  {row.get('upload_bytes', 0) / 1024:>9.1f}"
    )
    if "epsilon" in row:
        epsilon = row["epsilon"]
        line += f"  {'-' if epsilon is None else f'{epsilon:.4g}':>9}"
    return line


def _model_package_versions(federation: LocalFederation) -> list[dict[str, Any]]:
    sagemaker = federation.aws.client("sagemaker")
    versions: list[dict[str, Any]] = []
    paginator = sagemaker.get_paginator("list_model_packages")
    for page in paginator.paginate(
        ModelPackageGroupName=federation.settings.model_package_group_name
    ):
        for summary in page["ModelPackageSummaryList"]:
            described = sagemaker.describe_model_package(
                ModelPackageName=summary["ModelPackageArn"]
            )
            versions.append(
                {
                    "arn": summary["ModelPackageArn"],
                    "version": described.get("ModelPackageVersion"),
                    "status": described.get("ModelApprovalStatus"),
                    "round": described.get("CustomerMetadataProperties", {}).get(
                        "round"
                    ),
                }
            )
    return versions


_STATISTIC_LABELS = {
    "Sum": "sum over the run",
    "Maximum": "maximum over the run",
    "Minimum": "minimum over the run",
    "Average": "mean over the run's rounds",
}


def _cloudwatch_metrics(
    federation: LocalFederation, since: datetime, *, private: bool = False
) -> dict[str, Any]:
    """Read the aggregator's metrics back from the embedded CloudWatch.

    ``private`` adds the DP metrics: the largest PrivacyEpsilon and the count of
    PrivacyBudgetExhausted.
    """
    cloudwatch = federation.aws.client("cloudwatch")
    dimensions = [
        {"Name": names.DIMENSION_FEDERATION, "Value": federation.settings.federation}
    ]
    end = datetime.now(UTC) + timedelta(minutes=1)
    metrics: dict[str, Any] = {}
    statistics: dict[str, str] = {}
    read = [
        (names.METRIC_UPDATES_ACCEPTED, "Sum"),
        (names.METRIC_UPDATES_REJECTED, "Sum"),
        (names.METRIC_ROUNDS_PUBLISHED, "Sum"),
        (names.METRIC_ROUND_PARTICIPANTS, "Sum"),
        (names.METRIC_GLOBAL_ACCURACY, "Maximum"),
        (names.METRIC_GLOBAL_LOSS, "Minimum"),
        (names.METRIC_ROUND_DURATION, "Average"),
        (names.METRIC_AGGREGATION_TIME, "Average"),
    ]
    if private:
        read += [
            (names.METRIC_PRIVACY_EPSILON, "Maximum"),
            (names.METRIC_PRIVACY_BUDGET_EXHAUSTED, "Sum"),
        ]
    for metric, statistic in read:
        response = cloudwatch.get_metric_statistics(
            Namespace=federation.settings.metric_namespace,
            MetricName=metric,
            Dimensions=dimensions,
            StartTime=since - timedelta(minutes=1),
            EndTime=end,
            Period=60,
            Statistics=[statistic],
        )
        points = [point[statistic] for point in response["Datapoints"]]
        statistics[metric] = _STATISTIC_LABELS[statistic]
        if statistic == "Sum":
            metrics[metric] = float(sum(points))
        elif not points:
            metrics[metric] = None
        elif statistic == "Maximum":
            metrics[metric] = max(points)
        elif statistic == "Minimum":
            metrics[metric] = min(points)
        else:
            metrics[metric] = sum(points) / len(points)
    metrics["statistics"] = statistics
    metrics["namespace"] = federation.settings.metric_namespace
    metrics["dimensions"] = {names.DIMENSION_FEDERATION: federation.settings.federation}
    return metrics


def collect(
    federation: LocalFederation,
    args: argparse.Namespace,
    centralized_accuracy: float,
    started: float,
    *,
    rounds: int | None = None,
) -> dict[str, Any]:
    """Build the run report from what the embedded AWS stores.

    ``rounds`` is the number of rounds run, when the run stopped before
    ``args.rounds``.
    """
    count = args.rounds if rounds is None else rounds
    rows = [round_row(federation, number) for number in range(1, count + 1)]
    private = any("epsilon" in row for row in rows)
    published = [row for row in rows if row["status"] == "published"]
    s3 = federation.s3()
    bucket = federation.resources.models_bucket
    sqs = federation.aws.client("sqs")
    dlq = sqs.get_queue_attributes(
        QueueUrl=federation.resources.dlq_url,
        AttributeNames=["ApproximateNumberOfMessages"],
    )["Attributes"]["ApproximateNumberOfMessages"]
    run_started = datetime.now(UTC) - timedelta(seconds=time.monotonic() - started)
    final = published[-1] if published else {}
    final_accuracy = final.get("holdout_accuracy")
    versions = _model_package_versions(federation)
    return {
        "settings": {
            "rounds": args.rounds,
            "devices": args.devices,
            "alpha": args.alpha,
            "seed": args.seed,
            "model": args.model,
            "local_epochs": args.local_epochs,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "central_epochs": args.central_epochs,
            "federation": federation.settings.federation,
            "strategy": federation.settings.strategy,
            "strategy_params": dict(federation.settings.strategy_params),
            "accumulator": federation.settings.aggregator.accumulator,
            "malicious": args.malicious,
            "attack": args.attack if args.malicious else None,
            "attack_scale": args.attack_scale if args.malicious else None,
        },
        "rounds_completed": len(published),
        "final_accuracy": final_accuracy,
        "final_loss": final.get("holdout_loss"),
        "centralized_accuracy": centralized_accuracy,
        "accuracy_gap": None
        if final_accuracy is None
        else centralized_accuracy - final_accuracy,
        "updates_accepted": sum(row["accepted"] for row in rows),
        "updates_rejected": rejections_by_reason(s3, bucket),
        "model_package_versions": len(versions),
        "model_packages": versions,
        "cloudwatch_metrics": _cloudwatch_metrics(
            federation, run_started, private=private
        ),
        "dlq_messages": int(dlq),
        "handler": {
            "invocations": federation.mapping.stats.invocations,
            "messages": federation.mapping.stats.messages,
            "failed_messages": federation.mapping.stats.failed_messages,
            "crashed_invocations": federation.mapping.stats.crashed_invocations,
        },
        "per_round": rows,
        "wall_seconds": time.monotonic() - started,
    }


def write(result: dict[str, Any], output_dir: Path) -> dict[str, Path]:
    """Write ``report.json`` and ``training.png`` in a new timestamped folder."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = output_dir / f"demo-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    report_path = folder / "report.json"
    report_path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    plot_path = folder / "training.png"
    plot(result, plot_path)
    return {"report": report_path.resolve(), "plot": plot_path.resolve()}


def plot(result: dict[str, Any], path: Path) -> None:
    """Draw holdout accuracy and loss per round, with the centralized baseline."""
    rows = [row for row in result["per_round"] if row["holdout_accuracy"] is not None]
    rounds = [row["round"] for row in rows]
    figure, (accuracy_axis, loss_axis) = plt.subplots(1, 2, figsize=(10, 4))
    accuracy_axis.plot(rounds, [row["holdout_accuracy"] for row in rows], marker="o")
    accuracy_axis.axhline(
        result["centralized_accuracy"],
        color="grey",
        linestyle="--",
        label="centralized",
    )
    accuracy_axis.set_xlabel("round")
    accuracy_axis.set_ylabel("holdout accuracy")
    accuracy_axis.legend(loc="lower right")
    accuracy_axis.grid(alpha=0.3)
    loss_axis.plot(
        rounds, [row["holdout_loss"] for row in rows], marker="o", color="C3"
    )
    loss_axis.set_xlabel("round")
    loss_axis.set_ylabel("holdout cross-entropy")
    loss_axis.grid(alpha=0.3)
    settings = result["settings"]
    title = str(settings.get("strategy") or "fedavg")
    if settings.get("malicious"):
        title += (
            f", {settings['malicious']} malicious ({settings['attack']} "
            f"x {settings['attack_scale']:g})"
        )
    if "dp_settings" in result:
        title = (
            f"DP-FedAvg (z {result['dp_settings']['noise_multiplier']:g}, "
            f"epsilon {result['epsilon']:.3g} at delta {result['delta']:g})"
        )
        for row in rows[-1:]:
            if row.get("epsilon") is not None:
                accuracy_axis.annotate(
                    f"epsilon {row['epsilon']:.3g}",
                    (row["round"], row["holdout_accuracy"]),
                    textcoords="offset points",
                    xytext=(-60, -20),
                )
    figure.suptitle(
        f"{title} on digits: {settings['devices']} devices, "
        f"Dirichlet alpha {settings['alpha']}, {settings['model']}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def summary(result: dict[str, Any]) -> str:
    """Render the headline numbers of a run."""
    rejected = sum(result["updates_rejected"].values())
    final = result["final_accuracy"]
    privacy = ""
    if "epsilon" in result:
        privacy = f"epsilon {result['epsilon']:.4g} at delta {result['delta']:g}, "
    return (
        f"rounds completed {result['rounds_completed']}, "
        f"final accuracy {'-' if final is None else f'{final:.4f}'}, {privacy}"
        f"centralized {result['centralized_accuracy']:.4f}, "
        f"updates accepted {result['updates_accepted']}, rejected {rejected}, "
        f"model versions {result['model_package_versions']}, "
        f"{result['wall_seconds']:.1f} s"
    )
