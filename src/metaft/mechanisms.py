"""Mechanism checks of a study: does each part of MFT do what it is meant to?

- **Domain probe** (every study): a linear probe's cross-validated accuracy at telling the domains apart
  from the meta dev set's sentence embeddings at the corrupted layers, for the pre-trained encoder and for
  every meta-learner. The domain loss should leave the encoder *more* domain-invariant (a lower accuracy)
  than the multitask ablation, which has no domain loss.
- **Class typicality**: per domain, the fraction of training examples closer to their own class prototype
  than to any other class's (from ``typicality.json``).
- **Label-noise positive control** (``label_noise`` = P): a seeded fraction P of the meta-training labels is
  flipped; typicality should rank the flipped examples low (AUROC > 0.5) and MFT should beat the
  no-typicality ablation.
"""

from __future__ import annotations

from collections import defaultdict

from .stats import fmt_delta, fmt_per_seed, interval_side, paired, t_interval

TYPICALITY_CHECKS = ("space", "leave_one_out", "own_prototype_fraction")  # typicality.json keys the study keeps
DOMAIN_LOSS_VARIANTS = ("mft", "no-typicality", "grl")  # the meta-learners trained with a domain loss
REFERENCE = "multitask"  # neither typicality nor a domain loss


# ------------------------------------------------------------------------------------------- report

def _pct(x: float) -> str:
    return f"{x * 100:.1f}"


def probe_lines(study) -> list[str]:
    """The domain-probe table of a study (``StudyResults``) and whether the domain loss beat the multitask
    ablation at it."""
    rows = study.domain_probe
    if not rows:
        return []
    before = {r["seed"]: r["before"]["mean"] for r in rows}
    after: dict[str, dict[int, float]] = defaultdict(dict)
    for r in rows:
        after[r["variant"]][r["seed"]] = r["after"]["mean"]
    chance = sum(r["before"]["chance"] for r in rows) / len(rows)
    lines = ["## Mechanism check: domain probe", "",
             f"Accuracy % of a logistic regression telling the domains apart ({rows[0]['before']['folds']}-fold "
             "stratified cross-validation on the meta dev set) from the sentence embeddings (masked mean) at "
             f"the corrupted layers, averaged over those layers; chance ≈ {_pct(chance)}. Lower after meta "
             "fine-tuning = more domain-invariant.", "",
             "| variant | before (pre-trained) | after meta fine-tuning | Δ after − before | per seed (after) |",
             "|---|---|---|---|---|"]
    for variant, per_seed in after.items():
        seeds = sorted(per_seed)
        b = sum(before[s] for s in seeds) / len(seeds)
        a = sum(per_seed.values()) / len(seeds)
        lines.append(f"| {variant} | {_pct(b)} | {_pct(a)} | {(a - b) * 100:+.1f} | "
                     f"{fmt_per_seed(per_seed, decimals=1)} |")
    lines += ["", *_probe_verdict(after), ""]
    return lines


def _probe_verdict(after: dict[str, dict[int, float]]) -> list[str]:
    with_loss = [v for v in DOMAIN_LOSS_VARIANTS if v in after]
    if REFERENCE not in after or not with_loss:
        return [f"Whether the domain loss makes the encoder more domain-invariant needs both a variant with a "
                f"domain loss and the {REFERENCE} ablation (add `--ablations {REFERENCE}`)."]
    out = []
    for variant in with_loss:
        p = paired(after[variant], after[REFERENCE])
        if p is None:
            continue
        if interval_side(p) < 0:
            verdict = f"made the encoder more domain-invariant than the {REFERENCE} ablation"
        elif p["delta_mean"] < 0:
            verdict = (f"left the probe accuracy below the {REFERENCE} ablation's, but not resolvably"
                       + (" (the interval contains 0)" if p["delta_low"] is not None else ""))
        else:
            verdict = f"did not make the encoder more domain-invariant than the {REFERENCE} ablation"
        out.append(f"- **{variant}**: the domain loss {verdict} (probe accuracy "
                   f"{fmt_delta(p)} points, mean paired difference with its 95 % paired t-interval over "
                   f"{p['n']} seed(s); lower on {p['losses']} of them).")
    return out


def typicality_lines(study) -> list[str]:
    """Per seed and domain: share of training examples closer to their own class prototype than to another."""
    rows = [r for r in study.typicality if r.own_prototype_fraction]
    if not rows:
        return []
    domains = list(dict.fromkeys(d for r in rows for d in r.own_prototype_fraction))
    lines = ["## Mechanism check: class typicality", "",
             "Share % of meta-training examples closer (cosine) to their own class prototype than to any other "
             f"class's of their domain ({rows[0].space or 'raw'} space"
             f"{', leaving each example out of its own prototype' if rows[0].leave_one_out else ''}). "
             "Embeddings that carry no class information give about 1 / (number of classes), somewhat more "
             "when the example is part of its own prototype.", "",
             "| seed | " + " | ".join(domains) + " |", "|---" * (len(domains) + 1) + "|"]
    for r in rows:
        fr = r.own_prototype_fraction
        lines.append(f"| {r.seed} | " + " | ".join("–" if fr.get(d) is None else _pct(fr[d]) for d in domains)
                     + " |")
    return lines + [""]


def noise_lines(study) -> list[str]:
    """The label-noise positive control: typicality AUROC and MFT − no-typicality with its 95 % t-interval."""
    rows = study.label_noise
    if not rows:
        return []
    mean_auroc = sum(r["auroc"] for r in rows) / len(rows)
    lines = ["## Mechanism check: label-noise positive control", "",
             f"{_pct(rows[0]['fraction'])} % of the meta-training labels flipped (seeded; recorded in the noisy "
             "folder's manifest.json; dev and test sets untouched). AUROC = probability that a clean example "
             "gets a higher typicality score than a flipped one (0.5 = typicality does not see the noise).", "",
             "| seed | flipped | AUROC | mean score clean / flipped |", "|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['n_flipped']} of {r['n']} | {r['auroc']:.3f} | "
              f"{r['mean_score_clean']:.3f} / {r['mean_score_flipped']:.3f} |" for r in rows]
    lines += ["", f"Mean AUROC over {len(rows)} seed(s): **{mean_auroc:.3f}**.", ""]
    return lines + _noise_effect(study)


def _noise_effect(study) -> list[str]:
    acc: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for u in study.units:
        acc[(u.variant, u.domain)][u.seed] = u.test_accuracy
    domains = list(dict.fromkeys(u.domain for u in study.units))
    lines = ["MFT − no-typicality under this noise (test accuracy points; mean paired difference over seeds "
             "with its 95 % t-interval):", "", "| domain | Δ | 95 % interval | seeds |", "|---|---|---|---|"]
    overall: dict[int, list[float]] = defaultdict(list)
    for d in domains:
        mft, ablation = acc.get(("mft", d), {}), acc.get(("no-typicality", d), {})
        diffs = [mft[s] - ablation[s] for s in sorted(mft) if s in ablation]
        for s in sorted(mft):
            if s in ablation:
                overall[s].append(mft[s] - ablation[s])
        lines.append(_effect_row(d, diffs))
    lines.append(_effect_row("mean of the domains",
                             [sum(v) / len(v) for v in overall.values() if len(v) == len(domains)]))
    return lines + [""]


def _effect_row(name: str, diffs: list[float]) -> str:
    if not diffs:
        return f"| {name} | – | – | 0 |"
    ci = t_interval(diffs)
    mean = sum(diffs) / len(diffs)
    interval = "– (one seed)" if ci is None else f"[{ci['low'] * 100:+.2f}, {ci['high'] * 100:+.2f}]"
    return f"| {name} | {mean * 100:+.2f} | {interval} | {len(diffs)} |"


def report_lines(study) -> list[str]:
    """Every mechanism-check section the study (``StudyResults``) has data for (report.md)."""
    return probe_lines(study) + typicality_lines(study) + noise_lines(study)

