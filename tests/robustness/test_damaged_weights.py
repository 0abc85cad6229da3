"""Issue 19, class 3: a damaged weights or training-state file is one line naming the file (exit code 2),
never a traceback: model folders of every command, a meta snapshot inside a study (loaded by a worker
process) and the files of a saved training state on ``--resume``. Fuzzed with truncations and random bytes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import cli_error_line, ft_config, write_task
from metaft.config import MetaConfig
from metaft.errors import ConfigError, DataError, MetaftError
from metaft.stages import finetune, meta_finetune


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "random":
        path.write_bytes(os.urandom(len(data)))
    elif how == "empty":
        path.write_bytes(b"")
    else:  # truncated to a share of its length
        path.write_bytes(data[:int(len(data) * float(how))])


DAMAGES = ["empty", "0.001", "0.5", "0.999", "random"]


@pytest.fixture
def damaged_model(tiny_model_dir, tmp_path):
    def make(how: str) -> Path:
        model = tmp_path / f"model-{how}"
        shutil.copytree(tiny_model_dir, model)
        damage(model / "model.safetensors", how)
        return model
    return make


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_task(tmp_path_factory.mktemp("task"), domains=("book", "film"))


def _cases(model: Path, data: Path, out: Path) -> dict[str, list[str]]:
    return {
        "preprocess": ["preprocess", str(data), "--model", str(model)],
        "meta-finetune": ["meta-finetune", "--data-dir", str(data), "--model", str(model), "--out", str(out),
                          "--no-typicality"],
        "finetune": ["finetune", "--data-dir", str(data), "--model", str(model), "--out", str(out),
                     "--domain", "book"],
    }


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("command", ["preprocess", "meta-finetune", "finetune"])
def test_a_damaged_model_file_is_named_by_every_stage(command, how, damaged_model, data, tmp_path, capsys):
    model = damaged_model(how)
    err = cli_error_line(capsys, _cases(model, data, tmp_path / "out")[command])
    assert err.startswith(f"{model}/model.safetensors: damaged weights file ("), err
    assert err.endswith("restore it, or train or download the model again")


@pytest.mark.parametrize("how", DAMAGES)
def test_predict_names_a_damaged_model_file(how, tiny_model_dir, tmp_path, capsys):
    from transformers import BertForSequenceClassification

    model = tmp_path / "classifier"
    BertForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2).save_pretrained(model)
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        if (tiny_model_dir / name).is_file():
            shutil.copy(tiny_model_dir / name, model / name)
    damage(model / "model.safetensors", how)
    (tmp_path / "in.txt").write_text("a good film\n")
    err = cli_error_line(capsys, ["predict", "--model", str(model), "--input", str(tmp_path / "in.txt")])
    assert err.startswith(f"{model}/model.safetensors: damaged weights file (")


def test_a_damaged_domain_head_of_a_meta_snapshot_is_named(tiny_model_dir, data, tmp_path):
    from metaft.modeling import DOMAIN_HEAD_FILE, MetaLearner

    snapshot = meta_finetune(MetaConfig(data_dir=str(data), model=str(tiny_model_dir), out=str(tmp_path / "m"),
                                        typicality=False, epochs=0.2, batch_size=16))
    head = snapshot / DOMAIN_HEAD_FILE
    _other_model_state(head)  # a valid file with other tensors
    with pytest.raises(DataError, match=rf"^{head}: damaged domain head \(RuntimeError"):
        MetaLearner.load(snapshot)
    damage(head, "0.5")
    with pytest.raises(DataError, match=rf"^{head}: damaged weights file"):
        MetaLearner.load(snapshot)
    (snapshot / "metaft_meta.json").write_text("{")
    with pytest.raises(DataError, match=r"metaft_meta.json: not a readable meta-learner description"):
        MetaLearner.load(snapshot)


# ------------------------------------------------------------------------------------------ study snapshot

def test_a_truncated_meta_snapshot_in_a_study_is_named_from_a_worker(tiny_model_dir, corpora_root, tmp_path, capsys):
    from metaft.config import StudyConfig
    from metaft.study import run_study

    fast = {"epochs": 1, "batch_size": 8, "eval_batch_size": 256, "learning_rate": 1e-4}
    cfg = StudyConfig.from_dict(dict(out=str(tmp_path / "study"), corpora=str(corpora_root), group="g1", k=4,
                                     seeds=(42,), model=str(tiny_model_dir), jobs=1, pca=False,
                                     meta={**fast, "eval_every": 100},
                                     finetune={**fast, "eval_every": 50, "test_limit": 32}))
    run_study(cfg)
    run = Path(cfg.out)
    snapshot = next((run / "seed-42" / "meta" / "mft").glob("snapshot_*"))
    damage(snapshot / "model.safetensors", "0.5")
    for domain in ("SST-2", "MR", "CR"):  # the runs that start from it are to be redone, by workers
        shutil.rmtree(run / "seed-42" / "finetune" / "mft" / domain)
    before = json.loads((run / "study.json").read_text())["units"]
    err = cli_error_line(capsys, ["run", "--config", str(run / "config.json"), "--jobs", "2"])
    assert err.startswith(f"{snapshot.resolve()}/model.safetensors: damaged weights file ("), err
    after = json.loads((run / "study.json").read_text())["units"]
    assert all(u in before and u["variant"] == "baseline" for u in after)  # nothing from the damaged snapshot


# ------------------------------------------------------------------------------------------ training state

@pytest.fixture(scope="module")
def interrupted(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A fine-tuning run (18 steps) stopped at step 13 with the training state of step 10 saved."""
    import metaft.training as training

    root = tmp_path_factory.mktemp("interrupted")
    task = write_task(root / "task")
    out = root / "run"
    real = training._Loop._train_step

    def stop(self):
        if self.step == 12:
            raise MetaftError("stopped")
        return real(self)

    mp = pytest.MonkeyPatch()
    mp.setattr(training._Loop, "_train_step", stop)
    try:
        with pytest.raises(MetaftError, match="stopped"):
            finetune(ft_config(task, tiny_model_dir, out, epochs=3))
    finally:
        mp.undo()
    assert json.loads((out / "state" / "trainer_state.json").read_text())["step"] == 10
    return task, out


def _non_tensor_optimizer(path: Path) -> None:
    torch.save({"optimizer": [1, 2, 3], "scheduler": "no"}, path)


def _other_model_state(path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"something.else": torch.zeros(3)}, str(path))


STATE_DAMAGES = [
    ("model.safetensors", lambda p: damage(p, "0.5")),
    ("model.safetensors", lambda p: damage(p, "random")),
    ("model.safetensors", _other_model_state),
    ("optimizer.pt", _non_tensor_optimizer),
    ("optimizer.pt", lambda p: damage(p, "0.5")),
    ("optimizer.pt", lambda p: p.write_bytes(b"not a torch file")),
    ("rng.pt", lambda p: damage(p, "0.3")),
    ("trainer_state.json", lambda p: p.write_text("{")),
    ("trainer_state.json", lambda p: p.write_text('{"step": 10}')),
]


@pytest.mark.parametrize(("name", "how"), STATE_DAMAGES)
def test_resume_names_a_damaged_state_file(interrupted, tiny_model_dir, tmp_path, name, how):
    task, source = interrupted
    run = tmp_path / "run"
    shutil.copytree(source, run)
    how(run / "state" / name)
    with pytest.raises(DataError) as info:
        finetune(ft_config(task, tiny_model_dir, run, epochs=3, resume=True))
    message = str(info.value)
    assert message.startswith(f"{run}/state/{name}: damaged training state (") and "\n" not in message
    assert message.endswith("pass --force to start the run over")


def test_resume_from_an_intact_state_still_works(interrupted, tiny_model_dir, tmp_path):
    task, source = interrupted
    run = tmp_path / "run"
    shutil.copytree(source, run)
    results = finetune(ft_config(task, tiny_model_dir, run, epochs=3, resume=True))
    assert results.resumed_from == 10


# ------------------------------------------------------------------------------------------ fuzzing

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def damaged_bytes(draw, original: bytes) -> bytes:
    """A cut at a random offset, random bytes written over a random stretch, or random bytes only."""
    kind = draw(st.sampled_from(["cut", "overwrite", "random"]))
    if kind == "cut":
        return original[:draw(st.integers(0, len(original) - 1))]
    if kind == "random":
        return draw(st.binary(max_size=2000))
    at = draw(st.integers(0, min(len(original) - 1, 4000)))  # mostly the header: the part a reader parses
    patch = draw(st.binary(min_size=1, max_size=64))
    return original[:at] + patch + original[at + len(patch):]


@pytest.fixture(scope="module")
def weights_bytes(tiny_model_dir) -> bytes:
    return (tiny_model_dir / "model.safetensors").read_bytes()


@FUZZ
@given(data=st.data())
def test_fuzzed_model_files_load_or_give_one_line_naming_the_file(data, tiny_model_dir, weights_bytes, tmp_path):
    from metaft.hub import load_encoder

    model = tmp_path / "fuzzed"
    if not model.exists():
        shutil.copytree(tiny_model_dir, model)
    damaged = data.draw(damaged_bytes(weights_bytes))
    (model / "model.safetensors").write_bytes(damaged)
    try:
        load_encoder(model)
    except (DataError, ConfigError) as exc:
        message = str(exc)
        assert "\n" not in message and str(model) in message, message
        if damaged != weights_bytes and len(damaged) < len(weights_bytes):
            assert message.startswith(f"{model}/model.safetensors: damaged weights file ("), message


@FUZZ
@given(data=st.data(), name=st.sampled_from(["optimizer.pt", "rng.pt", "model.safetensors"]))
def test_fuzzed_state_files_load_or_give_one_line_naming_the_file(data, name, interrupted, tiny_model_dir, tmp_path):
    from metaft.checkpoints import load_state
    from metaft.modeling import load_classifier
    from metaft.training import build_optimizer, build_scheduler

    _, source = interrupted
    original = (source / "state" / name).read_bytes()
    folder = tmp_path / "state"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(source / "state", folder)
    (folder / name).write_bytes(data.draw(damaged_bytes(original)))
    model = load_classifier(str(tiny_model_dir), ["neg", "neu", "pos"])
    optimizer = build_optimizer(model, 1e-3, 0.01)
    try:
        load_state(folder, model, optimizer, build_scheduler(optimizer, 18, 0.1))
    except DataError as exc:
        assert str(exc).startswith(f"{folder}/{name}: damaged training state (") and "\n" not in str(exc)
