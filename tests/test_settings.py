"""Settings declared once: the generated flags, config files, KEY=VALUE overrides, validation, resume check."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from metaft.cli import build_parser, main
from metaft.cli.study import study_config
from metaft.cli.train import make_config
from metaft.config import (
    FinetuneConfig,
    MetaConfig,
    PrepareConfig,
    StudyConfig,
    TypicalityConfig,
    config_from_file,
    reference_behaviour,
    study_config_from,
)
from metaft.errors import ConfigError
from metaft.settings import from_args, parse_text

ROOT = Path(__file__).parents[1]
REFERENCE = {"head_pooling": "pooler", "head": "reinit", "head_normalize": "off"}  # the reference head, spelled out
REFERENCE_FLAGS = ["--head-pooling", "pooler", "--head", "reinit", "--head-normalize", "off"]
REFERENCE_META = {"corruption": "permute", "domain_embedding": True}  # and its domain corruption
REFERENCE_META_FLAGS = ["--corruption", "permute", "--domain-embedding"]


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def run_config(*argv: str) -> StudyConfig:
    return study_config(parse("run", *argv))


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("metaft: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------- the generated flags

def test_the_seed_systems_meta_and_finetune_flags_reach_their_settings(tmp_path):
    meta = make_config(parse(
        "meta-finetune", "--task_name", "g1", "--model_load_dir", "m", "--data_dir", str(tmp_path), "--num_epochs",
        "63", "--seed", "7", "--seq_length=96", "--train_example_num", "96", "--dev_example_num", "90",
        "--batch_size_per_device", "4", "--dev_batch_size_per_device", "2", "--dev_every_step_num", "100",
        "--learning_rate", "5e-5", "--resave_ofrecord", "--weight_decay_rate", "0.02", "--warmup_proportion",
        "0.2", "--model_save_dir", str(tmp_path / "o")), MetaConfig, "meta")
    assert (meta.task_name, meta.model, meta.epochs, meta.seed, meta.max_length) == ("g1", "m", 63.0, 7, 96)
    assert (meta.train_limit, meta.dev_limit, meta.batch_size, meta.eval_batch_size) == (96, 90, 4, 2)
    assert (meta.eval_every, meta.learning_rate, meta.use_cache) == (100, 5e-5, False)
    assert (meta.weight_decay, meta.warmup_ratio, meta.out) == (0.02, 0.2, str(tmp_path / "o"))
    ft = make_config(parse("finetune", "--data_dir", str(tmp_path), "--eval_example_num", "872",
                           "--eval_batch_size_per_device", "3", "--max_seq_length", "64", "--lr", "3e-5"),
                     FinetuneConfig, "finetune")
    assert (ft.test_limit, ft.eval_batch_size, ft.max_length, ft.learning_rate) == (872, 3, 64, 3e-5)
    assert ft.out == f"runs/finetune-{tmp_path.name}-42"  # the stage's default run folder


def test_preprocess_and_prepare_flags_reach_their_settings(tmp_path):
    args = parse("preprocess", str(tmp_path), "--model_load_dir", "m", "--batch_size_per_device", "8",
                 "--max_length", "64", "--pooling", "cls", "--alpha", "0.25", "--aggregation", "mean-cosine",
                 "--resave_ofrecord", "--num_epochs", "4", "--seed", "42", "--task_name", "g1")
    assert (args.model, args.batch_size, args.max_length, args.pooling, args.alpha) == ("m", 8, 64, "cls", 0.25)
    assert (args.aggregation, args.use_cache) == ("mean-cosine", False)
    cfg = from_args(PrepareConfig, parse("prepare", "--domains", "CR", "MR", "--k", "full", "--seeds", "1", "2",
                                         "--dev-fraction", "0.2"))
    assert (cfg.domains, cfg.k, cfg.seeds, cfg.dev_fraction, cfg.group) == (("CR", "MR"), None, (1, 2), 0.2, None)


def test_unset_flags_keep_the_declared_defaults(tmp_path):
    assert make_config(parse("finetune", "--data-dir", str(tmp_path)), FinetuneConfig, "finetune").replace(
        out="x") == FinetuneConfig(data_dir=str(tmp_path), out="x")
    assert make_config(parse("meta-finetune", "--data-dir", str(tmp_path)), MetaConfig, "meta").learning_rate == \
        MetaConfig.learning_rate


@pytest.mark.parametrize("command, shown", [("finetune", "1e-05"), ("meta-finetune", "5e-05")])
def test_help_shows_each_stages_own_default(command, shown, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = "".join(capsys.readouterr().out.split())  # wrapped lines joined back
    assert f"peaklearningrateofAdamW(default:{shown})" in text
    assert "--num_epochs" in text and "--batch_size_per_device" in text and "(default:128)" in text


@pytest.mark.parametrize("argv, check", [
    ([], lambda c: (c.out, c.prepare.group, c.prepare.k, c.seeds, c.ablations) ==
     ("runs/study", "g1", 16, (42,), ())),
    (["--out", "runs/g1", "--seeds", "13", "21", "42", "87", "100", "--ablations", "all"],
     lambda c: c.seeds == (13, 21, 42, 87, 100) and len(c.ablations) == 4 and c.out == "runs/g1"),
    (["--out", "runs/amazon", "--group", "amazon", "--k", "full", "--seeds", "42"],
     lambda c: (c.prepare.group, c.prepare.k, c.seeds) == ("amazon", None, (42,))),
    (["--domains", "CR", "MR", "--meta", "epochs=10", "--meta", "learning_rate=3e-5", "--finetune", "head=keep",
      "--typicality", "pooling=cls", "--meta", "domain_layers=1,3", "--no-pca", "--jobs", "1"],
     lambda c: (c.prepare.group, c.prepare.domains, c.meta.epochs, c.meta.learning_rate, c.meta.batch_size,
                c.finetune.head, c.typicality.pooling, c.meta.domain_layers, c.pca, c.jobs) ==
     (None, ("CR", "MR"), 10.0, 3e-5, 4, "keep", "cls", (1, 3), False, 1)),
])
def test_the_readmes_run_lines_give_the_intended_study(argv, check):
    assert check(run_config(*argv))


@pytest.mark.parametrize("committed", ["g1.yaml", "amazon.yaml"])
def test_config_file_then_flags(committed):
    path = ROOT / "benchmarks" / "configs" / committed
    cfg = run_config("--config", str(path), "--seeds", "1", "--meta", "epochs=2")
    raw = yaml.safe_load(path.read_text())
    assert cfg.seeds == (1,) and cfg.meta.epochs == 2.0 and cfg.prepare.group == raw["group"]
    assert cfg.meta.batch_size == raw["meta"]["batch_size"] and cfg.finetune.epochs == raw["finetune"]["epochs"]
    # the flat layout of earlier versions and the tree give the same study
    tree = {"seeds": raw["seeds"], "model": raw["model"], "ablations": raw["ablations"], "meta": raw["meta"],
            "finetune": raw["finetune"], "prepare": {"group": raw["group"], "k": raw["k"]}}
    assert StudyConfig.from_dict(tree) == StudyConfig.from_dict(raw) == config_from_file(path)


# ---------------------------------------------------------------------- #19 class 4 and 2: bad values

BAD_RUN_FLAGS = [
    (["--meta", "epochs=abc"], "meta.epochs must be a number, got 'abc'"),
    (["--meta", "epochs=inf"], "meta.epochs must be a finite number"),
    (["--finetune", "learning_rate=nan"], "finetune.learning_rate must be a finite number"),
    (["--typicality", "alpha=-inf"], "typicality.alpha must be a finite number"),
    (["--meta", "batch_size=true"], "meta.batch_size must be an integer, got 'true'"),
    (["--meta", "batch_size=2.5"], "meta.batch_size must be an integer"),
    (["--meta", "batch_size=0"], "meta.batch_size must be > 0, got 0"),
    (["--meta", "typicality=maybe"], "meta.typicality must be true or false"),
    (["--meta", "domain_loss=adversarial"], "meta.domain_loss must be one of corrupt, grl, none"),
    (["--meta", "epoch=3"], "unknown setting meta.epoch (did you mean meta.epochs?)"),
    (["--meta", "seed=3"], "meta.seed is not set here"),
    (["--meta", "epochs"], "--meta takes KEY=VALUE"),
    (["--k", "0"], "k must be a positive integer or 'full', got '0'"),
    (["--seeds", "abc"], "seeds must be an integer, got 'abc'"),
    (["--seeds", "-1"], "seeds must be >= 0, got -1"),
    (["--jobs", "inf"], "jobs must be an integer, got 'inf'"),
    (["--dev-fraction", "nan"], "dev_fraction must be a finite number"),
]


@pytest.mark.parametrize("flags, message", BAD_RUN_FLAGS)
def test_a_bad_setting_is_one_line_and_leaves_nothing_behind(flags, message, tmp_path, capsys):
    out = tmp_path / "study"
    err = one_line_error(capsys, ["run", "--out", str(out), *flags])
    assert message in err
    assert not out.exists()  # no config.json to block the corrected rerun, no folders


@pytest.mark.parametrize("text, message", [
    ("seeds: abc", "seeds must be an integer, got 'abc'"),
    ("k: 0", "k must be a positive integer or 'full', got 0"),
    ("k: .inf", "k must be a positive integer or 'full'"),
    ("jobs: true", "jobs must be an integer, got True"),
    ("meta: {epochs: .inf}", "meta.epochs must be a finite number, got inf"),
    ("meta: {epochs: .nan}", "meta.epochs must be a finite number"),
    ("meta: {learning_rate: 1e-5, epochs: abc}", "meta.epochs must be a number, got 'abc'"),
    ("meta: 3", "meta must be a mapping of meta settings, got 3"),
    ("finetune: {batch_size: 2.0}", "finetune.batch_size must be an integer, got 2.0"),
    ("typicality: {pooling: max}", "typicality.pooling must be one of mean, cls, pooler, got 'max'"),
    ("prepare: {group: 7}", "prepare.group must be a string"),
    ("pca: 1", "pca must be true or false, got 1"),
    ("colour: blue", "unknown setting colour"),
])
def test_config_file_errors_name_the_file_and_the_setting(text, message, tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text(text + "\n")
    out = tmp_path / "study"
    err = one_line_error(capsys, ["run", "--config", str(path), "--out", str(out)])
    assert f"{path}: " in err and message in err
    assert not out.exists()


@pytest.mark.parametrize("cls, kwargs, message", [
    (FinetuneConfig, {"learning_rate": math.inf}, "learning_rate must be a finite number"),
    (FinetuneConfig, {"epochs": math.nan}, "epochs must be a finite number"),
    (FinetuneConfig, {"epochs": 1e400}, "epochs must be a finite number"),
    (MetaConfig, {"domain_weight": -math.inf}, "domain_weight must be a finite number"),
    (MetaConfig, {"seed": True}, "seed must be an integer, got True"),
    (MetaConfig, {"batch_size": "8"}, None),  # a number written as text is read as one
    (TypicalityConfig, {"alpha": 1.5}, "alpha must be <= 1, got 1.5"),
    (TypicalityConfig, {"max_length": 2}, "max_length must be > 2, got 2"),
    (PrepareConfig, {"dev_fraction": 0}, "dev_fraction must be > 0"),
    (PrepareConfig, {"seeds": ()}, "give at least one seed"),
    (PrepareConfig, {"seeds": (2**40,)}, "seeds must be <= 4294967295, got 1099511627776"),
])
def test_the_python_api_checks_the_same_rules(cls, kwargs, message):
    if message is None:
        assert cls(**kwargs).batch_size == 8
        return
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("+", r"\+")):
        cls(**kwargs)


@pytest.mark.parametrize("argv, message", [
    (["finetune", "--data-dir", "x", "--learning_rate", "inf"], "learning_rate must be a finite number"),
    (["finetune", "--data-dir", "x", "--num_epochs", "inf"], "epochs must be a finite number"),
    (["meta-finetune", "--data-dir", "x", "--domain-weight", "nan"], "domain_weight must be a finite number"),
    (["preprocess", "x", "--alpha", "nan"], "alpha must be a finite number"),
    (["finetune", "--data-dir", "x", "--batch-size", "2.5"], "batch_size must be an integer"),
])
def test_stage_commands_refuse_non_finite_and_mistyped_values(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


# ------------------------------------------------------------------ #19 class 5: duplicates in lists

@pytest.mark.parametrize("argv, message", [
    (["run", "--seeds", "1", "1"], "seeds lists 1 more than once"),
    (["run", "--domains", "CR", "MR", "CR"], "domains lists CR more than once"),
    (["run", "--ablations", "grl,multitask,grl"], "ablations lists grl more than once"),
    (["run", "--meta", "domain_layers=2,5,2"], "meta.domain_layers lists 2 more than once"),
    (["prepare", "--seeds", "3", "3"], "seeds lists 3 more than once"),
    (["prepare", "--domains", "MR", "MR"], "domains lists MR more than once"),
])
def test_a_list_with_a_value_twice_is_refused(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    err = one_line_error(capsys, [*argv, "--out", str(out)])
    assert message in err and "give each value once" in err
    assert not out.exists()


def test_duplicates_in_config_files_and_the_api_are_refused_too(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"seeds": [4, 4], "ablations": ["grl"]}))
    with pytest.raises(ConfigError, match="seeds lists 4 more than once"):
        config_from_file(path)
    with pytest.raises(ConfigError, match="domain_layers lists 1 more than once"):
        MetaConfig(domain_layers=(1, 1))
    with pytest.raises(ConfigError, match="prepare.domains lists a more than once"):
        StudyConfig.from_dict({"prepare": {"domains": ["a", "b", "a"]}})


# --------------------------------------------------------------------------- the resume refusal

@pytest.fixture
def old_study(tmp_path) -> Path:
    """A study folder as the previous version wrote it: the flat config.json of the committed g1 study."""
    run = tmp_path / "g1"
    run.mkdir()
    shutil.copy(ROOT / "benchmarks" / "results" / "g1-reference-behaviour" / "config.json", run / "config.json")
    return run


def test_a_study_folder_of_the_previous_version_resumes_with_the_same_settings(old_study):
    from metaft.study import check_same_study

    new = study_config_from(config_from_file(ROOT / "benchmarks" / "configs" / "g1.yaml"), {"out": str(old_study)})
    # its config.json predates the head and corruption settings: it ran the reference behaviour, today's defaults
    # do not
    with pytest.raises(ConfigError, match=r"finetune.head: 'reinit' -> 'probe', finetune.head_normalize: 'off' "
                                          r"-> 'auto', finetune.head_pooling: 'pooler' -> 'auto', "
                                          r"meta.corruption: 'permute' -> 'uniform', meta.domain_embedding: True -> "
                                          r"False, meta.head_normalize: 'off' -> 'auto', meta.head_pooling: 'pooler' "
                                          r"-> 'auto'\)"):
        check_same_study(old_study, new)
    cfg = reference_behaviour(new)
    check_same_study(old_study, cfg)  # no error: same study
    check_same_study(old_study, cfg.replace(seeds=(42,), jobs=2))  # seeds and jobs may change
    with pytest.raises(ConfigError, match=r"other settings \(finetune.learning_rate: 1e-05 -> 0.0003\)"):
        check_same_study(old_study, cfg.replace(finetune=cfg.finetune.replace(learning_rate=3e-4)))
    with pytest.raises(ConfigError, match=r"prepare.k: 16 -> 8"):
        check_same_study(old_study, cfg.replace(prepare=cfg.prepare.replace(k=8)))


def test_a_saved_config_that_is_not_valid_is_refused_clearly(old_study, capsys):
    saved = json.loads((old_study / "config.json").read_text())
    (old_study / "config.json").write_text(json.dumps({**saved, "meta": {**saved["meta"], "epochs": "abc"}}))
    err = one_line_error(capsys, ["run", "--config", str(ROOT / "benchmarks/configs/g1.yaml"), "--out",
                                  str(old_study)])
    assert "config.json: the saved settings of this study are not valid (meta.epochs" in err and "--force" in err


def test_changed_from_names_nested_settings_and_counts_missing_ones_as_defaults():
    cfg = StudyConfig()
    saved = cfg.to_dict()
    del saved["meta"]["dropout"]  # written before the setting existed
    assert cfg.changed_from(saved) == {}
    saved["typicality"]["alpha"] = 0.25
    assert cfg.changed_from(saved) == {"typicality.alpha": (0.25, 0.5)}


def test_the_heads_default_to_the_pooled_probe_and_the_reference_head_is_one_mapping_away(capsys):
    from metaft.config import REFERENCE_BEHAVIOUR

    ft, meta = FinetuneConfig(), MetaConfig()
    assert (ft.head_pooling, ft.head, meta.head_pooling, meta.head) == ("auto", "probe", "auto", "reinit")
    assert (meta.corruption, meta.domain_embedding) == ("uniform", False)
    assert REFERENCE_BEHAVIOUR == {**REFERENCE, **REFERENCE_META}
    ref = reference_behaviour(ft)
    assert {k: getattr(ref, k) for k in REFERENCE} == REFERENCE
    ref = reference_behaviour(meta)
    assert {k: getattr(ref, k) for k in REFERENCE_BEHAVIOUR} == REFERENCE_BEHAVIOUR
    study = reference_behaviour(StudyConfig())
    assert (study.meta.head_pooling, study.meta.head, study.finetune.head_pooling, study.finetune.head) == (
        "pooler", "reinit", "pooler", "reinit")
    assert study.meta.head_normalize == study.finetune.head_normalize == "off"
    assert study.finetune.epochs == 64  # the rest of the section is kept
    for command, cls, ref, flags in (("finetune", FinetuneConfig, REFERENCE, REFERENCE_FLAGS),
                                     ("meta-finetune", MetaConfig, {**REFERENCE, **REFERENCE_META},
                                      REFERENCE_FLAGS + REFERENCE_META_FLAGS)):
        args = build_parser().parse_args([command, "--data-dir", "d", *flags])
        assert {k: getattr(make_config(args, cls, command), k) for k in ref} == ref
        with pytest.raises(SystemExit):
            main([command, "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        assert "the reference system's: add " + " ".join(flags) in help_text


@pytest.mark.parametrize("cls", [FinetuneConfig, MetaConfig])
@pytest.mark.parametrize("lacks", [(), ("head_pooling", "head"), ("head_pooling", "head", "head_normalize"),
                                   ("head_normalize",)])
def test_a_run_saved_before_the_new_head_defaults_resumes_only_with_the_reference_head(tmp_path, cls, lacks):
    from metaft.runs import CONFIG_FILE, check_same_config

    saved = reference_behaviour(cls(out=str(tmp_path))).to_dict()  # a run folder of the previous version
    for name in lacks:  # or of a version before the setting existed: the reference head, not today's default
        del saved[name]
    (tmp_path / CONFIG_FILE).write_text(json.dumps(saved))
    check_same_config(tmp_path, reference_behaviour(cls(out=str(tmp_path), resume=True)))  # resumes
    changed = "head: 'reinit' -> 'probe', head_normalize: 'off' -> 'auto', head_pooling: 'pooler' -> 'auto'" if (
        cls is FinetuneConfig) else ("corruption: 'permute' -> 'uniform', domain_embedding: True -> False, "
                                     "head_normalize: 'off' -> 'auto', head_pooling: 'pooler' -> 'auto'")
    with pytest.raises(ConfigError, match=f"cannot resume with different settings \\({changed}\\)"):
        check_same_config(tmp_path, cls(out=str(tmp_path), resume=True))


def test_key_value_text_is_read_by_the_settings_type():
    from metaft.config import MetaSettings

    assert parse_text(MetaSettings, "domain_layers", "[1, 4]") == (1, 4)
    assert parse_text(MetaSettings, "domain_layers", "") == ()
    assert parse_text(MetaSettings, "typicality", "False") is False
    assert parse_text(MetaSettings, "train_limit", "none") is None
    assert parse_text(MetaSettings, "epochs", "2") == 2.0
    assert parse_text(MetaSettings, "compile_mode", "max-autotune") == "max-autotune"


@pytest.mark.parametrize("cls", [FinetuneConfig, MetaConfig])
def test_a_mean_head_run_saved_before_head_normalize_resumes_only_unnormalised(tmp_path, cls):
    from metaft.runs import CONFIG_FILE, check_same_config

    saved = cls(out=str(tmp_path), head_pooling="mean").to_dict()
    del saved["head_normalize"]  # written before the setting existed: its mean head did not normalise
    assert cls.from_saved(saved).head_normalize == "off"
    (tmp_path / CONFIG_FILE).write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match=r"cannot resume with different settings \(head_normalize: 'off' -> "
                                          r"'auto'\)"):
        check_same_config(tmp_path, cls(out=str(tmp_path), head_pooling="mean", resume=True))
    check_same_config(tmp_path, cls(out=str(tmp_path), head_pooling="mean", head_normalize="off", resume=True))


def test_head_normalize_is_auto_on_or_off_from_flags_files_and_overrides(tmp_path):
    args = build_parser().parse_args(["finetune", "--data-dir", "d", "--head-normalize", "on"])
    assert make_config(args, FinetuneConfig, "finetune").head_normalize == "on"
    assert FinetuneConfig().head_normalize == MetaConfig().head_normalize == "auto"
    (tmp_path / "c.yaml").write_text("finetune:\n  head_normalize: on\n  head_pooling: mean\nmeta:\n  "
                                     "head_normalize: off\n")  # YAML reads a bare on / off as a boolean
    study = config_from_file(tmp_path / "c.yaml")
    assert (study.finetune.head_normalize, study.meta.head_normalize) == ("on", "off")
    assert FinetuneConfig.from_dict({"head_normalize": False}).head_normalize == "off"
    assert parse_text(FinetuneConfig, "head_normalize", "off") == "off"
    with pytest.raises(ConfigError, match="head_normalize"):
        FinetuneConfig.from_dict({"head_normalize": "yes"})
