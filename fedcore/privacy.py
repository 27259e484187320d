"""Central differential privacy for federated averaging (DP-FedAvg).

The aggregator makes each round differentially private at the level of devices
(McMahan, Ramage, Talwar and Zhang, "Learning Differentially Private Recurrent
Language Models", ICLR 2018):

1. Each update (a device's delta) is scaled down, if needed, so that the L2 norm of
   all its tensors together is at most the clip norm ``C``: :func:`clip_update`.
2. The clipped updates are summed with equal weights, or with weights capped at 1,
   so one device changes the sum by at most ``C``: :class:`DpSum`.
3. When the round closes, Gaussian noise of standard deviation ``z * C`` is added
   once to the sum: :meth:`DpSum.finalize`. The sum is then divided by the expected
   total weight of a round, ``q * N`` for ``N`` devices that each take part with
   probability ``q``, and not by the number that did take part.

Weighting by example counts, as plain FedAvg does, is dropped: a device's weight
would depend on its data, one device could weigh arbitrarily much, and the actual
total weight in the denominator would itself reveal who took part. With a fixed
denominator the sum's sensitivity is ``C``, so the mean's is ``C / (q N)``.

Optionally the clip norm follows a target quantile of the update norms
(:class:`AdaptiveClip`, Andrew, Thakkar, McMahan and Ramaswamy, "Differentially
Private Learning with Adaptive Clipping", NeurIPS 2021), from a noised count of
the updates that were not clipped.

Noise comes from a generator seeded with 128 bits from :mod:`secrets`
(:func:`secure_rng`). A fixed seed exists for tests only.

NOTE: the noise is sampled in floating point, which is known to leak through the
low-order bits of the samples (Mironov 2012 showed it for the Laplace
mechanism); the guarantee stated by :mod:`fedcore.accounting` ignores this effect.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from fedcore.errors import FedCoreError
from fedcore.update import TensorSpec

logger = logging.getLogger(__name__)

Float64Array = npt.NDArray[np.float64]


class PrivacyError(FedCoreError, ValueError):
    """Invalid privacy settings, or an update that cannot be clipped."""


def secure_rng(seed: int | None = None) -> np.random.Generator:
    """Return a PCG64 generator for privacy noise.

    Parameters
    ----------
    seed
        ``None`` (production) seeds with 128 bits from :func:`secrets.randbits`, so
        the noise cannot be predicted or replayed. An integer gives a reproducible
        generator for tests and simulations only.
    """
    entropy = secrets.randbits(128) if seed is None else seed
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


class ClipResult(NamedTuple):
    """A clipped update, with the norm it had before clipping."""

    tensors: dict[str, Float64Array]
    norm: float
    was_clipped: bool


def update_norm(tensors: Mapping[str, npt.ArrayLike]) -> float:
    """Return the L2 norm of all tensors together, computed in float64.

    The values are scaled by their largest magnitude first, so the sum of squares
    neither overflows for huge updates nor underflows for tiny ones.

    Raises
    ------
    PrivacyError
        If a tensor is not floating point or contains NaN or Inf.
    """
    arrays = _float_arrays(tensors)
    largest = max(
        (float(np.max(np.abs(a))) for a in arrays.values() if a.size), default=0.0
    )
    if largest == 0.0:
        return 0.0
    squares = sum(float(np.vdot(a / largest, a / largest)) for a in arrays.values())
    return largest * math.sqrt(squares)


def _float_arrays(tensors: Mapping[str, npt.ArrayLike]) -> dict[str, Float64Array]:
    arrays: dict[str, Float64Array] = {}
    for name, tensor in tensors.items():
        array = np.asarray(tensor)
        if array.dtype.kind != "f":
            # Integer or bool tensors could not be scaled or noised, so their
            # values would reach the model with no privacy at all.
            raise PrivacyError(
                f"tensor {name!r} has dtype {array.dtype}: differential privacy "
                "needs every tensor of an update to be floating point"
            )
        wide = array.astype(np.float64, copy=False)
        if not np.isfinite(wide).all():
            raise PrivacyError(
                f"tensor {name!r} contains NaN or Inf: reject the update before "
                "clipping"
            )
        arrays[name] = wide
    return arrays


def clip_update(tensors: Mapping[str, npt.ArrayLike], clip_norm: float) -> ClipResult:
    """Scale an update so that the L2 norm of all its tensors together is at most C.

    An update whose norm is at most ``clip_norm`` is returned unchanged (in
    float64). A longer one is multiplied by ``clip_norm / norm``, and if rounding
    left the result a few ulps above ``clip_norm``, it is scaled down again, so the
    returned norm never exceeds ``clip_norm`` as computed by :func:`update_norm`.

    Parameters
    ----------
    tensors
        The update: floating-point tensors by name.
    clip_norm
        The bound ``C``, a finite number > 0.

    Returns
    -------
    ClipResult
        ``(tensors, norm, was_clipped)``: float64 copies of the clipped tensors,
        the norm before clipping, and whether it exceeded ``clip_norm``.

    Raises
    ------
    PrivacyError
        If ``clip_norm`` is invalid or a tensor is not floating point or finite.
    """
    _check_positive("clip_norm", clip_norm)
    arrays = _float_arrays(tensors)
    norm = update_norm(arrays)
    if norm <= clip_norm:
        return ClipResult({n: a.copy() for n, a in arrays.items()}, norm, False)
    factor = clip_norm / norm
    clipped = {name: array * factor for name, array in arrays.items()}
    for _ in range(8):
        if update_norm(clipped) <= clip_norm:
            break
        factor *= 1.0 - 4 * np.finfo(np.float64).eps
        clipped = {name: array * factor for name, array in arrays.items()}
    else:
        raise PrivacyError(f"could not scale an update of norm {norm!r} to {clip_norm}")
    return ClipResult(clipped, norm, True)


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise PrivacyError(f"{name} is {value!r}: expected a finite number > 0")


def _check_non_negative(name: str, value: float) -> None:
    if isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise PrivacyError(f"{name} is {value!r}: expected a finite number >= 0")


def capped_weight(num_examples: int, cap: int) -> float:
    """Return McMahan et al.'s capped weight ``min(num_examples / cap, 1)``.

    Devices with at least ``cap`` examples weigh 1, smaller ones proportionally
    less, so no weight exceeds 1 and the sum's sensitivity stays ``C``. The
    denominator is then ``q`` times the sum of the capped weights of the whole
    population, which the deployment must know in advance. With equal weights it
    is ``q * N``.
    """
    if isinstance(num_examples, bool) or num_examples < 0:
        raise PrivacyError(f"num_examples is {num_examples!r}: expected >= 0")
    if isinstance(cap, bool) or cap < 1:
        raise PrivacyError(f"cap is {cap!r}: expected a positive integer")
    return min(num_examples / cap, 1.0)


class DpSum:
    """Streaming sum of clipped updates, noised once when the round closes.

    Updates are clipped as they are added and summed in float64, so memory stays at
    one accumulator per tensor.

    Parameters
    ----------
    reference
        Names and shapes every added update must have.
    clip_norm
        The clip norm ``C`` of this round.
    """

    def __init__(self, reference: Mapping[str, TensorSpec], clip_norm: float) -> None:
        _check_positive("clip_norm", clip_norm)
        self.clip_norm = float(clip_norm)
        self._sums = {
            name: np.zeros(spec.shape, dtype=np.float64)
            for name, spec in reference.items()
        }
        self.count = 0
        self.unclipped_count = 0
        self.total_weight = 0.0
        self._finalized = False

    def add(
        self, tensors: Mapping[str, npt.ArrayLike], *, weight: float = 1.0
    ) -> ClipResult:
        """Clip one update to the clip norm and add it with a weight in ``[0, 1]``.

        The update is checked before anything is added, so a rejected update
        leaves the sum unchanged.

        Returns
        -------
        ClipResult
            The clipping outcome, for logs and the adaptive clip norm.

        Raises
        ------
        PrivacyError
            If the sum was finalized, the weight is outside ``[0, 1]``, or the
            tensors differ from the reference or cannot be clipped.
        """
        if self._finalized:
            raise PrivacyError(
                "the sum was already finalized: start a new DpSum for the next round"
            )
        if isinstance(weight, bool) or not 0.0 <= weight <= 1.0:
            raise PrivacyError(
                f"weight is {weight!r}: expected a number in [0, 1], so that one "
                "device moves the sum by at most the clip norm"
            )
        if set(tensors) != set(self._sums):
            raise PrivacyError(
                f"update tensors {sorted(tensors)} differ from "
                f"the model's {sorted(self._sums)}"
            )
        for name, total in self._sums.items():
            shape = np.shape(tensors[name])
            if shape != total.shape:
                raise PrivacyError(
                    f"tensor {name!r} has shape {shape}, expected {total.shape}"
                )
        result = clip_update(tensors, self.clip_norm)
        for name, array in result.tensors.items():
            self._sums[name] += weight * array
        self.count += 1
        self.unclipped_count += int(not result.was_clipped)
        self.total_weight += float(weight)
        return result

    def finalize(
        self,
        *,
        expected_weight: float,
        noise_multiplier: float,
        rng: np.random.Generator,
    ) -> dict[str, Float64Array]:
        """Add Gaussian noise to the sum once and return the noisy mean delta.

        Each coordinate of the sum gets noise of standard deviation
        ``noise_multiplier * clip_norm``, and the result is divided by
        ``expected_weight``: ``(sum + N(0, (z C)^2 I)) / (q N)``. A round with no
        updates still returns noise, because an empty round must look like any
        other.

        Parameters
        ----------
        expected_weight
            Expected total weight of a round, fixed before the round: ``q * N``
            (the expected number of participants) with the default weight 1.
        noise_multiplier
            ``z``, the noise standard deviation over the clip norm; 0 gives the
            clipped mean with no privacy. With adaptive clipping, pass
            :func:`sum_noise_multiplier` of the combined multiplier.
        rng
            Noise generator: :func:`secure_rng` in production.

        Raises
        ------
        PrivacyError
            If a setting is invalid or the sum was already finalized, since noising
            it twice would spend the privacy budget twice.
        """
        if self._finalized:
            raise PrivacyError(
                "the sum was already finalized: noising it again would spend "
                "privacy budget a second time"
            )
        _check_positive("expected_weight", expected_weight)
        _check_non_negative("noise_multiplier", noise_multiplier)
        self._finalized = True
        stddev = noise_multiplier * self.clip_norm
        mean: dict[str, Float64Array] = {}
        for name in sorted(self._sums):
            total = self._sums[name]
            noise = rng.normal(0.0, stddev, size=total.shape) if stddev > 0 else 0.0
            mean[name] = (total + noise) / expected_weight
        logger.info(
            "noised the sum of %d updates (%d unclipped, clip norm %.4g) with "
            "noise multiplier %.4g, divided by the expected weight %.4g",
            self.count,
            self.unclipped_count,
            self.clip_norm,
            noise_multiplier,
            expected_weight,
        )
        return mean


def sum_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """Return the noise multiplier for the sum so that the round's total is ``z``.

    With adaptive clipping each round releases two Gaussian queries: the sum of
    clipped updates (sensitivity ``C``, noise ``z_sum * C``) and the count of
    unclipped updates with each bit shifted to ``+-1/2`` (sensitivity 1/2, noise
    ``count_stddev``). Together they are one Gaussian mechanism with
    ``z^-2 = z_sum^-2 + (2 count_stddev)^-2`` (Andrew et al. 2021, Theorem 1), so
    ``z_sum = (z^-2 - (2 count_stddev)^-2)^(-1/2)``. TensorFlow Federated's
    ``DifferentiallyPrivateFactory.gaussian_adaptive`` computes the same value.

    Raises
    ------
    PrivacyError
        If ``count_stddev <= noise_multiplier / 2``, since the count alone would
        then spend the whole budget: raise ``count_stddev`` (Andrew et al.
        recommend ``expected participants / 20``) or lower ``noise_multiplier``.
    """
    _check_non_negative("noise_multiplier", noise_multiplier)
    _check_non_negative("count_stddev", count_stddev)
    if noise_multiplier == 0:
        return 0.0
    if 2 * count_stddev <= noise_multiplier:
        raise PrivacyError(
            f"count_stddev {count_stddev} is too small for noise multiplier "
            f"{noise_multiplier}: expected count_stddev > noise_multiplier / 2; "
            "raise count_stddev or lower the noise multiplier"
        )
    return float((noise_multiplier**-2 - (2 * count_stddev) ** -2) ** -0.5)


def combined_noise_multiplier(sum_multiplier: float, count_stddev: float) -> float:
    """Return the noise multiplier of the sum and count queries taken together.

    The inverse of :func:`sum_noise_multiplier`: the value the accountant needs.
    """
    _check_non_negative("sum_multiplier", sum_multiplier)
    _check_non_negative("count_stddev", count_stddev)
    if sum_multiplier == 0 or count_stddev == 0:
        return 0.0
    return float((sum_multiplier**-2 + (2 * count_stddev) ** -2) ** -0.5)


@dataclass(frozen=True, kw_only=True)
class AdaptiveClip:
    """Clip norm that tracks a target quantile of the update norms.

    After each round, ``C <- C * exp(-learning_rate * (b - target_quantile))``,
    where ``b`` is the noisy fraction of updates that were not clipped (Andrew et
    al. 2021, geometric update). With ``b`` above the target the norm shrinks,
    below it the norm grows, by at most a factor ``exp(learning_rate)`` a round.

    Attributes
    ----------
    clip_norm
        The current clip norm ``C``, > 0.
    target_quantile
        Target fraction ``gamma`` of unclipped updates, in ``[0, 1]``; 0.5 clips to
        the median norm.
    learning_rate
        ``eta_C``, > 0; Andrew et al. recommend 0.2.
    count_stddev
        ``sigma_b``, standard deviation of the noise on the count of unclipped
        updates; 0 disables that noise (no privacy for the count).
    """

    clip_norm: float
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_stddev: float

    def __post_init__(self) -> None:
        _check_positive("clip_norm", self.clip_norm)
        _check_positive("learning_rate", self.learning_rate)
        _check_non_negative("count_stddev", self.count_stddev)
        if not 0.0 <= self.target_quantile <= 1.0:
            raise PrivacyError(
                f"target_quantile is {self.target_quantile!r}: "
                "expected a number in [0, 1]"
            )

    def noisy_unclipped_fraction(
        self,
        *,
        unclipped_count: int,
        count: int,
        expected_participants: float,
        rng: np.random.Generator,
    ) -> float:
        """Estimate the fraction of unclipped updates with Gaussian noise.

        Each update contributes ``+1/2`` if it was not clipped and ``-1/2`` if it
        was, so one device moves the sum by at most 1/2. The sum gets noise of
        standard deviation ``count_stddev``, is divided by the expected number of
        participants and shifted back by 1/2, then clamped to ``[0, 1]``.
        """
        if not 0 <= unclipped_count <= count:
            raise PrivacyError(
                f"unclipped_count {unclipped_count} is outside 0..count ({count})"
            )
        _check_positive("expected_participants", expected_participants)
        centred = unclipped_count - 0.5 * count
        if self.count_stddev > 0:
            centred += float(rng.normal(0.0, self.count_stddev))
        return min(1.0, max(0.0, centred / expected_participants + 0.5))

    def next(
        self,
        *,
        unclipped_count: int,
        count: int,
        expected_participants: float,
        rng: np.random.Generator,
    ) -> AdaptiveClip:
        """Return the state for the next round after a round's clipping outcome.

        Parameters
        ----------
        unclipped_count, count
            Updates of the round that were not clipped, and all updates:
            :attr:`DpSum.unclipped_count` and :attr:`DpSum.count`.
        expected_participants
            ``q * N``, fixed before the round.
        rng
            Noise generator: :func:`secure_rng` in production.
        """
        fraction = self.noisy_unclipped_fraction(
            unclipped_count=unclipped_count,
            count=count,
            expected_participants=expected_participants,
            rng=rng,
        )
        clip_norm = self.clip_norm * math.exp(
            -self.learning_rate * (fraction - self.target_quantile)
        )
        logger.debug(
            "clip norm %.4g -> %.4g (noisy unclipped fraction %.3f, target %.3f)",
            self.clip_norm,
            clip_norm,
            fraction,
            self.target_quantile,
        )
        return AdaptiveClip(
            clip_norm=clip_norm,
            target_quantile=self.target_quantile,
            learning_rate=self.learning_rate,
            count_stddev=self.count_stddev,
        )

    def to_dict(self) -> dict[str, float]:
        """Serialize as a dict of floats, to store beside the model."""
        return {
            "clip_norm": self.clip_norm,
            "target_quantile": self.target_quantile,
            "learning_rate": self.learning_rate,
            "count_stddev": self.count_stddev,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdaptiveClip:
        """Rebuild the state from :meth:`to_dict` output.

        Raises
        ------
        PrivacyError
            If a field is missing or not a valid number.
        """
        fields = ("clip_norm", "target_quantile", "learning_rate", "count_stddev")
        missing = [name for name in fields if name not in data]
        if missing:
            raise PrivacyError(f"adaptive clip state lacks the fields {missing}")
        try:
            values = {name: float(data[name]) for name in fields}
        except (TypeError, ValueError) as exc:
            raise PrivacyError(
                f"adaptive clip state {dict(data)!r} has a field that is not a number"
            ) from exc
        return cls(**values)
