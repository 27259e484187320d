"""A short DP-FedAvg demo through the real handler on the embedded AWS."""

from __future__ import annotations

import pytest

from local_aws import demo

pytestmark = pytest.mark.slow

ROUNDS = 3


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    args = demo.build_parser().parse_args(
        [
            "--rounds",
            str(ROUNDS),
            "--devices",
            "10",
            "--dp-noise",
            "1.0",
            "--dp-sampling-rate",
            "0.5",
            "--local-epochs",
            "1",
            "--central-epochs",
            "1",
            "--output-dir",
            str(tmp_path_factory.mktemp("demo")),
        ]
    )
    return demo.run(args)


def test_demo_epsilon_each_round(result):
    epsilons = [row["epsilon"] for row in result["per_round"]]
    assert len(epsilons) == ROUNDS
    assert all(epsilon is not None for epsilon in epsilons)
    assert epsilons == sorted(epsilons)
    assert len(set(epsilons)) == ROUNDS


def test_demo_report_privacy(result):
    assert result["epsilon"] == result["per_round"][-1]["epsilon"]
    assert result["delta"] == 1e-5
    assert result["dp_settings"]["sampling_rate"] == 0.5
    assert result["cloudwatch_metrics"]["PrivacyEpsilon"] == pytest.approx(
        result["epsilon"]
    )


def test_demo_only_drawn_devices(result):
    accepted = [row["accepted"] for row in result["per_round"]]
    assert sum(accepted) == result["updates_accepted"]
    assert all(count < 10 for count in accepted)
