"""Tests of the adaptive clip norm on synthetic update norms."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedcore.privacy import AdaptiveClip, PrivacyError, sum_noise_multiplier

MEDIAN = 2.0
PARTICIPANTS = 100


def run_rounds(state: AdaptiveClip, rounds: int, seed: int) -> list[float]:
    """Adapt the clip norm to log-normal norms with median MEDIAN; return C by round."""
    generator = np.random.default_rng(seed)
    history = []
    for _ in range(rounds):
        norms = MEDIAN * np.exp(generator.normal(0.0, 0.5, size=PARTICIPANTS))
        unclipped = int(np.count_nonzero(norms <= state.clip_norm))
        state = state.next(
            unclipped_count=unclipped,
            count=PARTICIPANTS,
            expected_participants=PARTICIPANTS,
            rng=generator,
        )
        history.append(state.clip_norm)
    return history


@pytest.mark.parametrize("start", [0.01, 2.0, 500.0])
def test_clip_converges_to_median(start: float) -> None:
    state = AdaptiveClip(clip_norm=start, count_stddev=PARTICIPANTS / 20)
    history = run_rounds(state, 300, seed=1)
    late = np.asarray(history[-50:])
    assert abs(math.log(float(np.median(late)) / MEDIAN)) < 0.15


@pytest.mark.parametrize(
    ("target", "quantile"),
    [(0.1, -1.2816), (0.9, 1.2816)],
)
def test_clip_converges_to_quantile(target: float, quantile: float) -> None:
    state = AdaptiveClip(clip_norm=1.0, target_quantile=target, count_stddev=1.0)
    history = run_rounds(state, 400, seed=2)
    expected = MEDIAN * math.exp(0.5 * quantile)
    assert abs(math.log(float(np.median(history[-50:])) / expected)) < 0.15


def test_clip_grows_when_all_clipped() -> None:
    state = AdaptiveClip(clip_norm=1.0, learning_rate=0.2, count_stddev=0.0)
    grown = state.next(
        unclipped_count=0,
        count=10,
        expected_participants=10,
        rng=np.random.default_rng(0),
    )
    assert grown.clip_norm == pytest.approx(math.exp(0.2 * 0.5))


def test_clip_shrinks_when_none_clipped() -> None:
    state = AdaptiveClip(clip_norm=1.0, learning_rate=0.2, count_stddev=0.0)
    shrunk = state.next(
        unclipped_count=10,
        count=10,
        expected_participants=10,
        rng=np.random.default_rng(0),
    )
    assert shrunk.clip_norm == pytest.approx(math.exp(-0.2 * 0.5))


def test_fraction_uses_expected_denominator() -> None:
    state = AdaptiveClip(clip_norm=1.0, count_stddev=0.0)
    fraction = state.noisy_unclipped_fraction(
        unclipped_count=6,
        count=8,
        expected_participants=10,
        rng=np.random.default_rng(0),
    )
    # (6 - 8 / 2) / 10 + 1 / 2
    assert fraction == pytest.approx(0.7)


def test_fraction_noise_stddev() -> None:
    state = AdaptiveClip(clip_norm=1.0, count_stddev=3.0)
    generator = np.random.default_rng(4)
    fractions = np.array(
        [
            state.noisy_unclipped_fraction(
                unclipped_count=50,
                count=100,
                expected_participants=100,
                rng=generator,
            )
            for _ in range(20_000)
        ]
    )
    assert float(fractions.std()) == pytest.approx(0.03, rel=0.03)
    assert abs(float(fractions.mean()) - 0.5) < 5 * 0.03 / math.sqrt(fractions.size)


def test_state_round_trip() -> None:
    state = AdaptiveClip(
        clip_norm=0.3, target_quantile=0.7, learning_rate=0.1, count_stddev=2.5
    )
    restored = AdaptiveClip.from_dict(json.loads(json.dumps(state.to_dict())))
    assert restored == state


@pytest.mark.parametrize(
    "data",
    [
        {"clip_norm": 1.0},
        {
            "clip_norm": "x",
            "target_quantile": 0.5,
            "learning_rate": 0.2,
            "count_stddev": 1,
        },
        {
            "clip_norm": -1,
            "target_quantile": 0.5,
            "learning_rate": 0.2,
            "count_stddev": 1,
        },
        {
            "clip_norm": 1,
            "target_quantile": 1.5,
            "learning_rate": 0.2,
            "count_stddev": 1,
        },
    ],
)
def test_state_rejects_bad_dict(data: dict[str, object]) -> None:
    with pytest.raises(PrivacyError):
        AdaptiveClip.from_dict(data)


def test_sum_multiplier_rejects_small_count_noise() -> None:
    with pytest.raises(PrivacyError, match="count_stddev"):
        sum_noise_multiplier(1.0, 0.5)


def test_sum_multiplier_without_noise_is_zero() -> None:
    assert sum_noise_multiplier(0.0, 0.0) == 0.0
