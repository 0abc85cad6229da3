"""Each domain of a group, ready to split: its pool and fixed test set (official file or seeded hold-out),
with duplicates and test texts handled and the labels checked. :mod:`metaft.splits` samples from it.

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
  :mod:`metaft.records`.
* **Output**: a folder that cannot be written (``--out`` under a file, no permission) is a one-line
  error, not a traceback.
"""

from __future__ import annotations

import logging
import random
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .config import PrepareConfig
from .corpora import read_user_rows, sort_labels
from .errors import ConfigError, DataError
from .fileio import sha256_file
from .readers import DOMAINS, GROUPS, corpora_root, lookup_domain, lookup_group
from .records import Example

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


def normalise(text: str) -> str:
    """The duplicate key of a text: lowercase, whitespace collapsed."""
    return " ".join(text.lower().split())


def duplicate_key(ex: Example) -> str:
    return normalise(ex.text) if ex.text_pair is None else f"{normalise(ex.text)}\t{normalise(ex.text_pair)}"


def hold_out(examples: list[Example], n: int, rng: random.Random) -> tuple[list[Example], list[Example]]:
    """Split off ``n`` examples as whole groups of duplicate texts: ``(rest, held)``, both in input order."""
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(duplicate_key(ex), []).append(i)
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


def _without_test_texts(domains: list[DomainData], tests: dict[str, set[str]]) -> None:
    """Drop from every pool the texts of every test set in ``tests`` (own domain and the others).

    Related corpora share sentences (SST-2, MR and Subj all hold Rotten Tomatoes snippets), so a pool
    checked only against its own test set would leak another domain's test texts into meta-training.
    """
    every = set().union(*tests.values())
    for domain in domains:
        keys = [duplicate_key(ex) for ex in domain.pool]
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
    sources = {rel: sha256_file(root / rel) for rel in spec.files + spec.test_files}
    if spec.test_files:
        rule = f"official test file {', '.join(spec.test_files)}"
    else:
        pool, test = hold_out(pool, spec.holdout, random.Random(HOLDOUT_SEED))
        rule = f"{spec.holdout} examples held out with seed {HOLDOUT_SEED}"
    return DomainData(spec.name, pool, test, rule, sources)


def _load_registered(names: list[str], root: Path) -> list[DomainData]:
    """The named domains, their pools cleared of the test texts of every registered domain present."""
    out = [_registered_split(name, root) for name in names]
    tests = {d.name: {duplicate_key(ex) for ex in d.test} for d in out}
    for name, spec in DOMAINS.items():
        if name in tests:
            continue
        if not all((root / rel).is_file() for rel in spec.files + spec.test_files):
            logger.warning("%s is missing under %s: pools are not checked against its test set", name, root)
            continue
        with _quiet(logging.getLogger("metaft.records")):  # its warnings belong to runs that use it
            tests[name] = {duplicate_key(ex) for ex in _registered_split(name, root).test}
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
        sources = {path.name: sha256_file(path)}
        if test_path:
            test = [ex for ex in tests if ex.domain == name]
            if not test:
                raise DataError(test_path, f"no test examples of domain {name!r}")
            sources[test_path.name] = sha256_file(test_path)
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
    _without_test_texts(out, {d.name: {duplicate_key(ex) for ex in d.test} for d in out})
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
        key = (ex.domain, duplicate_key(ex))
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
