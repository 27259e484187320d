"""Synthesis fixtures for the CDK stack tests; asset bundling is always skipped."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import aws_cdk as cdk
from aws_cdk.assertions import Template

from infra.config import DeploymentSettings, load_settings
from infra.federation import FederationStacks, add_nag_checks, build_federation

REPO_ROOT = Path(__file__).resolve().parents[2]
SKIP_BUNDLING = {"aws:cdk:bundling-stacks": []}


@dataclass(frozen=True)
class Synthesized:
    """One synthesized federation: its settings, stacks and templates."""

    settings: DeploymentSettings
    app: cdk.App
    stacks: FederationStacks
    outdir: Path

    def template(self, concern: str) -> Template:
        return Template.from_stack(getattr(self.stacks, concern))


def synthesize(
    outdir: Path,
    context: Mapping[str, Any] | None = None,
    *,
    nag: bool = False,
) -> Synthesized:
    """Build the federation from ``cdk.json`` plus ``context`` overrides."""
    settings = load_settings(lookup=dict(context or {}).get)
    app = cdk.App(outdir=str(outdir), context=SKIP_BUNDLING)
    stacks = build_federation(app, settings, source_root=REPO_ROOT)
    if nag:
        add_nag_checks(app)
    app.synth()
    return Synthesized(settings, app, stacks, outdir)


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    """The federation of ``cdk.json``'s settings, synthesized once per module."""
    return synthesize(tmp_path_factory.mktemp("cdk.out"))


@pytest.fixture(scope="module")
def synth_with(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., Synthesized]:
    """Synthesize a federation with context overrides, into a fresh directory."""

    def run(context: Mapping[str, Any], *, nag: bool = False) -> Synthesized:
        return synthesize(tmp_path_factory.mktemp("cdk.out"), context, nag=nag)

    return run
