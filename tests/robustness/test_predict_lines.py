"""Issue 19, class 6: ``metaft predict`` writes one output line per input line (blank ones included), names
the line of undecodable input, refuses a bare encoder and warns about a meta-learner snapshot."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import cli_error_line
from metaft.cli import main
from metaft.predict import BLANK_NOTE, predict, read_input_lines

TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")


def with_tokenizer(src: Path, dst: Path) -> Path:
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)
    return dst


@pytest.fixture(scope="module")
def classifier(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny BERT as a sequence classifier with labels neg / pos, saved like a fine-tuned ``best`` folder."""
    import torch
    from transformers import BertForSequenceClassification

    folder = tmp_path_factory.mktemp("classifier")
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2,
                                                          id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    model.save_pretrained(folder)
    return with_tokenizer(tiny_model_dir, folder)


def run_predict(capsys, model: Path, source: Path, *extra: str) -> list[dict]:
    capsys.readouterr()
    assert main(["-q", "predict", "--model", str(model), "--input", str(source), *extra]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize(("content", "texts"), [
    ("a good film\n\na bad film\n", ["a good film", "", "a bad film"]),
    ("a good film\n   \n\t\na bad film", ["a good film", "   ", "\t", "a bad film"]),
    ("\n\nfine\n\n", ["", "", "fine", ""]),
    ("a good film\r\n\r\nbad\r\n", ["a good film", "", "bad"]),
    ("only\n", ["only"]),
    ("\n", [""]),
])
def test_every_input_line_gets_an_output_line(classifier, tmp_path, capsys, content, texts):
    source = tmp_path / "in.txt"
    source.write_bytes(content.encode("utf-8"))
    records = run_predict(capsys, classifier, source, "--batch-size", "2")
    assert [r["text"] for r in records] == texts
    for rec in records:
        if rec["text"].strip():
            assert rec["label"] in ("neg", "pos") and abs(sum(rec["probabilities"].values()) - 1) < 1e-4
        else:
            assert rec["label"] is None and rec["probabilities"] is None and rec["note"] == BLANK_NOTE


def test_blank_lines_do_not_change_the_other_predictions(classifier, tmp_path, capsys):
    plain, gappy = tmp_path / "plain.txt", tmp_path / "gappy.txt"
    plain.write_text("a good film\na bad film\nboring\n")
    gappy.write_text("\na good film\n \na bad film\n\nboring\n")
    expected = run_predict(capsys, classifier, plain)
    got = [r for r in run_predict(capsys, classifier, gappy, "--batch-size", "1") if r["label"] is not None]
    assert got == expected


def test_standard_input_keeps_blank_lines(classifier, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"good\n\nbad\n"), encoding="utf-8"))
    records = run_predict(capsys, classifier, Path("-"))
    assert [r["label"] is None for r in records] == [False, True, False]


def test_non_utf8_input_names_line_and_column(classifier, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_bytes(b"good\nfine\nbad \xff film\n")
    err = cli_error_line(capsys, ["predict", "--model", str(classifier), "--input", str(source)])
    assert err == f"{source}:3: not valid UTF-8 (byte 0xff at column 5); re-save the input as UTF-8"


def test_utf16_input_is_named(classifier, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_bytes("good\nbad\n".encode("utf-16"))
    err = cli_error_line(capsys, ["predict", "--model", str(classifier), "--input", str(source)])
    assert err.startswith(f"{source}:1: file is UTF-16")


def test_missing_input_is_named(classifier, tmp_path, capsys):
    err = cli_error_line(capsys, ["predict", "--model", str(classifier), "--input", str(tmp_path / "nope.txt")])
    assert err == f"{tmp_path / 'nope.txt'}: file not found"


def test_a_bare_encoder_is_refused_as_a_classifier(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("good\n")
    err = cli_error_line(capsys, ["predict", "--model", str(tiny_model_dir), "--input", str(tmp_path / "in.txt")])
    assert err.startswith(f"{tiny_model_dir}: not a fine-tuned classifier (architectures: BertModel)")


def test_a_meta_learner_snapshot_is_warned_about(tiny_model_dir, tmp_path, capsys, caplog):
    from metaft.hub import load_tokenizer
    from metaft.modeling import MetaLearner

    snapshot = tmp_path / "snapshot_best_mft_model_g1_dev_0.5"
    MetaLearner.build(str(tiny_model_dir), ["neg", "pos"], ["a", "b"]).save(snapshot, load_tokenizer(tiny_model_dir))
    (tmp_path / "in.txt").write_text("good\n\n")
    records = run_predict(capsys, snapshot, tmp_path / "in.txt")
    assert len(records) == 2
    assert any("is a meta-learner snapshot" in r.message and r.levelname == "WARNING" for r in caplog.records)


# ------------------------------------------------------------------------------------------ fuzzing

line = st.one_of(st.just(""), st.sampled_from([" ", "\t", "  \t ", "\r", "\u00a0", "\u2028", "\x0b"]),
                 st.text(st.characters(blacklist_categories=("Cs",)), max_size=12).filter(lambda t: "\n" not in t))


@pytest.fixture(scope="module")
def predictor(classifier):
    from metaft.predict import load_predictor

    return load_predictor(classifier)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(line, max_size=8), final_newline=st.booleans())
def test_random_inputs_keep_one_record_per_line(predictor, tmp_path, lines, final_newline):
    if final_newline and not lines:
        lines = [""]  # the file "\n": one empty line
    source = tmp_path / "in.txt"
    source.write_bytes(("\n".join(lines) + ("\n" if final_newline else "")).encode("utf-8"))
    texts = read_input_lines(str(source))
    # a final newline ends the last line; without one, an empty last line is no line at all
    expected = len(lines) - (1 if lines and lines[-1] == "" and not final_newline else 0)
    assert len(texts) == expected
    model, tokenizer = predictor
    records = list(predict(texts, model, tokenizer, max_length=128, batch_size=3))
    assert [r["text"] for r in records] == texts
    assert all((r["label"] is None) == (not t.strip()) for r, t in zip(records, texts))
