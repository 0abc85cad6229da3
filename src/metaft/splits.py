"""k-shot (LM-BFF) and full splits in the seed layout, with a ``manifest.json`` per folder.

Layout written under ``out``::

    k-shot-single/<DOMAIN>/<K>-<seed>/{train,dev,test}.tsv + manifest.json
    k-shot-cross/<group>/<K>-<seed>/{train,dev}.tsv + manifest.json   (concatenation, in group order)

(``full-<seed>`` instead of ``<K>-<seed>`` for ``k=None``.) Every line is ``text \\t domain \\t label``.

Rules, per domain:

* **Test set** (never depends on the k-shot seed): an official file where there is one (SST-2: the 872
  GLUE dev sentences; TREC: its test file; ``--input``: ``--test FILE``), else examples held out once with
  ``HOLDOUT_SEED`` (MR, CR, MPQA, Subj: 2,000; each Amazon domain: 400; ``--input``: 20% per domain).
  Pool texts equal to a test text (normalised: lowercase, whitespace collapsed) of *any* registered domain
  found under the corpora root (or of any domain of the ``--input`` file) are dropped from the pool: SST-2,
  MR and Subj share Rotten Tomatoes sentences, so an own-domain check alone would leak test texts into
  meta-training. Pools (and so splits) therefore never depend on the group a domain is prepared in.
* **Duplicates**: all copies of a normalised text stay in one split. Hold-outs sample whole groups of
  copies; k-shot sampling uses the pool deduplicated by normalised text (first copy in file order).
* **k-shot**: ``random.Random(seed)`` shuffles the deduplicated pool; the first K examples of each label
  are train, the next K of each label dev. **full**: the whole pool, a seeded ``dev_fraction`` dev split.

Checks (every failure is one ``file[:line]: problem`` line and exit code 2 from the CLI):

* **Labels**: every domain needs at least 2 labels (an error names the domain and its only label), the
  domains of a group need the same label set, and every label of a test set must occur in its domain's
  pool. For ``--input`` these name the line: a label of the input that another domain lacks names its
  first line in the input; a ``--test`` label absent from its domain's pool names the test file's line.
  A label whose few examples all went to the held-out test set (or, with ``--k full``, all to dev) is an
  error too.
* **--input duplicates**: repeated texts within a domain are kept (see *Duplicates*) with one counted
  warning; repeats with a *different* label get their own counted warning (the first copy's label wins
  for k-shot sampling). Pool texts that are also in a test set (``--test`` or another domain's hold-out)
  are dropped from the pool as for registered domains, with a counted warning.
* **--input without --test**: a domain too small to hold out any test example is an error.
* **--test**: needs ``--input``; every domain of the input needs test examples, and a test domain that
  is not in the input is an error naming its line. Empty files, bad lines, encodings: see
  :mod:`metaft.corpora`.
* **Output**: a folder that cannot be written (``--out`` under a file, no permission) is a one-line
  error, not a traceback.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .config import PrepareConfig
from .corpora import (
    DOMAINS,
    GROUPS,
    Example,
    corpora_root,
    format_mft_line,
    lookup_domain,
    lookup_group,
    read_user_rows,
    write_mft_tsv,
)
from .errors import ConfigError, DataError
from .fileio import write_json
from .inputs import check_prepared_folder

logger = logging.getLogger(__name__)

HOLDOUT_SEED = 1234  # the one fixed seed of every held-out test set
INPUT_TEST_FRACTION = 0.2  # held out per domain of a user's --input file without --test
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


@dataclass
class DomainData:
    """One domain, ready to split: its pool, its (fixed) test set and the SHA-256 of its sources."""

    name: str
    pool: list[Example]
    test: list[Example]
    test_rule: str
    sources: dict[str, str] = field(default_factory=dict)
    checked: list[str] = field(default_factory=list)  # domains whose test texts were removed from the pool
    dropped: dict[str, int] = field(default_factory=dict)  # pool examples dropped, per test set

    @property
    def labels(self) -> list[str]:
        return sort_labels({ex.label for ex in self.pool + self.test})


def sort_labels(labels) -> list[str]:
    """Numeric labels in numeric order, then the others alphabetically."""
    return sorted(labels, key=lambda s: (0, int(s), s) if s.isdigit() else (1, 0, s))


def normalise(text: str) -> str:
    """The duplicate key of a text: lowercase, whitespace collapsed."""
    return " ".join(text.lower().split())


def _key(ex: Example) -> str:
    return normalise(ex.text) if ex.text_pair is None else f"{normalise(ex.text)}\t{normalise(ex.text_pair)}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hold_out(examples: list[Example], n: int, rng: random.Random) -> tuple[list[Example], list[Example]]:
    """Split off ``n`` examples as whole groups of duplicate texts: ``(rest, held)``, both in input order."""
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(_key(ex), []).append(i)
    order = list(groups.values())
    rng.shuffle(order)
    held: set[int] = set()
    for members in order:
        if len(held) == n:
            break
        if len(held) + len(members) <= n:
            held.update(members)
    rest = [ex for i, ex in enumerate(examples) if i not in held]
    return rest, [ex for i, ex in enumerate(examples) if i in held]


def dedupe(examples: list[Example]) -> list[Example]:
    """Keep the first copy of each normalised text."""
    seen: set[str] = set()
    out = []
    for ex in examples:
        if _key(ex) not in seen:
            seen.add(_key(ex))
            out.append(ex)
    return out


def kshot_split(
    pool: list[Example], k: int, seed: int, deduplicated: bool = False
) -> tuple[list[Example], list[Example]]:
    """LM-BFF: shuffle the deduplicated pool with ``Random(seed)``; first K per label train, next K dev.

    ``deduplicated=True`` says ``pool`` already went through :func:`dedupe` (skips that work).
    """
    order = list(pool) if deduplicated else dedupe(pool)
    random.Random(seed).shuffle(order)
    taken: Counter[str] = Counter()
    train, dev = [], []
    for ex in order:
        if taken[ex.label] < k:
            train.append(ex)
        elif taken[ex.label] < 2 * k:
            dev.append(ex)
        taken[ex.label] += 1
    return train, dev


def full_split(pool: list[Example], dev_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """The whole pool: ``round(dev_fraction * len)`` dev (whole duplicate groups), both shuffled."""
    rng = random.Random(seed)
    train, dev = hold_out(pool, round(dev_fraction * len(pool)), rng)
    rng.shuffle(train)
    rng.shuffle(dev)
    return train, dev


def _check_k(domain: DomainData, unique: list[Example], k: int) -> None:
    counts = Counter(ex.label for ex in unique)
    for label in domain.labels:
        if counts[label] < 2 * k:
            raise ConfigError(
                f"K={k} is too large for domain {domain.name}: label {label!r} has {counts[label]} distinct "
                f"examples in the training pool, and K-shot needs 2*K={2 * k} (K train + K dev)"
            )


def _without_test_texts(domains: list[DomainData], tests: dict[str, set[str]]) -> None:
    """Drop from every pool the texts of every test set in ``tests`` (own domain and the others).

    Related corpora share sentences (SST-2, MR and Subj all hold Rotten Tomatoes snippets), so a pool
    checked only against its own test set would leak another domain's test texts into meta-training.
    """
    every = set().union(*tests.values())
    for domain in domains:
        keys = [_key(ex) for ex in domain.pool]
        for other, test_keys in tests.items():
            n = sum(k in test_keys for k in keys)
            if n:
                domain.dropped[other] = n
        domain.pool = [ex for ex, k in zip(domain.pool, keys) if k not in every]
        domain.checked = list(tests)
        logger.info(
            "%s: pool %d, test %d (%s); dropped pool texts found in test sets: %s",
            domain.name,
            len(domain.pool),
            len(domain.test),
            domain.test_rule,
            domain.dropped or "none",
        )


@contextmanager
def _quiet(log: logging.Logger):
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _registered_split(name: str, root: Path) -> DomainData:
    """A registered domain's pool and fixed test set (official file, or a seeded hold-out)."""
    spec = lookup_domain(name)
    pool, test = spec.read(root)
    sources = {rel: _sha256(root / rel) for rel in spec.files + spec.test_files}
    if spec.test_files:
        rule = f"official test file {', '.join(spec.test_files)}"
    else:
        pool, test = hold_out(pool, spec.holdout, random.Random(HOLDOUT_SEED))
        rule = f"{spec.holdout} examples held out with seed {HOLDOUT_SEED}"
    return DomainData(spec.name, pool, test, rule, sources)


def _load_registered(names: list[str], root: Path) -> list[DomainData]:
    """The named domains, their pools cleared of the test texts of every registered domain present."""
    out = [_registered_split(name, root) for name in names]
    tests = {d.name: {_key(ex) for ex in d.test} for d in out}
    for name, spec in DOMAINS.items():
        if name in tests:
            continue
        if not all((root / rel).is_file() for rel in spec.files + spec.test_files):
            logger.warning("%s is missing under %s: pools are not checked against its test set", name, root)
            continue
        with _quiet(logging.getLogger("metaft.corpora")):  # its warnings belong to runs that use it
            tests[name] = {_key(ex) for ex in _registered_split(name, root).test}
    _without_test_texts(out, {name: tests[name] for name in DOMAINS if name in tests})  # registry order
    return out


def _load_input(config: PrepareConfig) -> list[DomainData]:
    """The domains of a user's file; every domain's test texts are removed from every pool.

    Checks that name a line of the user's files (see the module docstring for the rules).
    """
    path = Path(config.input)
    rows = read_user_rows(path)
    if not rows:
        raise DataError(path, "no examples (only blank lines)")
    examples = [ex for _, ex in rows]
    names = list(dict.fromkeys(ex.domain for ex in examples))
    missing = [d for d in config.domains if d not in names]
    if missing:
        raise ConfigError(f"{path} has no domain {', '.join(missing)}; its domains: {', '.join(names)}")
    first_line = {}
    for lineno, ex in rows:
        first_line.setdefault(ex.domain, lineno)
    for name in names:
        if not _SAFE_NAME.fullmatch(name):
            raise DataError(
                path,
                f"domain name {name!r} cannot be a folder name (use letters, digits, . _ + -)",
                first_line[name],
            )
    test_path = Path(config.test) if config.test else None
    test_rows = read_user_rows(test_path) if test_path else []
    if test_path and not test_rows:
        raise DataError(test_path, "no examples (only blank lines)")
    tests = [ex for _, ex in test_rows]
    selected = [n for n in names if not config.domains or n in config.domains]
    _warn_duplicates(path, rows, selected)
    out = []
    for name in names:
        pool = [ex for ex in examples if ex.domain == name]
        sources = {path.name: _sha256(path)}
        if test_path:
            test = [ex for ex in tests if ex.domain == name]
            if not test:
                raise DataError(test_path, f"no test examples of domain {name!r}")
            sources[test_path.name] = _sha256(test_path)
            rule = f"test file {test_path.name}"
        else:
            n = round(INPUT_TEST_FRACTION * len(pool))
            pool, test = hold_out(pool, n, random.Random(HOLDOUT_SEED))
            rule = f"{INPUT_TEST_FRACTION:.0%} ({n}) held out with seed {HOLDOUT_SEED}"
            if not test:
                raise DataError(
                    path,
                    f"domain {name!r}: no test set could be held out of its {len(pool)} example(s) "
                    f"({INPUT_TEST_FRACTION:.0%}, whole groups of repeated texts); add examples or give --test",
                )
        out.append(DomainData(name, pool, test, rule, sources))
    for lineno, ex in test_rows:
        if ex.domain not in names:
            raise DataError(
                test_path,
                f"domain {ex.domain!r} is not in {path.name} (its domains: {', '.join(names)})",
                lineno,
            )
    _without_test_texts(out, {d.name: {_key(ex) for ex in d.test} for d in out})
    out = [d for d in out if d.name in selected]
    dropped = {d.name: sum(d.dropped.values()) for d in out if d.dropped}
    if dropped:
        logger.warning(
            "%s: dropped %d pool example(s) whose text is also in a test set (%s); the test copies stay",
            path,
            sum(dropped.values()),
            ", ".join(f"{d} {n}" for d, n in dropped.items()),
        )
    _check_input_labels(path, rows, test_path, test_rows, out)
    return out


def _warn_duplicates(path: Path, rows: list[tuple[int, Example]], domains: list[str]) -> None:
    """One counted warning for repeated texts in a domain, one for texts repeated with another label."""
    first: dict[tuple[str, str], tuple[int, str]] = {}
    repeats, conflicts = [], []
    for lineno, ex in rows:
        if ex.domain not in domains:
            continue
        key = (ex.domain, _key(ex))
        if key not in first:
            first[key] = (lineno, ex.label)
            continue
        repeats.append(lineno)
        if ex.label != first[key][1]:
            conflicts.append(f"{lineno} vs {first[key][0]}")
    if repeats:
        logger.warning(
            "%s: %d line(s) repeat an earlier text of their domain (lines %s); copies stay together in one "
            "split and k-shot sampling uses the first copy",
            path,
            len(repeats),
            _first(repeats),
        )
    if conflicts:
        logger.warning(
            "%s: %d repeated text(s) have another label than their first copy (lines %s); the first "
            "copy's label is used for k-shot sampling",
            path,
            len(conflicts),
            _first(conflicts),
        )


def _first(items: list, n: int = 5) -> str:
    return ", ".join(map(str, items[:n])) + (" ..." if len(items) > n else "")


def _check_input_labels(
    path: Path,
    rows: list[tuple[int, Example]],
    test_path: Path | None,
    test_rows: list[tuple[int, Example]],
    domains: list[DomainData],
) -> None:
    """Every test label occurs in its domain's pool, and every domain has the same label set."""
    pool_labels = {d.name: {ex.label for ex in d.pool} for d in domains}
    if test_path:
        for lineno, ex in test_rows:
            if ex.domain in pool_labels and ex.label not in pool_labels[ex.domain]:
                raise DataError(
                    test_path,
                    f"label {ex.label!r} of domain {ex.domain!r} does not occur in its training pool "
                    f"({path.name}: {', '.join(sort_labels(pool_labels[ex.domain])) or 'none'})",
                    lineno,
                )
    else:
        for d in domains:
            only_test = sort_labels({ex.label for ex in d.test} - pool_labels[d.name])
            if only_test:
                label = only_test[0]
                n = sum(ex.label == label for ex in d.test)
                raise DataError(
                    path,
                    f"label {label!r} of domain {d.name!r}: all its {n} example(s) went to the held-out test "
                    "set and none is left for training; add examples of it or give a --test file",
                )
    _check_label_counts(domains, path)
    kept = {ex.uid for d in domains for ex in d.pool}
    for lineno, ex in rows:
        if ex.uid not in kept:
            continue
        lacking = [d for d in domains if ex.label not in pool_labels[d.name]]
        if lacking:
            other = lacking[0].name
            raise DataError(
                path,
                f"label {ex.label!r} (domain {ex.domain!r}) is not a label of domain {other!r} "
                f"({', '.join(sort_labels(pool_labels[other]))}); every domain of a group needs the same labels",
                lineno,
            )


def _check_label_counts(domains: list[DomainData], source: Path | None = None) -> None:
    """Every domain needs at least two labels (an error names the domain and its only label)."""
    for d in domains:
        labels = d.labels
        if len(labels) < 2:
            problem = (
                f"domain {d.name!r} has only one label ({labels[0]!r}) in its pool and test set; "
                "a classification domain needs at least 2"
                if labels
                else f"domain {d.name!r} has no examples"
            )
            if source is None:
                raise ConfigError(problem)
            raise DataError(source, problem)


def _check_name(name: str, what: str) -> None:
    if not _SAFE_NAME.fullmatch(name):
        raise ConfigError(f"{what} name {name!r} cannot be a folder name (use letters, digits, . _ + -)")


def resolve_group(config: PrepareConfig) -> tuple[str, list[DomainData]]:
    """The group name and its loaded domains, from ``input``, ``domains`` or ``group`` (in that order).

    With ``domains`` (or ``input``) a custom ``group`` names the group; a predefined group name is kept only
    when its domains match, otherwise the name is the domains joined by ``+`` (or the input file's stem).
    """
    if config.test and not config.input:
        raise ConfigError("--test needs --input (registered domains have fixed test sets)")
    known = {g.lower() for g in GROUPS}
    custom = config.group if config.group and config.group.lower() not in known else None
    if config.input:
        domains = _load_input(config)
        name = custom or Path(config.input).stem
    elif config.domains:
        names = [lookup_domain(d).name for d in config.domains]
        if len(set(names)) < len(names):
            raise ConfigError(f"a domain is listed twice in {', '.join(config.domains)}")
        predefined = next((g for g, ds in GROUPS.items() if list(ds) == names), None)
        if config.group and config.group.lower() in known and predefined != config.group.lower():
            logger.info(
                "group %s is predefined with other domains; naming this group by its domains", config.group
            )
        name = custom or predefined or "+".join(names)
        domains = _load_registered(names, corpora_root(config.corpora))
    elif config.group:
        names = list(lookup_group(config.group))
        name = next(g for g in GROUPS if g.lower() == config.group.lower())
        domains = _load_registered(names, corpora_root(config.corpora))
    else:
        raise ConfigError(
            "nothing to prepare: give a group (--group), domains (--domains) or a file (--input)"
        )
    _check_name(name, "group")
    _check_label_counts(domains)
    for d in domains:
        only_test = sort_labels({ex.label for ex in d.test} - {ex.label for ex in d.pool})
        if only_test:
            raise ConfigError(
                f"domain {d.name}: label {only_test[0]!r} occurs only in its test set ({d.test_rule}), "
                "not in the training pool"
            )
    label_sets = {d.name: d.labels for d in domains}
    if len({tuple(v) for v in label_sets.values()}) > 1:
        detail = "; ".join(f"{d} {labels}" for d, labels in label_sets.items())
        raise ConfigError(f"the domains of group {name} have different label sets: {detail}")
    return name, domains


def _counts(splits: dict[str, list[Example]], domains: list[str], labels: list[str]) -> dict:
    out = {}
    for split, examples in splits.items():
        c = Counter((ex.domain, ex.label) for ex in examples)
        per_domain = {d: {lab: c[(d, lab)] for lab in labels} for d in domains}
        out[split] = {"total": len(examples), "domains": per_domain}
    return out


def _write_folder(folder: Path, splits: dict[str, list[Example]], manifest: dict) -> Path:
    """Write ``<split>.tsv`` files and a deterministic ``manifest.json`` (no timestamps) into ``folder``."""
    try:
        return _write_files(folder, splits, manifest)
    except OSError as exc:
        raise ConfigError(f"cannot write {folder} ({exc.strerror or exc}); check --out") from None


def _write_files(folder: Path, splits: dict[str, list[Example]], manifest: dict) -> Path:
    files = {}
    for split, examples in splits.items():
        path = write_mft_tsv(folder / f"{split}.tsv", examples)
        files[path.name] = _sha256(path)
    manifest = {
        **manifest,
        "counts": _counts(splits, manifest["domains"], manifest["labels"]),
        "files": files,
    }
    write_json(folder / "manifest.json", manifest, ensure_ascii=False)
    logger.debug("wrote %s (%s)", folder, ", ".join(f"{s} {len(e)}" for s, e in splits.items()))
    return folder


def prepare(config: PrepareConfig) -> list[Path]:
    """Write the k-shot (or full) splits of every seed; returns the written folders (single, then cross)."""
    group, domains = resolve_group(config)
    labels = domains[0].labels
    unique: dict[str, list[Example]] = {}  # k-shot samples from the deduplicated pools
    if config.k is not None:
        for domain in domains:
            unique[domain.name] = dedupe(domain.pool)
            _check_k(domain, unique[domain.name], config.k)
    else:  # check every seed before writing anything
        for seed in config.seeds:
            for domain in domains:
                _check_full_train(domain, full_split(domain.pool, config.dev_fraction, seed)[0], seed)
    out = Path(config.out)
    planned: list[tuple[Path, dict[str, list[Example]], dict]] = []  # folder, splits, manifest
    for seed in config.seeds:
        tag = f"{'full' if config.k is None else config.k}-{seed}"
        common = {
            "format": "metaft-splits/1",
            "labels": labels,
            "k": "full" if config.k is None else config.k,
            "seed": seed,
            "protocol": _protocol(config),
        }
        train_all: list[Example] = []
        dev_all: list[Example] = []
        for domain in domains:
            if config.k is None:
                train, dev = full_split(domain.pool, config.dev_fraction, seed)
            else:
                train, dev = kshot_split(unique[domain.name], config.k, seed, deduplicated=True)
            train_all += train
            dev_all += dev
            meta = {
                "layout": "k-shot-single",
                "name": domain.name,
                **common,
                "domains": [domain.name],
                "test_rule": {domain.name: domain.test_rule},
                "test_texts_removed_from_pool": {domain.name: _removed(domain)},
                "sources": domain.sources,
            }
            folder = out / "k-shot-single" / domain.name / tag
            planned.append((folder, {"train": train, "dev": dev, "test": domain.test}, meta))
        meta = {
            "layout": "k-shot-cross",
            "name": group,
            **common,
            "domains": [d.name for d in domains],
            "test_rule": {d.name: d.test_rule for d in domains},
            "test_texts_removed_from_pool": {d.name: _removed(d) for d in domains},
            "sources": {k: v for d in domains for k, v in d.sources.items()},
        }
        planned.append((out / "k-shot-cross" / group / tag, {"train": train_all, "dev": dev_all}, meta))
    for folder, splits, meta in planned:  # refuse before anything is written
        rendered = {f"{s}.tsv": "".join(map(format_mft_line, exs)).encode("utf-8") for s, exs in splits.items()}
        check_prepared_folder(folder, rendered, meta, config.force)
    return [_write_folder(folder, splits, meta) for folder, splits, meta in planned]


def _check_full_train(domain: DomainData, train: list[Example], seed: int) -> None:
    """``--k full``: a label whose few pool examples all went to dev would be unlearnable."""
    missing = [lab for lab in domain.labels if lab not in {ex.label for ex in train}]
    if missing:
        n = len(dedupe([ex for ex in domain.pool if ex.label == missing[0]]))
        raise ConfigError(
            f"--k full, seed {seed}: label {missing[0]!r} of domain {domain.name} has {n} distinct pool "
            "example(s) and none went to train; add examples of it or lower --dev-fraction"
        )


def _removed(domain: DomainData) -> dict:
    return {"checked_against": domain.checked, "dropped": domain.dropped}


def _protocol(config: PrepareConfig) -> str:
    if config.k is None:
        return (
            f"full pool; {config.dev_fraction:g} of each domain's pool as dev (whole duplicate groups), "
            "random.Random(seed)"
        )
    return (
        "LM-BFF k-shot: pool deduplicated by normalised text (first copy), shuffled with "
        "random.Random(seed); first K per label = train, next K per label = dev"
    )
