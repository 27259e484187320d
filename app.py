"""CDK entry point: ``cdk synth`` and ``cdk deploy --all`` run this file.

Settings come from the ``fl:*`` context of ``cdk.json``; ``cdk -c key=value`` overrides
them (see ``infra/config.py`` for every key).
"""

from __future__ import annotations

import os
from pathlib import Path

import aws_cdk as cdk

from infra.config import load_settings
from infra.federation import add_nag_checks, build_federation

ROOT = Path(__file__).resolve().parent


def main() -> None:
    """Synthesize the federation's stacks with the cdk-nag checks."""
    # The CDK CLI passes the output directory in CDK_OUTDIR. Run directly with
    # `python app.py`, a plain App would write to a temporary directory instead.
    outdir = None if os.environ.get("CDK_OUTDIR") else str(ROOT / "cdk.out")
    app = cdk.App(outdir=outdir)
    settings = load_settings(lookup=app.node.try_get_context)
    env = None
    account = os.environ.get("CDK_DEFAULT_ACCOUNT")
    region = os.environ.get("CDK_DEFAULT_REGION")
    if account and region:
        env = cdk.Environment(account=account, region=region)
    build_federation(app, settings, source_root=ROOT, env=env)
    add_nag_checks(app)
    app.synth()


if __name__ == "__main__":
    main()
