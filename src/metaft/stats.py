"""Statistics over seeds for the report: mean ± sample std, Student t-intervals and paired differences.

One place for them, so every table and plot of a study computes them the same way. A 95 % t-interval of
values x_1..x_n is mean ± t_{0.975, n-1} · s / √n with the sample standard deviation s (ddof = 1); it needs
two values at least. A paired difference compares two variants on the seeds both have (same seed, same
splits), so the spread between seeds that both share drops out.
"""

from __future__ import annotations

import math

# two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1); std is None for fewer than two values."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def t_quantile_975(df: int) -> float:
    """The 97.5 % quantile of Student's t (a table up to 30 degrees of freedom, then Fisher's expansion)."""
    if df < 1:
        raise ValueError("a t-interval needs at least one degree of freedom")
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def t_interval(values: list[float]) -> dict | None:
    """Mean of ``values`` with its 95 % t-interval: ``mean``, ``low``, ``high``, ``half`` (the half-width) and
    ``n``; None for fewer than two values (no spread is known)."""
    n = len(values)
    if n < 2:
        return None
    mean, sd = mean_std(values)
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "half": half, "n": n}


def paired(per_seed: dict[int, float], reference: dict[int, float]) -> dict | None:
    """``per_seed`` − ``reference`` on the seeds both have: ``delta_mean``, its 95 % paired t-interval
    (``delta_low`` / ``delta_high``, None for one seed), ``n`` and the sign counts ``wins`` / ``losses`` /
    ``ties``; None when no seed is shared."""
    diffs = [per_seed[s] - reference[s] for s in per_seed if s in reference]
    if not diffs:
        return None
    ci = t_interval(diffs)
    return {"delta_mean": sum(diffs) / len(diffs), "delta_low": None if ci is None else ci["low"],
            "delta_high": None if ci is None else ci["high"], "n": len(diffs), "wins": sum(x > 0 for x in diffs), "losses": sum(x < 0 for x in diffs),
            "ties": sum(x == 0 for x in diffs)}


def interval_side(p: dict) -> int:
    """+1 / -1 where a paired difference's 95 % interval lies wholly above / below 0; 0 where it contains 0 or
    there is no interval (one seed)."""
    if p.get("delta_low") is None:
        return 0
    return 1 if p["delta_low"] > 0 else -1 if p["delta_high"] < 0 else 0


def fmt_delta(p: dict, scale: float = 100.0) -> str:
    """A paired difference in points with its interval: ``+1.23 [-0.40, +2.86]``, or ``+1.23 (1 seed: no
    interval)``."""
    text = f"{p['delta_mean'] * scale:+.2f}"
    if p.get("delta_low") is None:
        return text + f" ({p['n']} seed: no interval)"
    return text + f" [{p['delta_low'] * scale:+.2f}, {p['delta_high'] * scale:+.2f}]"


def fmt_per_seed(per_seed: dict[int, float], decimals: int = 2, scale: float = 100.0) -> str:
    """Per-seed values labelled with their seed, in numeric seed order: ``13: 69.50, 21: 71.25``."""
    return ", ".join(f"{s}: {per_seed[s] * scale:.{decimals}f}" for s in sorted(per_seed))
