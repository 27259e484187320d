"""cfn-lint and cdk-nag over the synthesized templates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_s3 as s3

from infra.federation import add_nag_checks

pytestmark = pytest.mark.infra

CFN_LINT = Path(sys.executable).with_name("cfn-lint")
# W3005 (DependsOn also implied by a GetAtt): aws-cdk-lib writes both for the bucket
# notification custom resource and for functions on their role's default policy.
# The redundancy is harmless and not in code this project controls.
IGNORED_CHECKS = ("W3005",)


def test_cfn_lint_clean(synthesized):
    templates = sorted(synthesized.outdir.glob("*.template.json"))
    assert len(templates) == 5
    assert CFN_LINT.exists(), f"cfn-lint not installed next to {sys.executable}"
    result = subprocess.run(
        [
            str(CFN_LINT),
            "--ignore-checks",
            *IGNORED_CHECKS,
            "--",
            *map(str, templates),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.stdout == ""
    assert result.returncode == 0, result.stderr


def test_nag_no_unacknowledged_findings(synth_with):
    result = synth_with({}, nag=True)
    assert (result.outdir / "manifest.json").exists()


def test_nag_findings_fail_synthesis(tmp_path):
    """A bucket without logging or SSL enforcement stops synthesis."""
    app = cdk.App(outdir=str(tmp_path))
    stack = cdk.Stack(app, "Unsafe")
    s3.Bucket(stack, "Bare")
    add_nag_checks(app)
    with pytest.raises(RuntimeError, match="AwsSolutions-S1"):
        app.synth()
