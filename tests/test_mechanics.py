"""MFT mechanics: domain corruption (permute / uniform), the domain head's embedding, class typicality
(normalized space, leave-one-out, own-prototype fraction) and AUROC."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from metaft.config import MetaConfig, StudyConfig, TypicalityConfig
from metaft.errors import ConfigError
from metaft.fileio import save_atomic
from metaft.losses import corrupted_domain_targets, mft_loss
from metaft.modeling import META_FILE, MetaLearner
from metaft.prototypes import auroc, own_prototype_fraction, typicality_scores


def _batch(n=6, t=8, domains=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(5, 40, (n, t), generator=g), "attention_mask": torch.ones(n, t, dtype=torch.long),
            "labels": torch.randint(0, 2, (n,), generator=g), "domains": torch.arange(n) % domains,
            "weights": torch.ones(n)}


# ------------------------------------------------------------------------------------------ corruption

def test_uniform_targets_are_independent_of_the_true_domain():
    domains = torch.tensor([0, 0, 1, 2])  # batch 4, 3 domains: the case where permute is biased
    gen = torch.Generator().manual_seed(3)
    counts = np.zeros((3, 3))
    for _ in range(4000):
        targets = corrupted_domain_targets(domains, 4, gen, "uniform", 3)
        for true, drawn in zip(domains.repeat(4).tolist(), targets.reshape(-1).tolist()):
            counts[true, drawn] += 1
    conditional = counts / counts.sum(axis=1, keepdims=True)  # P(target | true domain), 16000+ draws a row
    assert np.abs(conditional - 1 / 3).max() < 0.02, conditional
    same = np.trace(counts) / counts.sum()
    assert same == pytest.approx(1 / 3, abs=0.01)

    permuted = np.zeros(2)
    for _ in range(4000):
        row = corrupted_domain_targets(domains, 1, gen, "permute")[0]
        permuted += [(row == domains).sum().item(), domains.numel()]
    assert permuted[0] / permuted[1] == pytest.approx(0.375, abs=0.02), "permute keeps the true domain more often"


def test_uniform_targets_reach_domains_the_batch_lacks_and_are_seeded():
    domains = torch.zeros(8, dtype=torch.long)
    a = corrupted_domain_targets(domains, 3, torch.Generator().manual_seed(1), "uniform", 4)
    b = corrupted_domain_targets(domains, 3, torch.Generator().manual_seed(1), "uniform", 4)
    assert a.shape == (3, 8) and torch.equal(a, b)
    assert set(a.reshape(-1).tolist()) == {0, 1, 2, 3}
    assert not torch.equal(a[0], a[1]), "fresh per layer"


def test_permute_keeps_the_multiset_of_the_batch():
    domains = torch.tensor([2, 0, 1, 1, 2, 2, 0])
    targets = corrupted_domain_targets(domains, 5, torch.Generator().manual_seed(4), "permute")
    for row in targets:
        assert sorted(row.tolist()) == sorted(domains.tolist())
    with pytest.raises(ValueError):
        corrupted_domain_targets(domains, 1, torch.Generator(), "shuffle")


def test_corruption_setting_changes_the_loss(tiny_model_dir):
    torch.manual_seed(0)
    model = MetaLearner.build(str(tiny_model_dir), ["a", "b"], ["d0", "d1", "d2"]).train()
    batch = _batch()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    out = model(batch)
    losses = {c: mft_loss(out, batch, generator=torch.Generator().manual_seed(0), corruption=c)["domain"].item()
              for c in ("permute", "uniform")}
    assert losses["permute"] != pytest.approx(losses["uniform"])


# -------------------------------------------------------------------------------------- domain embedding

def test_domain_embedding_off_has_no_embedding_parameters(tiny_model_dir, tmp_path):
    on = MetaLearner.build(str(tiny_model_dir), ["a", "b"], ["d0", "d1"])
    off = MetaLearner.build(str(tiny_model_dir), ["a", "b"], ["d0", "d1"], domain_embedding=False,
                            corruption="uniform")
    assert any("embedding" in n for n, _ in on.domain_head.named_parameters())
    assert [n for n, _ in off.domain_head.named_parameters()] == ["classifier.weight", "classifier.bias"]
    save_atomic(lambda p: off.save(p), tmp_path / "off")
    meta = json.loads((tmp_path / "off" / META_FILE).read_text())
    assert meta["domain_embedding"] is False and meta["corruption"] == "uniform"
    loaded = MetaLearner.load(tmp_path / "off")
    assert loaded.domain_head.embedding is None and loaded.corruption == "uniform"


def test_older_meta_folders_without_the_new_keys_still_load(tiny_model_dir, tmp_path):
    model = MetaLearner.build(str(tiny_model_dir), ["a", "b"], ["d0", "d1"])
    save_atomic(lambda p: model.save(p), tmp_path / "old")
    meta_file = tmp_path / "old" / META_FILE
    meta = json.loads(meta_file.read_text())
    del meta["domain_embedding"], meta["corruption"]
    meta_file.write_text(json.dumps(meta))
    loaded = MetaLearner.load(tmp_path / "old")
    assert loaded.domain_head.embedding is not None and loaded.corruption == "permute"
    assert torch.equal(loaded.domain_head.embedding.weight, model.domain_head.embedding.weight)


def test_settings_are_validated_and_the_cli_maps_on_off(tmp_path):
    from metaft.cli import build_parser
    from metaft.cli.train import make_config

    with pytest.raises(ConfigError, match="corruption"):
        MetaConfig(corruption="shuffle")
    assert MetaConfig(domain_embedding="off").domain_embedding is False  # --meta domain_embedding=off
    with pytest.raises(ConfigError, match="domain_embedding"):
        MetaConfig(domain_embedding="no")
    with pytest.raises(ConfigError, match="space"):
        TypicalityConfig(space="unit")
    args = build_parser().parse_args(["meta-finetune", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"),
                                      "--corruption", "permute", "--domain-embedding"])  # the reference's
    cfg = make_config(args, MetaConfig, "meta")
    assert cfg.corruption == "permute" and cfg.domain_embedding is True
    assert (MetaConfig().corruption, MetaConfig().domain_embedding) == ("uniform", False)  # the defaults
    assert build_parser().parse_args(["run", "--label-noise", "0.2"]).label_noise in ("0.2", 0.2)
    assert StudyConfig.from_dict({"label_noise": 0.2}).ablations == ("no-typicality",)
    with pytest.raises(ConfigError, match="label_noise"):
        StudyConfig(label_noise=1.0)


# -------------------------------------------------------------------------------------------- typicality

# two domains, two labels; 2-D points chosen so that raw and normalized prototypes point differently
TOY_E = np.array([[1.0, 0.0], [10.0, 10.0], [0.0, 1.0], [-1.0, 0.0],   # X: pos, pos, neg, neg
                  [2.0, 1.0], [1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])   # Y: pos, pos, neg, neg
TOY_D = ["X"] * 4 + ["Y"] * 4
TOY_L = ["pos", "pos", "neg", "neg"] * 2


def _cos(a, b):
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


def test_normalized_space_averages_unit_vectors():
    raw, _, _ = typicality_scores(TOY_E, TOY_D, TOY_L, alpha=1.0, space="raw")
    norm, protos, _ = typicality_scores(TOY_E, TOY_D, TOY_L, alpha=1.0, space="normalized")
    u = TOY_E / np.linalg.norm(TOY_E, axis=1, keepdims=True)
    assert np.allclose(protos[("X", "pos")], (u[0] + u[1]) / 2)
    assert norm[0] == pytest.approx(_cos(TOY_E[0], u[0] + u[1]))  # (1,0) vs (1 + 1/sqrt2, 1/sqrt2)
    assert raw[0] == pytest.approx(_cos(TOY_E[0], TOY_E[0] + TOY_E[1]))  # (1,0) vs (11, 10): the long one wins
    assert norm[0] > raw[0]


def test_leave_one_out_scores_against_the_others_of_the_class():
    full, _, _ = typicality_scores(TOY_E, TOY_D, TOY_L, alpha=0.5, space="raw")
    loo, _, _ = typicality_scores(TOY_E, TOY_D, TOY_L, alpha=0.5, space="raw", leave_one_out=True)
    # with two examples a class, leaving i out makes the own prototype the other example itself
    cross_x_pos = _cos(TOY_E[0], (TOY_E[4] + TOY_E[5]) / 2)  # the other domain's prototype is unchanged
    assert loo[0] == pytest.approx(0.5 * _cos(TOY_E[0], TOY_E[1]) + 0.5 * cross_x_pos)
    assert full[0] == pytest.approx(0.5 * _cos(TOY_E[0], TOY_E[0] + TOY_E[1]) + 0.5 * cross_x_pos)
    assert loo[3] == pytest.approx(0.5 * _cos(TOY_E[3], TOY_E[2]) + 0.5 * _cos(TOY_E[3], TOY_E[6] + TOY_E[7]))
    assert (loo <= full + 1e-12).all(), "leaving yourself out can only lower the own-prototype cosine"


def test_own_prototype_fraction_on_a_toy_set():
    # with the example in its prototype every example is closer to its own class, e.g. X's (0,1): cos .71 to
    # the neg prototype (-1,1)/2 against .67 to the pos one (11,10)/2; Y's (0,2): .71 against .32 to (3,1)/2
    assert own_prototype_fraction(TOY_E, TOY_D, TOY_L) == {"X": 1.0, "Y": 1.0}
    # leaving it out, X's (0,1) has only (-1,0) left (cos 0 < .67) and Y's (0,2) only (-1,-1) (-.71 < .32):
    # one example a domain moves to the other class; the rest stay (e.g. Y's (-1,-1): -.71 > -.89)
    assert own_prototype_fraction(TOY_E, TOY_D, TOY_L, leave_one_out=True) == {"X": 0.75, "Y": 0.75}
    assert own_prototype_fraction(TOY_E[:2], ["X", "X"], ["pos", "pos"]) == {"X": None}


def test_auroc_matches_a_hand_computed_case():
    scores, pos = [0.9, 0.4, 0.6, 0.5, 0.4], [True, True, True, False, False]
    # 0.9 beats both (2); 0.4 loses to 0.5, ties 0.4 (0.5); 0.6 beats both (2) -> 4.5 of 6
    assert auroc(scores, pos) == pytest.approx(4.5 / 6)
    assert auroc([1, 2, 3], [False, False, True]) == 1.0
    with pytest.raises(ValueError):
        auroc([1, 2], [True, True])


# ---------------------------------------------------------------------------------------------- probe

def test_probe_separates_distinct_domains_and_is_near_chance_on_identical_ones():
    from metaft.domain_probe import probe_accuracy

    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, (40, 8)), rng.normal(0, 1, (40, 8))
    groups = ["A"] * 40 + ["B"] * 40
    assert probe_accuracy(np.vstack([a, b + 3.0]), groups) >= 0.95
    same = probe_accuracy(np.vstack([a, b]), groups)
    assert abs(same - 0.5) < 0.15, same
    assert probe_accuracy(np.vstack([a, b]), groups, seed=1) == probe_accuracy(np.vstack([a, b]), groups, seed=1)


def test_stratified_folds_keep_every_class_in_every_fold():
    from metaft.domain_probe import stratified_folds

    folds = stratified_folds([0] * 10 + [1] * 5, 5, seed=0)
    for f in range(5):
        assert (folds[:10] == f).sum() == 2 and (folds[10:] == f).sum() == 1


def test_domain_probe_on_texts_with_an_encoder(tiny_model_dir):
    from metaft.domain_probe import domain_probe
    from metaft.hub import load_encoder, load_tokenizer
    from metaft.records import Example

    movie = ["movie film plot acting story", "film plot boring acting", "great movie story", "the film acting"]
    gadget = ["battery screen price", "sound quality screen", "battery broke fast", "price of the screen"]
    distinct = [Example(f"m{i}{j}", t, "pos", "movies") for i, t in enumerate(movie) for j in range(3)]
    distinct += [Example(f"g{i}{j}", t, "pos", "gadgets") for i, t in enumerate(gadget) for j in range(3)]
    encoder, tok = load_encoder(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    sep = domain_probe(distinct, encoder, tok, layers=(0, 3), seed=0)
    assert set(sep["layers"]) == {"0", "3"} and sep["chance"] == 0.5 and sep["n"] == 24
    assert sep["mean"] >= 0.9
    mixed = [Example(f"x{i}{d}", t, "pos", d) for i, t in enumerate(movie + gadget) for d in ("A", "B")] * 2
    same = domain_probe(mixed, encoder, tok, layers=(3,), seed=0)
    assert same["mean"] <= 0.6, "identical texts in both domains cannot be told apart"


# ------------------------------------------------------------------------------------------ label noise

def _cross_folder(folder, n=30):
    from helpers import synthetic
    from metaft.corpora import write_mft_tsv

    folder.mkdir(parents=True)
    write_mft_tsv(folder / "train.tsv", synthetic(n, ["D1", "D2"], 0))
    write_mft_tsv(folder / "dev.tsv", synthetic(12, ["D1", "D2"], 1))
    (folder / "manifest.json").write_text(json.dumps({"layout": "k-shot-cross", "labels": ["neg", "neu", "pos"]}))
    return folder


def test_label_noise_flips_exactly_round_pn_labels_seeded_and_recorded(tmp_path):
    from metaft.corpora import read_mft_tsv
    from metaft.noise import add_label_noise, flipped_mask, noise_record

    src = _cross_folder(tmp_path / "clean")
    before = {name: (src / name).read_bytes() for name in ("train.tsv", "dev.tsv", "manifest.json")}
    rec = add_label_noise(src, tmp_path / "noisy", 0.2, seed=5)
    clean, noisy = read_mft_tsv(src / "train.tsv"), read_mft_tsv(tmp_path / "noisy" / "train.tsv")
    changed = [i for i, (a, b) in enumerate(zip(clean, noisy)) if a.label != b.label]
    assert len(changed) == rec["n_flipped"] == round(0.2 * 30) == 6
    assert changed == [f["index"] for f in rec["flipped"]]
    assert all(a.text == b.text and a.domain == b.domain for a, b in zip(clean, noisy))
    assert noise_record(tmp_path / "noisy") == rec and rec["seed"] == 5 and rec["fraction"] == 0.2
    assert flipped_mask(tmp_path / "noisy")[1].nonzero()[0].tolist() == changed
    assert (tmp_path / "noisy" / "dev.tsv").read_bytes() == before["dev.tsv"], "dev set copied as it is"
    assert {name: (src / name).read_bytes() for name in before} == before, "the prepared folder is untouched"
    again = add_label_noise(src, tmp_path / "again", 0.2, seed=5)
    assert again["flipped"] == rec["flipped"]
    assert (tmp_path / "again" / "train.tsv").read_bytes() == (tmp_path / "noisy" / "train.tsv").read_bytes()
    other = add_label_noise(src, tmp_path / "other", 0.2, seed=6)
    assert [f["index"] for f in other["flipped"]] != changed
    with pytest.raises(ConfigError):
        add_label_noise(src, src, 0.2, seed=5)
    with pytest.raises(ConfigError):
        add_label_noise(src, tmp_path / "x", 1.0, seed=5)


# ------------------------------------------------------------------------------------------------ study

@pytest.fixture(scope="module")
def noisy_study(tiny_model_dir, corpora_root, tmp_path_factory):
    from metaft.study import run_study

    fast = {"epochs": 1, "batch_size": 8, "eval_batch_size": 256, "learning_rate": 1e-4}
    cfg = StudyConfig.from_dict(dict(out=str(tmp_path_factory.mktemp("noisy-study")), corpora=str(corpora_root),
                                     group="g1", k=4, seeds=(42,), model=str(tiny_model_dir), ablations=("multitask",),
                                     jobs=1, pca=False, label_noise=0.25, meta=fast,
                                     finetune={**fast, "test_limit": 32}))
    return cfg, run_study(cfg)


def test_study_reports_domain_probe_typicality_and_label_noise(noisy_study):
    from pathlib import Path

    cfg, study = noisy_study
    assert cfg.ablations == ("multitask", "no-typicality"), "the noise control adds the no-typicality ablation"
    probes = {r["variant"]: r for r in study.domain_probe}
    assert set(probes) == {"mft", "multitask", "no-typicality"}
    assert all(0.0 <= r["after"]["mean"] <= 1.0 and set(r["after"]["layers"]) == {"0", "1", "2", "3"}
               for r in probes.values())
    assert probes["mft"]["before"] == probes["multitask"]["before"], "one pre-trained probe a seed"
    (noise,) = study.label_noise
    assert noise["n"] == 24 and noise["n_flipped"] == 6 and 0.0 <= noise["auroc"] <= 1.0
    assert set(study.typicality[0].own_prototype_fraction) == {"SST-2", "MR", "CR"}
    report = (Path(cfg.out) / "report.md").read_text()
    for heading in ("domain probe", "class typicality", "label-noise positive control"):
        assert f"## Mechanism check: {heading}" in report
    assert "- **mft**: the domain loss " in report and "| mean of the domains |" in report
    assert "label noise: 25% of the meta-training labels flipped" in report


def test_label_noise_touches_only_the_meta_training_split(noisy_study):
    from pathlib import Path

    from metaft.corpora import read_mft_tsv
    from metaft.noise import noise_record

    cfg, _ = noisy_study
    data = Path(cfg.out) / "data"
    clean, noisy = data / "k-shot-cross" / "g1" / "4-42", data / "k-shot-cross-noise0.25" / "g1" / "4-42"
    assert noise_record(noisy)["n_flipped"] == 6 and noise_record(clean) is None
    assert (noisy / "dev.tsv").read_bytes() == (clean / "dev.tsv").read_bytes()
    a, b = read_mft_tsv(clean / "train.tsv"), read_mft_tsv(noisy / "train.tsv")
    assert sum(x.label != y.label for x, y in zip(a, b)) == 6
    clean_rows = {(ex.text, ex.domain, ex.label) for ex in a}
    for domain in ("SST-2", "MR", "CR"):
        single = read_mft_tsv(data / "k-shot-single" / domain / "4-42" / "train.tsv")
        assert {(ex.text, ex.domain, ex.label) for ex in single} <= clean_rows, f"{domain} train is clean"
    meta_cfg = json.loads((Path(cfg.out) / "seed-42" / "meta" / "mft" / "config.json").read_text())
    assert Path(meta_cfg["data_dir"]).resolve() == noisy.resolve(), "the meta stage trains on the noisy copy"


def test_probe_verdict_claims_invariance_only_when_the_interval_is_below_zero():
    from metaft.mechanisms import _probe_verdict
    multitask = {1: 0.70, 2: 0.72, 3: 0.74}
    resolved = _probe_verdict({"mft": {1: 0.60, 2: 0.63, 3: 0.64}, "multitask": multitask})[0]
    unresolved = _probe_verdict({"mft": {1: 0.60, 2: 0.75, 3: 0.73}, "multitask": multitask})[0]
    higher = _probe_verdict({"mft": {1: 0.75, 2: 0.75, 3: 0.76}, "multitask": multitask})[0]
    assert "made the encoder more domain-invariant" in resolved and "[" in resolved
    assert "not resolvably (the interval contains 0)" in unresolved
    assert "did not make the encoder more domain-invariant" in higher


def test_probe_table_names_the_seed_of_each_value():
    from types import SimpleNamespace

    from metaft.mechanisms import probe_lines
    rows = [{"seed": seed, "variant": variant, "before": {"mean": 0.8, "chance": 1 / 3, "folds": 5},
             "after": {"mean": after}}
            for seed, variant, after in [(13, "mft", 0.70), (2, "mft", 0.65), (13, "multitask", 0.72),
                                         (2, "multitask", 0.66)]]
    table = "\n".join(probe_lines(SimpleNamespace(domain_probe=rows)))
    assert "| mft | 80.0 | 67.5 | -12.5 | 2: 65.0, 13: 70.0 |" in table
