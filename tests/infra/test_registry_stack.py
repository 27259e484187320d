"""Registry stack and the one-source-of-truth agreement with infra.config."""

from __future__ import annotations

import pytest

from infra.aggregation_stack import SQS_HANDLER, SWEEP_HANDLER
from infra.config import aggregator_environment
from infra.storage_stack import StorageExports
from lambdas.aggregator import constants as names

pytestmark = pytest.mark.infra

BUCKET_VARIABLES = {names.UPDATES_BUCKET, names.MODELS_BUCKET}


def test_group_name(synthesized):
    template = synthesized.template("registry")
    template.has_resource_properties(
        "AWS::SageMaker::ModelPackageGroup",
        {"ModelPackageGroupName": synthesized.settings.model_package_group_name},
    )


def test_group_retained(synthesized):
    template = synthesized.template("registry")
    template.has_resource(
        "AWS::SageMaker::ModelPackageGroup", {"DeletionPolicy": "Retain"}
    )


def _environment(synthesized, handler):
    template = synthesized.template("aggregation")
    functions = template.find_resources(
        "AWS::Lambda::Function", {"Properties": {"Handler": handler}}
    )
    (function,) = functions.values()
    return function["Properties"]["Environment"]["Variables"]


@pytest.mark.parametrize("handler", [SQS_HANDLER, SWEEP_HANDLER])
def test_environment_from_config(synthesized, handler):
    expected = aggregator_environment(
        synthesized.settings, updates_bucket="unused", models_bucket="unused"
    )
    deployed = _environment(synthesized, handler)
    assert set(deployed) == set(expected)
    for key in set(expected) - BUCKET_VARIABLES:
        assert deployed[key] == expected[key], key


@pytest.mark.parametrize("handler", [SQS_HANDLER, SWEEP_HANDLER])
def test_bucket_variables_reference_stack(synthesized, handler):
    exports = StorageExports.for_settings(synthesized.settings)
    deployed = _environment(synthesized, handler)
    assert deployed[names.UPDATES_BUCKET] == {
        "Fn::ImportValue": exports.updates_bucket_name
    }
    assert deployed[names.MODELS_BUCKET] == {
        "Fn::ImportValue": exports.models_bucket_name
    }


def test_required_variables_present(synthesized):
    deployed = _environment(synthesized, SQS_HANDLER)
    for name in names.REQUIRED:
        assert name in deployed


def test_group_agrees_with_environment(synthesized):
    template = synthesized.template("registry")
    (group,) = template.find_resources("AWS::SageMaker::ModelPackageGroup").values()
    deployed = _environment(synthesized, SQS_HANDLER)
    assert (
        group["Properties"]["ModelPackageGroupName"]
        == deployed[names.MODEL_PACKAGE_GROUP]
    )


def test_namespace_and_federation_agree(synthesized):
    deployed = _environment(synthesized, SQS_HANDLER)
    assert deployed[names.METRIC_NAMESPACE] == synthesized.settings.metric_namespace
    assert deployed[names.FEDERATION] == synthesized.settings.federation


@pytest.mark.parametrize(
    ("context", "variable", "value"),
    [
        (
            {"fl:round": {"target_updates": 40, "min_updates": 5}},
            "ROUND_TARGET_UPDATES",
            "40",
        ),
        ({"fl:round": {"on_deadline": "extend"}}, "ROUND_ON_DEADLINE", "extend"),
        ({"fl:validation": {"max_update_norm": 12.5}}, "MAX_UPDATE_NORM", "12.5"),
        ({"fl:prefix": "acme", "fl:stage": "prod"}, "FEDERATION", "acme-prod"),
        (
            {"fl:aggregator": {"accumulator": "float32"}},
            "AGGREGATION_ACCUMULATOR",
            "float32",
        ),
    ],
)
def test_context_override_reaches_lambda(synth_with, context, variable, value):
    result = synth_with(context)
    assert _environment(result, SQS_HANDLER)[variable] == value


def test_stack_names_from_federation(synth_with):
    result = synth_with({"fl:prefix": "acme", "fl:stage": "prod"})
    names_ = [stack.stack_name for stack in result.stacks.all()]
    assert all(name.startswith("acme-prod-") for name in names_)
