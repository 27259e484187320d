"""Environment variable names the aggregator reads, in one place.

The CDK stacks and the local runtime build the environment from
``infra.config.aggregator_environment``, which uses these names.
"""

UPDATES_BUCKET = "UPDATES_BUCKET"
MODELS_BUCKET = "MODELS_BUCKET"
MODEL_PACKAGE_GROUP = "MODEL_PACKAGE_GROUP"
METRIC_NAMESPACE = "METRIC_NAMESPACE"
FEDERATION = "FEDERATION"
ROUND_TARGET_UPDATES = "ROUND_TARGET_UPDATES"
ROUND_MIN_UPDATES = "ROUND_MIN_UPDATES"
ROUND_DEADLINE_SECONDS = "ROUND_DEADLINE_SECONDS"
ROUND_ON_DEADLINE = "ROUND_ON_DEADLINE"
LEASE_SECONDS = "LEASE_SECONDS"
MAX_UPDATE_BYTES = "MAX_UPDATE_BYTES"
MAX_EXAMPLES = "MAX_EXAMPLES"
MAX_UPDATE_NORM = "MAX_UPDATE_NORM"
INFERENCE_IMAGE = "INFERENCE_IMAGE"
# Strategy of new rounds and its numeric parameters as a JSON object; a stored
# config/round.json wins over both.
STRATEGY = "STRATEGY"
STRATEGY_PARAMS = "STRATEGY_PARAMS"
# Bytes of float64 working memory per update per block in the robust rules.
AGGREGATION_BLOCK_BYTES = "AGGREGATION_BLOCK_BYTES"
# Dtype the mean family sums weight tensors in: float64 (default) or float32.
AGGREGATION_ACCUMULATOR = "AGGREGATION_ACCUMULATOR"
LOG_LEVEL = "LOG_LEVEL"

REQUIRED = (
    UPDATES_BUCKET,
    MODELS_BUCKET,
    MODEL_PACKAGE_GROUP,
    METRIC_NAMESPACE,
    FEDERATION,
)

# CloudWatch metric names and dimensions the aggregator emits (embedded metric format).
DIMENSION_FEDERATION = "Federation"
DIMENSION_REASON = "Reason"
METRIC_UPDATES_ACCEPTED = "UpdatesAccepted"
METRIC_UPDATES_REJECTED = "UpdatesRejected"
METRIC_ROUND_PARTICIPANTS = "RoundParticipants"
METRIC_GLOBAL_LOSS = "GlobalLoss"
METRIC_GLOBAL_ACCURACY = "GlobalAccuracy"
METRIC_ROUND_DURATION = "RoundDurationSeconds"
METRIC_AGGREGATION_TIME = "AggregationSeconds"
METRIC_ROUNDS_PUBLISHED = "RoundsPublished"
METRIC_ROUNDS_ABANDONED = "RoundsAbandoned"
# Epsilon spent after each published dp_fedavg round, at the strategy's delta.
METRIC_PRIVACY_EPSILON = "PrivacyEpsilon"
# A dp_fedavg round not published because it would exceed the privacy budget.
METRIC_PRIVACY_BUDGET_EXHAUSTED = "PrivacyBudgetExhausted"
