"""Issue 19, class 1: inputs changed under the same path are refused (naming what changed), never reused.

Every reuse path is covered: ``prepare`` over an existing folder, a finished or half-finished stage run
(``--resume``), a study's finished units (split files, typicality scores, start model) and its typicality
file. ``--force`` redoes the work; a study report never mixes results of old and new inputs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from helpers import cli_error_line, ft_config, write_task
from metaft.cli import main
from metaft.config import StudyConfig
from metaft.errors import ConfigError
from metaft.inputs import INPUTS_FILE, file_sha256
from metaft.stages import finetune
from metaft.study import run_study

WORDS = {"0": "bad terrible awful boring slow hate".split(), "1": "good great nice fine love fast".split()}
FAST = {"meta": {"epochs": 1, "batch_size": 8, "eval_batch_size": 64, "learning_rate": 1e-4, "eval_every": 100},
        "finetune": {"epochs": 1, "batch_size": 8, "eval_batch_size": 64, "learning_rate": 1e-4, "eval_every": 50}}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def user_lines(domains=("book", "film"), n=30) -> list[str]:
    """``text<TAB>domain<TAB>label`` lines: n distinct texts per domain, labels alternating."""
    lines = []
    for d in domains:
        for i in range(n):
            label = str(i % 2)
            words = WORDS[label]
            lines.append(f"the {d} is {words[i % 6]} and {words[(i // 2) % 6]} {'very ' * (i // 12)}"
                         f"{'really ' * (i % 3)}\t{d}\t{label}")
    return lines


def flip_labels(lines: list[str], domain: str) -> list[str]:
    out = []
    for line in lines:
        text, d, label = line.split("\t")
        out.append(f"{text}\t{d}\t{1 - int(label) if d == domain else label}")
    return out


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha(p) for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------- prepare

def prepare_argv(source: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare", "--input", str(source), "--k", "4", "--seeds", "1", "2", "--out", str(out), *extra]


def test_prepare_refuses_a_folder_of_other_data_and_names_the_change(tmp_path, capsys):
    source, out = write(tmp_path / "mine.tsv", user_lines()), tmp_path / "data"
    assert main(["-q", *prepare_argv(source, out)]) == 0
    before = snapshot(out)
    old_sha = file_sha256(source)
    write(source, flip_labels(user_lines(), "film"))
    err = cli_error_line(capsys, prepare_argv(source, out))
    assert err.startswith(f"{out}/k-shot-single/film/4-1: holds splits of other data (")
    assert "train.tsv" in err and f"mine.tsv {old_sha[:12]} -> {file_sha256(source)[:12]}" in err
    assert "--force" in err
    assert snapshot(out) == before  # nothing written, not even the folders of the unchanged domain
    assert main(["-q", *prepare_argv(source, out, "--force")]) == 0
    after = snapshot(out)
    assert after["k-shot-single/book/4-1/train.tsv"] == before["k-shot-single/book/4-1/train.tsv"]
    assert after["k-shot-single/film/4-1/train.tsv"] != before["k-shot-single/film/4-1/train.tsv"]
    assert after["k-shot-cross/mine/4-2/train.tsv"] != before["k-shot-cross/mine/4-2/train.tsv"]


def test_prepare_again_on_the_same_data_is_fine(tmp_path, capsys):
    source, out = write(tmp_path / "mine.tsv", user_lines()), tmp_path / "data"
    assert main(["-q", *prepare_argv(source, out)]) == 0
    before = snapshot(out)
    assert main(["-q", *prepare_argv(source, out)]) == 0
    write(source, ["", *user_lines(), ""])  # other bytes, the same examples: the same splits
    assert main(["-q", *prepare_argv(source, out)]) == 0
    after = snapshot(out)
    assert {k: v for k, v in after.items() if not k.endswith("manifest.json")} == \
           {k: v for k, v in before.items() if not k.endswith("manifest.json")}


def test_prepare_refuses_a_hand_edited_split_file(tmp_path, capsys):
    source, out = write(tmp_path / "mine.tsv", user_lines()), tmp_path / "data"
    assert main(["-q", *prepare_argv(source, out)]) == 0
    train = out / "k-shot-cross" / "mine" / "4-2" / "train.tsv"
    train.write_text(train.read_text().replace("\tbook\t0", "\tbook\t1", 1))
    err = cli_error_line(capsys, prepare_argv(source, out))
    assert err.startswith(f"{train.parent}: holds splits of other data (train.tsv would change; the same "
                          "sources give other splits now)")


# --------------------------------------------------------------------------------------------- stage runs

@pytest.fixture
def finished(tiny_model_dir, tmp_path) -> tuple[Path, Path, Path]:
    """A finished fine-tuning run on its own copies of a task and of the tiny model."""
    data, model = write_task(tmp_path / "task"), tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    out = tmp_path / "run"
    finetune(ft_config(data, model, out, epochs=1, eval_every=0))
    return data, model, out


def test_a_finished_run_records_what_it_was_trained_on(finished):
    data, model, out = finished
    inputs = json.loads((out / INPUTS_FILE).read_text())
    assert {k: inputs[k] for k in ("train.tsv", "dev.tsv", "test.tsv")} == \
           {k: file_sha256(data / k) for k in ("train.tsv", "dev.tsv", "test.tsv")}
    assert len(inputs["model"]) == 64


@pytest.mark.parametrize("changed", ["train.tsv", "dev.tsv", "test.tsv"])
def test_resume_refuses_a_run_whose_split_files_changed(finished, changed):
    data, model, out = finished
    lines = (data / changed).read_text().splitlines()
    text, domain, label = lines[0].split("\t")
    lines[0] = f"{text}\t{domain}\t{'neg' if label != 'neg' else 'pos'}"
    (data / changed).write_text("\n".join(lines) + "\n")
    results = (out / "results.json").read_bytes()
    with pytest.raises(ConfigError, match=rf"{out}: was trained on other inputs .*\({changed} \w{{12}} -> "
                                          rf"\w{{12}}\).*--force"):
        finetune(ft_config(data, model, out, epochs=1, eval_every=0, resume=True))
    assert (out / "results.json").read_bytes() == results
    redone = finetune(ft_config(data, model, out, epochs=1, eval_every=0, force=True))
    assert json.loads((out / INPUTS_FILE).read_text())[changed] == file_sha256(data / changed)
    assert redone.num_examples["train"] == 48


def test_resume_refuses_a_run_whose_start_model_changed(finished):
    import torch
    from safetensors.torch import load_file, save_file

    data, model, out = finished
    weights = load_file(str(model / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] + torch.ones_like(weights[name])
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"was trained on other inputs .*\(model \w{12} -> \w{12}\)"):
        finetune(ft_config(data, model, out, epochs=1, eval_every=0, resume=True))


def test_resume_of_a_half_finished_run_checks_its_inputs_too(finished):
    data, model, out = finished
    (out / "results.json").unlink()  # as if killed before the end
    (data / "dev.tsv").write_text((data / "dev.tsv").read_text() + "good fine\tbook\tpos\n")
    with pytest.raises(ConfigError, match=r"trained on other inputs .*dev\.tsv"):
        finetune(ft_config(data, model, out, epochs=1, eval_every=0, resume=True))


# -------------------------------------------------------------------------------------------------- study

@pytest.fixture(scope="module")
def input_study(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("stale-study")
    source = write(root / "mine.tsv", user_lines())
    cfg = StudyConfig.from_dict(dict(out=str(root / "run"), input=str(source), group=None, k=4, seeds=(1,),
                                     model=str(tiny_model_dir), jobs=1, pca=False, **FAST))
    run_study(cfg)
    return cfg, source


def test_a_study_refuses_a_finished_meta_stage_whose_typicality_scores_changed(input_study):
    cfg, _ = input_study
    run = Path(cfg.out)
    scores = run / "data" / "k-shot-cross" / "mine" / "4-1" / "typicality.tsv"
    original = scores.read_text()
    try:
        lines = original.splitlines()
        uid, domain, label, score = lines[1].split("\t")
        lines[1] = "\t".join([uid, domain, label, f"{float(score) / 2:.6f}"])
        scores.write_text("\n".join(lines) + "\n")
        with pytest.raises(ConfigError, match=r"seed-1/meta/mft: was trained on other inputs .*typicality\.tsv"):
            run_study(cfg)
    finally:
        scores.write_text(original)
    run_study(cfg)  # restored: every unit is reused again


def test_a_study_refuses_typicality_scores_of_another_train_file(input_study):
    cfg, _ = input_study
    run = Path(cfg.out)
    summary = run / "data" / "k-shot-cross" / "mine" / "4-1" / "typicality.json"
    original = summary.read_text()
    try:
        summary.write_text(original.replace(json.loads(original)["train_sha256"], "0" * 64))
        with pytest.raises(ConfigError, match=r"typicality\.tsv: computed from another train\.tsv"):
            run_study(cfg)
    finally:
        summary.write_text(original)


def test_a_study_rerun_after_an_input_change_is_refused_then_redone_with_force(input_study, capsys):
    cfg, source = input_study
    run = Path(cfg.out)
    original = source.read_text()
    study_json = (run / "study.json").read_bytes()
    try:
        write(source, flip_labels(user_lines(), "film"))
        argv = ["run", "--config", str(run / "config.json")]  # the very same settings
        err = cli_error_line(capsys, argv)
        assert "holds splits of other data" in err and "mine.tsv" in err and "--force" in err
        assert (run / "study.json").read_bytes() == study_json
        shutil.rmtree(run / "seed-1" / "finetune" / "baseline" / "book")  # one unit gone: still no mixing
        err = cli_error_line(capsys, argv)
        assert "holds splits of other data" in err
        assert (run / "study.json").read_bytes() == study_json
        assert not (run / "seed-1" / "finetune" / "baseline" / "book").exists()

        redone = run_study(cfg.replace(force=True))
        for unit in redone.units + redone.meta:  # every unit trained on the new splits
            folder = run / unit.path
            data = Path(json.loads((folder / "config.json").read_text())["data_dir"])
            assert json.loads((folder / INPUTS_FILE).read_text())["train.tsv"] == file_sha256(data / "train.tsv")
        film = run / "data" / "k-shot-single" / "film" / "4-1" / "train.tsv"
        assert "\tfilm\t" in film.read_text()
        assert len(redone.units) == 4
    finally:
        source.write_text(original)  # the last test of the module: its study is not used again
