"""Monitoring: the alarm topic, the alarms and the federation's dashboard.

Every custom metric uses the namespace, metric names and dimensions the aggregator
emits: ``settings.metric_namespace``, the names in ``lambdas.aggregator.constants``,
and the dimension set ``{Federation: settings.federation}``. ``UpdatesRejected`` is
also emitted with the set ``{Federation, Reason}``, used only by the per-reason graph.
"""

from __future__ import annotations

import math
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.aggregation_stack import function_name
from infra.config import DeploymentSettings, SettingsError
from lambdas.aggregator import constants as names

# CloudWatch alarms evaluate at most one day of data (period x evaluation periods).
MAX_ALARM_WINDOW_SECONDS = 86_400
OPERATIONS_PERIOD = cdk.Duration.minutes(5)
# Width of the anomaly detection band on GlobalLoss, in standard deviations.
LOSS_BAND_STD_DEVS = 2
LOSS_EVALUATION_PERIODS = 3
AT_LEAST = cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD


def alarm_period(seconds: int, *, setting: str) -> cdk.Duration:
    """Round ``seconds`` up to whole minutes, as CloudWatch periods over 60 s require.

    Raises
    ------
    SettingsError
        If the period exceeds the one-day alarm evaluation window.
    """
    minutes = max(1, math.ceil(seconds / 60))
    if minutes * 60 > MAX_ALARM_WINDOW_SECONDS:
        raise SettingsError(
            f"{setting} gives an alarm period of {minutes * 60} s, over CloudWatch's "
            f"limit of {MAX_ALARM_WINDOW_SECONDS} s: lower the deadline or the multiple"
        )
    return cdk.Duration.minutes(minutes)


class LambdaMetrics:
    """The AWS/Lambda metrics of one function, by its literal name."""

    def __init__(self, function_name: str) -> None:
        self.function_name = function_name

    def metric(self, metric_name: str, statistic: str = cw.Stats.SUM) -> cw.Metric:
        """Return ``metric_name`` of this function over the operations period."""
        return cw.Metric(
            namespace="AWS/Lambda",
            metric_name=metric_name,
            dimensions_map={"FunctionName": self.function_name},
            statistic=statistic,
            period=OPERATIONS_PERIOD,
        )


class MonitoringStack(cdk.Stack):
    """Alarm topic, alarms on the aggregator and the queue, and a dashboard."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: DeploymentSettings,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        # Functions and queue are found by the names the settings give them, so this
        # stack holds no cross-stack reference; it must deploy after the aggregation.
        aggregator = LambdaMetrics(function_name(settings, "aggregator"))
        sweep = LambdaMetrics(function_name(settings, "sweep"))
        dead_letter_queue = sqs.Queue.from_queue_attributes(
            self,
            "DeadLetterQueue",
            queue_arn=self.format_arn(
                service="sqs", resource=settings.local_dlq_name, resource_name=None
            ),
            queue_name=settings.local_dlq_name,
        )
        self._settings = settings
        self.topic = self._topic(settings)
        action = cw_actions.SnsAction(self.topic)
        federation = settings.federation
        self.alarms: dict[str, cw.Alarm] = {}

        def add(alarm_id: str, alarm: cw.Alarm) -> None:
            alarm.add_alarm_action(action)
            alarm.add_ok_action(action)
            self.alarms[alarm_id] = alarm

        for label, function in (("aggregator", aggregator), ("sweep", sweep)):
            add(
                f"{label}-errors",
                function.metric("Errors").create_alarm(
                    self,
                    f"{label.title()}Errors",
                    alarm_name=f"{federation}-{label}-errors",
                    alarm_description=f"The {label} function raised errors.",
                    threshold=1,
                    evaluation_periods=1,
                    comparison_operator=AT_LEAST,
                    treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                ),
            )

        add(
            "aggregator-throttles",
            aggregator.metric("Throttles").create_alarm(
                self,
                "AggregatorThrottles",
                alarm_name=f"{federation}-aggregator-throttles",
                alarm_description="The aggregator hit its reserved concurrency.",
                threshold=1,
                evaluation_periods=1,
                comparison_operator=AT_LEAST,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ),
        )
        add(
            "dlq-messages",
            dead_letter_queue.metric_approximate_number_of_messages_visible(
                period=OPERATIONS_PERIOD, statistic=cw.Stats.MAXIMUM
            ).create_alarm(
                self,
                "DeadLetterMessages",
                alarm_name=f"{federation}-update-events-dlq",
                alarm_description=(
                    "Update events failed every delivery and wait in the DLQ."
                ),
                threshold=0,
                evaluation_periods=1,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ),
        )

        add("rejected-ratio", self._rejected_ratio_alarm())
        add("no-round-published", self._no_publish_alarm())
        add("global-loss-rising", self._loss_alarm())
        add(
            "privacy-budget-exhausted",
            self.metric(
                names.METRIC_PRIVACY_BUDGET_EXHAUSTED,
                cw.Stats.SUM,
                period=OPERATIONS_PERIOD,
            ).create_alarm(
                self,
                "PrivacyBudgetExhausted",
                alarm_name=f"{federation}-privacy-budget-exhausted",
                alarm_description=(
                    "A dp_fedavg round was not published because it would exceed "
                    "the privacy budget: raise the budget or stop the federation."
                ),
                threshold=1,
                evaluation_periods=1,
                comparison_operator=AT_LEAST,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ),
        )
        self.dashboard = self._dashboard(aggregator, dead_letter_queue)

    def metric(self, metric_name: str, statistic: str, **kwargs: Any) -> cw.Metric:
        """Return one of the aggregator's metrics with the federation dimension."""
        return cw.Metric(
            namespace=self._settings.metric_namespace,
            metric_name=metric_name,
            dimensions_map={names.DIMENSION_FEDERATION: self._settings.federation},
            statistic=statistic,
            **kwargs,
        )

    def _topic(self, settings: DeploymentSettings) -> sns.Topic:
        key = kms.Key(
            self,
            "AlarmTopicKey",
            alias=f"alias/{settings.federation}-alarms",
            description=f"Encrypts the alarm topic of federation {settings.federation}",
            enable_key_rotation=True,
        )
        # CloudWatch needs the key to publish alarm notifications to an encrypted topic.
        key.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],
                conditions={"StringEquals": {"aws:SourceAccount": self.account}},
            )
        )
        topic = sns.Topic(
            self,
            "AlarmTopic",
            topic_name=f"{settings.federation}-alarms",
            display_name=f"Alarms of federation {settings.federation}",
            master_key=key,
            enforce_ssl=True,
        )
        topic.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["sns:Publish"],
                resources=[topic.topic_arn],
                conditions={"StringEquals": {"aws:SourceAccount": self.account}},
            )
        )
        if settings.monitoring.alarm_email:
            topic.add_subscription(
                subscriptions.EmailSubscription(settings.monitoring.alarm_email)
            )
        return topic

    def _rejected_ratio_alarm(self) -> cw.Alarm:
        settings = self._settings
        period = alarm_period(
            settings.round.deadline_seconds, setting="fl:round.deadline_seconds"
        )
        ratio = cw.MathExpression(
            # IF keeps a period whose counts are both zero from dividing by zero.
            expression=(
                "IF((FILL(accepted, 0) + FILL(rejected, 0)) > 0, "
                "FILL(rejected, 0) / (FILL(accepted, 0) + FILL(rejected, 0)), 0)"
            ),
            using_metrics={
                "accepted": self.metric(names.METRIC_UPDATES_ACCEPTED, cw.Stats.SUM),
                "rejected": self.metric(names.METRIC_UPDATES_REJECTED, cw.Stats.SUM),
            },
            label="Rejected update ratio",
            period=period,
        )
        return ratio.create_alarm(
            self,
            "RejectedRatio",
            alarm_name=f"{settings.federation}-rejected-ratio",
            alarm_description=(
                "More than fl:monitoring.max_rejected_ratio of the updates received in "
                "one round deadline were rejected."
            ),
            threshold=settings.monitoring.max_rejected_ratio,
            evaluation_periods=1,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
        )

    def _no_publish_alarm(self) -> cw.Alarm:
        settings = self._settings
        seconds = (
            settings.monitoring.no_publish_deadline_multiple
            * settings.round.deadline_seconds
        )
        period = alarm_period(
            seconds,
            setting=(
                "fl:monitoring.no_publish_deadline_multiple x fl:round.deadline_seconds"
            ),
        )
        return self.metric(
            names.METRIC_ROUNDS_PUBLISHED, cw.Stats.SUM, period=period
        ).create_alarm(
            self,
            "NoRoundPublished",
            alarm_name=f"{settings.federation}-no-round-published",
            alarm_description=(
                f"No round was published for {seconds} s "
                f"({settings.monitoring.no_publish_deadline_multiple} round deadlines)."
            ),
            threshold=1,
            evaluation_periods=1,
            comparison_operator=cw.ComparisonOperator.LESS_THAN_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.BREACHING,
        )

    def _loss_alarm(self) -> cw.Alarm:
        settings = self._settings
        period = alarm_period(
            settings.round.deadline_seconds, setting="fl:round.deadline_seconds"
        )
        # NOTE: the band needs about two weeks of GlobalLoss data to model its trend;
        # before that CloudWatch widens the band and the alarm rarely fires.
        return cw.AnomalyDetectionAlarm(
            self,
            "GlobalLossRising",
            alarm_name=f"{settings.federation}-global-loss-rising",
            alarm_description=(
                "The global model's holdout loss rose above its anomaly detection band "
                f"for {LOSS_EVALUATION_PERIODS} consecutive periods."
            ),
            metric=self.metric(
                names.METRIC_GLOBAL_LOSS, cw.Stats.AVERAGE, period=period
            ),
            std_devs=LOSS_BAND_STD_DEVS,
            evaluation_periods=LOSS_EVALUATION_PERIODS,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_UPPER_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.IGNORE,
        )

    def _dashboard(
        self, aggregator: LambdaMetrics, dead_letter_queue: sqs.IQueue
    ) -> cw.Dashboard:
        settings = self._settings
        rejected_by_reason = cw.SearchExpression(
            expression=(
                f"SEARCH('{{{settings.metric_namespace},"
                f"{names.DIMENSION_FEDERATION},{names.DIMENSION_REASON}}} "
                f'MetricName="{names.METRIC_UPDATES_REJECTED}" '
                f'{names.DIMENSION_FEDERATION}="{settings.federation}"\', '
                f"'Sum', {OPERATIONS_PERIOD.to_seconds()})"
            ),
            label="",
            period=OPERATIONS_PERIOD,
        )

        def graph(
            title: str, metrics: list[cw.IMetric], **kwargs: Any
        ) -> cw.GraphWidget:
            return cw.GraphWidget(
                title=title, left=metrics, width=8, height=6, **kwargs
            )

        dashboard = cw.Dashboard(
            self,
            "Dashboard",
            dashboard_name=f"{settings.federation}-federation",
        )
        dashboard.add_widgets(
            graph(
                "Updates accepted and rejected",
                [
                    self.metric(names.METRIC_UPDATES_ACCEPTED, cw.Stats.SUM),
                    self.metric(names.METRIC_UPDATES_REJECTED, cw.Stats.SUM),
                ],
            ),
            graph("Rejected updates by reason", [rejected_by_reason]),
            graph(
                "Participants per round",
                [self.metric(names.METRIC_ROUND_PARTICIPANTS, cw.Stats.MAXIMUM)],
            ),
        )
        dashboard.add_widgets(
            graph(
                "Global loss and accuracy (holdout)",
                [self.metric(names.METRIC_GLOBAL_LOSS, cw.Stats.AVERAGE)],
                right=[self.metric(names.METRIC_GLOBAL_ACCURACY, cw.Stats.AVERAGE)],
            ),
            graph(
                "Round and aggregation duration (s)",
                [
                    self.metric(names.METRIC_ROUND_DURATION, cw.Stats.MAXIMUM),
                    self.metric(names.METRIC_AGGREGATION_TIME, cw.Stats.MAXIMUM),
                ],
            ),
            graph(
                "Rounds published and abandoned",
                [
                    self.metric(names.METRIC_ROUNDS_PUBLISHED, cw.Stats.SUM),
                    self.metric(names.METRIC_ROUNDS_ABANDONED, cw.Stats.SUM),
                ],
            ),
        )
        dashboard.add_widgets(
            graph(
                "Aggregator invocations, errors and throttles",
                [
                    aggregator.metric("Invocations"),
                    aggregator.metric("Errors"),
                    aggregator.metric("Throttles"),
                ],
            ),
            graph(
                "Aggregator duration (ms)",
                [
                    aggregator.metric("Duration", cw.Stats.AVERAGE),
                    aggregator.metric("Duration", cw.Stats.MAXIMUM),
                ],
            ),
            graph(
                "Dead-letter queue depth",
                [
                    dead_letter_queue.metric_approximate_number_of_messages_visible(
                        period=OPERATIONS_PERIOD, statistic=cw.Stats.MAXIMUM
                    )
                ],
            ),
        )
        return dashboard
