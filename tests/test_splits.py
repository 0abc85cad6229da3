"""k-shot / full splits: protocol, duplicates, disjointness, determinism, layout and manifests."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from metaft import PrepareConfig, prepare
from metaft.corpora import read_mft_tsv
from metaft.domains import hold_out, normalise
from metaft.errors import ConfigError, DataError
from metaft.records import Example
from metaft.splits import dedupe, full_split, kshot_split

SEEDS = (13, 21, 42, 87, 100)
G1 = ("SST-2", "MR", "CR")


def make(texts_labels, domain="d") -> list[Example]:
    return [Example(f"u{i}", t, lab, domain) for i, (t, lab) in enumerate(texts_labels)]


def keys(path: Path) -> set[str]:
    return {normalise(ex.text) for ex in read_mft_tsv(path)}


@pytest.fixture(scope="module")
def g1_all_seeds(tmp_path_factory, corpora_root) -> Path:
    out = tmp_path_factory.mktemp("g1")
    prepare(PrepareConfig(out=str(out), corpora=str(corpora_root), group="g1", k=16, seeds=SEEDS))
    return out


@pytest.fixture(scope="module")
def amazon_full(tmp_path_factory, corpora_root) -> Path:
    out = tmp_path_factory.mktemp("amazon")
    prepare(PrepareConfig(out=str(out), corpora=str(corpora_root), group="amazon", k=None, seeds=(42,)))
    return out


def test_kshot_first_k_of_shuffled_pool():
    pool = make([(f"text {i}", str(i % 3)) for i in range(90)] + [("TEXT 0", "1")])  # a duplicate of "text 0"
    train, dev = kshot_split(pool, k=4, seed=7)
    order = dedupe(pool)
    assert len(order) == 90
    random.Random(7).shuffle(order)
    for label in "012":
        of_label = [ex for ex in order if ex.label == label]
        assert [ex for ex in train if ex.label == label] == of_label[:4]
        assert [ex for ex in dev if ex.label == label] == of_label[4:8]
    assert Counter(ex.label for ex in train) == Counter(ex.label for ex in dev) == {"0": 4, "1": 4, "2": 4}
    assert kshot_split(pool, 4, 7) == (train, dev)
    assert kshot_split(pool, 4, 8) != (train, dev)


def test_hold_out_keeps_duplicate_groups_together():
    pool = make([(f"t{i % 40}", str(i % 2)) for i in range(100)] + [(f"u{i}", "0") for i in range(50)])
    rest, held = hold_out(pool, 30, random.Random(1234))
    assert len(held) == 30 and len(rest) == 120
    assert not {normalise(e.text) for e in rest} & {normalise(e.text) for e in held}
    assert [e.uid for e in held] == sorted((e.uid for e in held), key=lambda u: int(u[1:]))  # input order
    assert hold_out(pool, 30, random.Random(1234)) == (rest, held)


def test_full_split_disjoint_with_duplicates():
    pool = make([(f"Same  {i % 10}", "0") for i in range(30)] + [(f"x{i}", "1") for i in range(70)])
    train, dev = full_split(pool, 0.1, seed=3)
    assert len(train) + len(dev) == 100 and len(dev) == 10
    assert not {normalise(e.text) for e in train} & {normalise(e.text) for e in dev}


def test_g1_all_seeds_counts_and_disjointness(g1_all_seeds):
    test_sizes = {"SST-2": 872, "MR": 2000, "CR": 2000}
    for seed in SEEDS:
        cross = g1_all_seeds / "k-shot-cross/g1" / f"16-{seed}"
        for split in ("train", "dev"):
            examples = read_mft_tsv(cross / f"{split}.tsv")
            assert Counter((e.domain, e.label) for e in examples) == {
                (d, lab): 16 for d in G1 for lab in "01"
            }
        for domain in G1:
            folder = g1_all_seeds / "k-shot-single" / domain / f"16-{seed}"
            train, dev, test = (keys(folder / f"{s}.tsv") for s in ("train", "dev", "test"))
            n_test = len(read_mft_tsv(folder / "test.tsv"))
            assert (len(train), len(dev), n_test) == (32, 32, test_sizes[domain])
            assert not (train & dev or train & test or dev & test)


def test_cross_is_concatenation_of_singles(g1_all_seeds):
    for split in ("train", "dev"):
        singles = b"".join(
            (g1_all_seeds / "k-shot-single" / d / "16-21" / f"{split}.tsv").read_bytes() for d in G1
        )
        assert (g1_all_seeds / "k-shot-cross/g1/16-21" / f"{split}.tsv").read_bytes() == singles


def test_test_sets_do_not_depend_on_seed(g1_all_seeds):
    for domain in G1:
        tests = {
            (g1_all_seeds / "k-shot-single" / domain / f"16-{s}" / "test.tsv").read_bytes() for s in SEEDS
        }
        trains = {
            (g1_all_seeds / "k-shot-single" / domain / f"16-{s}" / "train.tsv").read_bytes() for s in SEEDS
        }
        assert len(tests) == 1 and len(trains) == len(SEEDS)


def test_rerun_is_byte_identical(g1_all_seeds, prepared_data):
    """prepared_data ran seed 42 alone: same bytes as the 5-seed run, manifests included."""
    files = [f"k-shot-single/{d}/16-42/{n}" for d in G1 for n in ("train.tsv", "dev.tsv", "test.tsv")]
    files += [f"k-shot-cross/g1/16-42/{n}" for n in ("train.tsv", "dev.tsv")]
    files += [f"{Path(f).parent}/manifest.json" for f in files[::3]]  # (other tests may add files there)
    for rel in files:
        assert (prepared_data / rel).read_bytes() == (g1_all_seeds / rel).read_bytes(), rel


def test_no_test_text_of_any_domain_in_train_or_dev(g1_all_seeds):
    """SST-2, MR and Subj share Rotten Tomatoes sentences: pools exclude every domain's test texts."""
    tests = set().union(*(keys(p) for p in g1_all_seeds.glob("k-shot-single/*/16-13/test.tsv")))
    assert len(tests) > 4000
    for path in [*g1_all_seeds.rglob("train.tsv"), *g1_all_seeds.rglob("dev.tsv")]:
        assert not keys(path) & tests, path
    manifest = json.loads((g1_all_seeds / "k-shot-single/MR/16-13/manifest.json").read_text(encoding="utf-8"))
    removed = manifest["test_texts_removed_from_pool"]["MR"]
    assert removed["dropped"]["SST-2"] > 0 and "kitchen" in removed["checked_against"]


def test_single_folders_do_not_depend_on_the_group(tmp_path, corpora_root, prepared_data):
    prepare(PrepareConfig(out=str(tmp_path), corpora=str(corpora_root), domains=("MR",), seeds=(42,)))
    for name in ("train.tsv", "dev.tsv", "test.tsv", "manifest.json"):
        rel = f"k-shot-single/MR/16-42/{name}"
        assert (tmp_path / rel).read_bytes() == (prepared_data / rel).read_bytes()


def test_manifest(prepared_data):
    folder = prepared_data / "k-shot-single/SST-2/16-42"
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["domains"] == ["SST-2"] and manifest["labels"] == ["0", "1"]
    assert (manifest["k"], manifest["seed"], manifest["layout"]) == (16, 42, "k-shot-single")
    assert manifest["counts"]["test"]["domains"]["SST-2"] == {"0": 428, "1": 444}
    assert set(manifest["sources"]) == {"sst2/glue/train.tsv", "sst2/glue/dev.tsv"}
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest


def test_amazon_full(amazon_full):
    for domain in ("books", "dvd", "electronics", "kitchen"):
        folder = amazon_full / "k-shot-single" / domain / "full-42"
        counts = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["counts"]
        assert {s: c["total"] for s, c in counts.items()} == {"train": 1440, "dev": 160, "test": 400}
        train, dev, test = (keys(folder / f"{s}.tsv") for s in ("train", "dev", "test"))
        assert not (train & dev or train & test or dev & test)
    cross = read_mft_tsv(amazon_full / "k-shot-cross/amazon/full-42/train.tsv")
    assert len(cross) == 4 * 1440


def test_trec_six_labels(tmp_path, corpora_root):
    prepare(PrepareConfig(out=str(tmp_path), corpora=str(corpora_root), domains=("trec",), k=16, seeds=(42,)))
    train = read_mft_tsv(tmp_path / "k-shot-cross/TREC/16-42/train.tsv")
    assert Counter(e.label for e in train) == {str(i): 16 for i in range(6)}
    assert len(read_mft_tsv(tmp_path / "k-shot-single/TREC/16-42/test.tsv")) == 500


def test_mpqa_duplicates_never_straddle(tmp_path, corpora_root):
    prepare(PrepareConfig(out=str(tmp_path), corpora=str(corpora_root), domains=("MPQA",), k=64, seeds=(1,)))
    folder = tmp_path / "k-shot-single/MPQA/64-1"
    train, dev, test = (keys(folder / f"{s}.tsv") for s in ("train", "dev", "test"))
    assert len(train) == len(dev) == 128 and len(read_mft_tsv(folder / "test.tsv")) == 2000
    assert not (train & dev or train & test or dev & test)


def _user_file(path: Path) -> Path:
    rows = [f"text {d} {i}\t{d}\t{'pos' if i % 2 else 'neg'}" for d in ("news", "chat") for i in range(50)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_user_input_holds_out_20_percent(tmp_path):
    src = _user_file(tmp_path / "mine.tsv")
    folders = prepare(PrepareConfig(out=str(tmp_path / "out"), input=str(src), k=4, seeds=(5,)))
    assert [f.relative_to(tmp_path / "out").as_posix() for f in folders] == [
        "k-shot-single/news/4-5",
        "k-shot-single/chat/4-5",
        "k-shot-cross/mine/4-5",
    ]
    for domain in ("news", "chat"):
        assert len(read_mft_tsv(tmp_path / "out/k-shot-single" / domain / "4-5/test.tsv")) == 10
    assert Counter(e.label for e in read_mft_tsv(folders[-1] / "train.tsv")) == {"neg": 8, "pos": 8}


def test_user_input_with_test_file_jsonl(tmp_path):
    src = tmp_path / "mine.jsonl"
    src.write_text(
        "".join(json.dumps({"text": f"t{i}", "label": i % 2, "domain": "a"}) + "\n" for i in range(20))
    )
    test = tmp_path / "test.jsonl"
    test.write_text('{"text": "t0", "label": 0, "domain": "a"}\n{"text": "new", "label": 1, "domain": "a"}\n')
    prepare(
        PrepareConfig(out=str(tmp_path / "o"), input=str(src), test=str(test), group="mine", k=4, seeds=(1,))
    )
    folder = tmp_path / "o/k-shot-single/a/4-1"
    assert keys(folder / "test.tsv") == {"t0", "new"}
    # the pool copy of a test text is dropped
    assert "t0" not in keys(folder / "train.tsv") | keys(folder / "dev.tsv")
    missing = tmp_path / "other.jsonl"
    missing.write_text('{"text": "x", "label": 0, "domain": "b"}\n')
    with pytest.raises(DataError, match="no test examples of domain 'a'"):
        prepare(PrepareConfig(out=str(tmp_path / "o"), input=str(src), test=str(missing), k=4, seeds=(1,)))


def test_group_naming_and_label_sets(tmp_path, corpora_root):
    base = dict(out=str(tmp_path), corpora=str(corpora_root), k=4, seeds=(1,))
    with pytest.raises(ConfigError, match=r"group TREC\+MR have different label sets: TREC \[.*'5'\]; MR"):
        prepare(PrepareConfig(domains=("TREC", "MR"), **base))
    with pytest.raises(ConfigError, match="cannot be a folder name"):
        prepare(PrepareConfig(domains=("CR",), group="../x", **base))
    folders = prepare(PrepareConfig(domains=("cr",), group="mine", **base))
    assert folders[-1] == tmp_path / "k-shot-cross/mine/4-1"
