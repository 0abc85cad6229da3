"""The seed system's (OneFlow port's) three command lines run as written, with a tiny epoch budget."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from metaft.cli import main


@pytest.fixture
def data(prepared_data, tmp_path) -> Path:
    """A private copy of the g1 / SST-2 folders (stage 1 writes its scores beside the data)."""
    for sub in ("k-shot-cross/g1/16-42", "k-shot-single/SST-2/16-42"):
        shutil.copytree(prepared_data / sub, tmp_path / "data" / sub)
    return tmp_path / "data"


def test_seed_commands_as_written(data, tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    m, v = str(tiny_model_dir), str(tiny_model_dir / "vocab.txt")
    cross = "data/k-shot-cross/g1/16-42"
    assert main(["preprocess", "--task_name", "g1", "--model_load_dir", m, "--data_dir", cross, "--num_epochs", "4",
                 "--seed", "42", "--seq_length=128", "--train_example_num", "96", "--dev_example_num", "96",
                 "--vocab_file", v, "--resave_ofrecord"]) == 0
    meta = ["meta-finetune", "--task_name", "g1", "--model_load_dir", m, "--data_dir", cross, "--num_epochs", "1",
            "--seed", "42", "--seq_length=128", "--train_example_num", "96", "--dev_example_num", "96",
            "--batch_size_per_device", "4", "--dev_batch_size_per_device", "2", "--dev_every_step_num", "100",
            "--vocab_file", v, "--learning_rate", "5e-5", "--resave_ofrecord"]
    capsys.readouterr()
    assert main(meta) == 0
    out = capsys.readouterr().out
    assert "meta dev accuracy:" in out
    snapshot = Path(out.split("best meta-learner: ")[1].split("\n")[0])
    assert snapshot.parent == Path("runs/meta-g1-42") and snapshot.name.startswith("snapshot_best_mft_model_g1_dev_")
    res = json.loads((snapshot.parent / "meta_results.json").read_text())
    assert res["total_steps"] == 24 and res["num_examples"] == {"train": 96, "dev": 96}
    assert res["config"]["use_cache"] is False and res["config"]["typicality"] is True

    assert main(["finetune", "--task_name", "sst-2", "--model_load_dir", str(snapshot), "--data_dir",
                 "data/k-shot-single/SST-2/16-42", "--num_epochs", "1", "--seed", "42", "--seq_length=128",
                 "--train_example_num", "32", "--dev_example_num", "32", "--eval_example_num", "872",
                 "--batch_size_per_device", "2", "--dev_batch_size_per_device", "2",
                 "--eval_batch_size_per_device", "2", "--dev_every_step_num", "50", "--vocab_file", v,
                 "--learning_rate", "1e-5", "--resave_ofrecord"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy:" in out and "(872 examples)" in out and "runs/finetune-sst-2-42/results.json" in out
    res = json.loads(Path("runs/finetune-sst-2-42/results.json").read_text())
    assert res["num_examples"] == {"train": 32, "dev": 32, "test": 872} and res["total_steps"] == 16
    assert res["config"]["learning_rate"] == 1e-5 and res["config"]["eval_batch_size"] == 2
    # as written, the seed command lines run metaft's default head (LP-FT); --head reinit is the reference's
    assert res["head"] == "probe" and res["head_probe"] is not None and res["dev_history"][0]["step"] == 0

    # running the same command again is refused in one line (exit code 2), not silently overwritten
    assert main(meta) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "finished run" in err and "--force" in err


def test_clean_flags_and_help(data, tiny_model_dir, tmp_path, capsys, caplog):
    out = tmp_path / "meta"
    assert main(["meta-finetune", "--data-dir", str(data / "k-shot-cross/g1/16-42"), "--model", str(tiny_model_dir),
                 "--out", str(out), "--epochs", "0.5", "--batch-size", "8", "--eval-batch-size", "32", "--lr", "1e-4",
                 "--eval-every", "3", "--max-length", "32", "--seed", "7", "--domain-loss", "grl",
                 "--domain-weight", "0.2", "--domain-layers", "1,3", "--no-typicality", "--mixed-precision", "no",
                 "--gpu_num_per_node", "1"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["domain_layers"] == [1, 3] and cfg["typicality"] is False and cfg["domain_loss"] == "grl"
    assert cfg["max_length"] == 32 and cfg["epochs"] == 0.5
    assert json.loads((out / "meta_results.json").read_text())["total_steps"] == 6
    assert "ignored (OneFlow only): --gpu_num_per_node" in caplog.text
    assert main(["finetune", "--data-dir", str(data / "k-shot-single/SST-2/16-42"), "--model", str(tiny_model_dir),
                 "--out", str(tmp_path / "ft"), "--epochs", "0.5", "--head", "keep"]) == 2
    assert "--head keep needs a meta-learner folder" in capsys.readouterr().err
    for command in ("meta-finetune", "finetune"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "--resave_ofrecord" in text and "OneFlow" in text and "--resume" in text


def test_compile_and_padding_flags_reach_the_config(tmp_path):
    import argparse

    from metaft.cli import build_parser
    from metaft.cli.train import make_config
    from metaft.config import FinetuneConfig

    def config(*flags):
        args = build_parser().parse_args(["finetune", "--data-dir", str(tmp_path), *flags])
        return make_config(args, FinetuneConfig, "finetune")

    assert (config().compile, config().compile_mode, config().pad_to_multiple_of) == (False, "default", 8)
    assert (config("--compile").compile, config("--compile").compile_mode) == (True, "default")
    cfg = config("--compile", "reduce-overhead", "--pad-to-multiple-of", "32")
    assert (cfg.compile, cfg.compile_mode, cfg.pad_to_multiple_of) == (True, "reduce-overhead", 32)
    with pytest.raises((SystemExit, argparse.ArgumentError)):
        config("--compile", "fastest")
    from metaft.errors import ConfigError

    with pytest.raises(ConfigError, match="pad_to_multiple_of must be >= 1, got 0"):
        config("--pad-to-multiple-of", "0")
