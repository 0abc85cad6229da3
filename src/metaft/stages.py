"""Stages 2 and 3 as functions: ``meta_finetune(MetaConfig) -> Path`` and ``finetune(FinetuneConfig) -> dict``.

Both read prepared folders (``train.tsv``, ``dev.tsv``[, ``test.tsv``]), train with the one loop of
:mod:`metaft.training` and write a run folder: ``config.json``, ``metrics.jsonl``, the best checkpoint
(a standard Hugging Face folder) and a results file that marks the run as finished.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .config import FinetuneConfig, MetaConfig
from .corpora import Example, read_mft_tsv
from .errors import ConfigError, DataError
from .features import EncodedDataset
from .fileio import write_json
from .heads import resolve_pooling, save_classifier
from .hub import from_pretrained, load_tokenizer, usable_max_length
from .locking import LOCK_FILE, run_lock
from .losses import grl_coefficient, mft_loss, weighted_cross_entropy
from .modeling import MODEL_INPUT_KEYS, MetaLearner, classification_head, load_classifier, recover_folder
from .splits import sort_labels
from .training import (
    METRICS_FILE,
    STATE_DIR,
    LoopTask,
    eval_loader,
    evaluate,
    make_accelerator,
    planned_steps,
    process_state,
    seeded,
    step_generator,
    train,
)

logger = logging.getLogger(__name__)

META_RESULTS = "meta_results.json"
RESULTS = "results.json"
CONFIG_FILE = "config.json"
_IGNORED_ON_RESUME = ("out", "resume", "force", "use_cache", "save_state_every_s")  # a resumed run may change
SNAPSHOT_PREFIX = "snapshot_best_mft_model_"


# ------------------------------------------------------------------------------------------------ data

def task_name_for(data_dir: str | Path) -> str:
    """The task a prepared folder belongs to: ``g1`` for ``.../k-shot-cross/g1/16-42``, else the folder name."""
    path = Path(data_dir).resolve()
    return path.parent.name if re.fullmatch(r"\d+-\d+", path.name) and path.parent.name else path.name


def read_split(data_dir: Path, split: str, limit: int | None, flag: str) -> list[Example]:
    """``data_dir/<split>.tsv``; with ``limit``, its first ``limit`` examples (warns if the count differs)."""
    examples = read_mft_tsv(data_dir / f"{split}.tsv")
    if limit is not None and limit != len(examples):
        logger.warning("%s has %d examples, %s asks for %d: using %d", data_dir / f"{split}.tsv",
                       len(examples), flag, limit, min(limit, len(examples)))
        examples = examples[:limit]
    if not examples:
        raise DataError(data_dir / f"{split}.tsv", "no examples")
    return examples


def label_set(data_dir: Path, train: list[Example], others: dict[str, list[Example]]) -> list[str]:
    """Sorted labels of the training set; a label that only another split has is an error."""
    labels = sort_labels({ex.label for ex in train})
    for split, examples in others.items():
        unknown = sorted({ex.label for ex in examples} - set(labels))
        if unknown:
            raise DataError(data_dir / f"{split}.tsv", f"label(s) {', '.join(map(repr, unknown))} do not occur "
                                                       f"in train.tsv (labels: {', '.join(labels)})")
    return labels


def typicality_weights(cfg: MetaConfig, data_dir: Path, train: list[Example]) -> list[float]:
    """Per-example loss weights: typicality scores normalised by ``cfg.typicality_norm``, or all 1.0.

    A score below 0 (an example whose embedding points away from its class prototypes; it happens with
    sentence-embedding models, not with BERT's usual 0.9-1.0) counts as 0: a negative weight would train the
    model to get that example wrong.
    """
    if not cfg.typicality:
        return [1.0] * len(train)
    from .typicality import load_scores

    scores = load_scores(data_dir, train)
    if negative := sum(s < 0 for s in scores):
        logger.warning("%d of %d typicality scores are below 0 (min %.4f): they count as 0, so those examples do "
                       "not contribute to the classification loss", negative, len(scores), min(scores))
        scores = [max(s, 0.0) for s in scores]
    if cfg.typicality_norm == "none":
        return scores
    groups = {"": list(range(len(train)))} if cfg.typicality_norm == "mean-global" else {}
    if not groups:
        for i, ex in enumerate(train):
            groups.setdefault(ex.domain, []).append(i)
    weights = list(scores)
    for domain, idx in groups.items():
        mean = sum(scores[i] for i in idx) / len(idx)
        if mean <= 0:
            raise DataError(data_dir / "typicality.tsv", f"mean typicality of {domain or 'all examples'} is "
                                                         f"{mean:.4f} <= 0: use --typicality-norm none")
        for i in idx:
            weights[i] = scores[i] / mean
    logger.info("typicality weights (%s): min %.4f, max %.4f", cfg.typicality_norm, min(weights), max(weights))
    return weights


# ------------------------------------------------------------------------------------------- run folders

def _is_run_folder(run_dir: Path) -> bool:
    try:
        saved = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and {"data_dir", "epochs", "seed"} <= set(saved)


def _has_contents(run_dir: Path) -> bool:
    return run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir())


def open_run(run_dir: Path, cfg, done_file: str) -> str:
    """What to do with ``run_dir`` for a run of ``cfg``: ``"new"``, ``"resume"`` or ``"done"``. Changes nothing.

    A finished run (``done_file`` exists) is refused unless ``cfg.force`` (start over: ``"new"``) or
    ``cfg.resume`` (``"done"``: nothing to do). An unfinished one needs ``cfg.resume`` or ``cfg.force``.
    """
    run_dir = Path(run_dir)
    if not _has_contents(run_dir):
        return "new"
    if not _is_run_folder(run_dir):
        raise ConfigError(f"{run_dir}: not empty and not a metaft run folder; choose another output folder")
    finished = (run_dir / done_file).is_file()
    if cfg.force:
        return "new"
    if not cfg.resume:
        what = "a finished run" if finished else "an unfinished run"
        hint = "--force to overwrite it" if finished else "--resume to continue it or --force to start over"
        raise ConfigError(f"{run_dir}: holds {what}; pass {hint} (or choose another output folder)")
    _check_same_config(run_dir, cfg)
    return "done" if finished else "resume"


def start_run(run_dir: Path, cfg, status: str) -> None:
    """Create the run folder of a ``"new"`` run (removing an earlier run there) and write ``config.json``.

    Every process must have called :func:`open_run` before the main process changes the folder.
    """
    run_dir, state = Path(run_dir), process_state()
    state.wait_for_everyone()
    if status == "new" and state.is_main_process:
        if _has_contents(run_dir):
            logger.info("--force: removing the earlier run in %s", run_dir)
            for path in run_dir.iterdir():
                if path.name != LOCK_FILE:  # held by this run
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / CONFIG_FILE)
        (run_dir / METRICS_FILE).touch()
    state.wait_for_everyone()


def finish_run(run_dir: Path, results_file: str, results: dict, stale: Sequence[Path] = ()) -> None:
    """Write the results file (atomically; it marks the run finished) and drop the training state."""
    state = process_state()
    if state.is_main_process:
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        write_json(run_dir / results_file, results)
        shutil.rmtree(run_dir / STATE_DIR, ignore_errors=True)  # finished: nothing left to resume
    state.wait_for_everyone()


def _check_same_config(run_dir: Path, cfg) -> None:
    saved = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    if diff := cfg.changed_from(saved, _IGNORED_ON_RESUME):
        raise ConfigError(f"{run_dir}: cannot resume with different settings ({cfg.describe(diff)}); "
                          "use the same settings, or --force to start over")


# --------------------------------------------------------------------------------------- model adapters

def hf_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits [B, C] of a Hugging Face sequence classifier for a metaft batch."""
    return model(**{k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}).logits


def ce_loss(model, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
    """Stage 3: plain (unweighted) cross-entropy."""
    loss = weighted_cross_entropy(hf_logits(model, batch), batch["labels"])
    return {"cls": loss, "total": loss}


def _meta_loss_fn(cfg: MetaConfig, total_steps: int):
    def loss_fn(model, batch, step):
        coeff = grl_coefficient(step / total_steps) if cfg.domain_loss == "grl" else 0.0
        return mft_loss(model(batch, grl_coeff=coeff), batch, domain_loss=cfg.domain_loss,
                        domain_weight=cfg.domain_weight, use_weights=cfg.typicality,
                        generator=step_generator(cfg.seed, step))
    return loss_fn


def head_parameters(classifier) -> list:
    """The parameters of a sequence classifier's head (trained at ``head_learning_rate``)."""
    return [p for module in classification_head(classifier) for p in module.parameters()]


def warm_start(cfg, classifier, train_set: EncodedDataset, dev_set: EncodedDataset) -> dict | None:
    """``head_init probe``: fit the fresh head on the frozen features first (see :mod:`metaft.probe`)."""
    if cfg.head_init != "probe":
        return None
    from .probe import probe_warm_start

    return probe_warm_start(classifier, train_set, dev_set, cfg.eval_batch_size)


# ----------------------------------------------------------------------------------------------- stage 2

def meta_finetune(cfg: MetaConfig) -> Path:
    """Stage 2: train one meta-learner on all domains of ``cfg.data_dir``; returns its best folder."""
    with run_lock(cfg.out, process_state().is_main_process):
        return _meta_finetune(cfg)


def _meta_finetune(cfg: MetaConfig) -> Path:
    run_dir = Path(cfg.out)
    status = open_run(run_dir, cfg, META_RESULTS)
    if status == "done":
        logger.info("%s is finished already", run_dir)
        return run_dir / json.loads((run_dir / META_RESULTS).read_text(encoding="utf-8"))["best_model_name"]
    data_dir = Path(cfg.data_dir)
    train_ex = read_split(data_dir, "train", cfg.train_limit, "--train-limit/--train_example_num")
    dev_ex = read_split(data_dir, "dev", cfg.dev_limit, "--dev-limit/--dev_example_num")
    labels = label_set(data_dir, train_ex, {"dev": dev_ex})
    domains = sorted({ex.domain for ex in train_ex})
    weights = typicality_weights(cfg, data_dir, train_ex)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    pooling = resolve_pooling(cfg.head_pooling, cfg.model)
    with seeded(cfg.seed):
        model = MetaLearner.build(cfg.model, labels, domains, domain_loss=cfg.domain_loss,
                                  domain_layers=cfg.domain_layers, dropout=cfg.dropout, pooling=pooling,
                                  trust_remote_code=cfg.trust_remote_code)
    label_ids, domain_ids = {lab: i for i, lab in enumerate(labels)}, {d: i for i, d in enumerate(domains)}
    max_length = usable_max_length(cfg.max_length, model.classifier.config, tokenizer)
    train_set = EncodedDataset(train_ex, tokenizer, max_length, label_ids, domain_ids, weights, cfg.use_cache)
    dev_set = EncodedDataset(dev_ex, tokenizer, max_length, label_ids, domain_ids, None, cfg.use_cache)
    task = cfg.task_name or task_name_for(data_dir)
    probe = warm_start(cfg, model.classifier, train_set, dev_set)
    start_run(run_dir, cfg, status)
    loop_task = LoopTask(
        model, train_set, dev_set, labels,
        loss_fn=_meta_loss_fn(cfg, planned_steps(len(train_set), cfg.batch_size, cfg.epochs)),
        logits_fn=lambda m, batch: m(batch).logits,
        save_fn=lambda m, folder: m.save(folder, tokenizer),
        best_name=lambda acc: f"{SNAPSHOT_PREFIX}{task}_dev_{acc!r}",
        head_params=head_parameters(model.classifier),
    )
    result = train(loop_task, cfg, run_dir, resume=status == "resume")
    stale = [p for p in run_dir.glob(f"{SNAPSHOT_PREFIX}*") if p.name != result.best_dir.name]  # killed runs
    finish_run(run_dir, META_RESULTS, {
        "task": task, "best_dev_accuracy": result.best_accuracy, "best_dev_macro_f1": result.best_dev["macro_f1"],
        "best_step": result.best_step, "total_steps": result.total_steps, "best_model": str(result.best_dir),
        "best_model_name": result.best_dir.name, "wall_time_s": round(result.wall_time_s, 3),
        "resumed_from": result.resumed_from, "labels": labels, "domains": domains,
        "num_examples": {"train": len(train_ex), "dev": len(dev_ex)}, "model": cfg.model, "seed": cfg.seed,
        "head_pooling": pooling, "head_probe": probe, "dev_history": result.history, "config": cfg.to_dict(),
    }, stale)
    return result.best_dir


# ----------------------------------------------------------------------------------------------- stage 3

def _domain_splits(cfg: FinetuneConfig, data_dir: Path) -> dict[str, list[Example]]:
    flags = {"train": ("train_limit", "--train-limit/--train_example_num"),
             "dev": ("dev_limit", "--dev-limit/--dev_example_num"),
             "test": ("test_limit", "--test-limit/--eval_example_num")}
    splits = {}
    for split in flags:
        if split == "test" and not (data_dir / "test.tsv").is_file():
            logger.warning("%s has no test.tsv: the best model is not tested", data_dir)
            continue
        splits[split] = read_mft_tsv(data_dir / f"{split}.tsv")
    domains = sorted({ex.domain for ex in splits["train"]})
    domain = cfg.domain or (domains[0] if len(domains) == 1 else None)
    if domain is None:
        raise ConfigError(f"{data_dir} holds {len(domains)} domains ({', '.join(domains)}): pick one with --domain")
    if domain not in domains:
        raise ConfigError(f"{data_dir}: no training examples of domain {domain!r} (domains: {', '.join(domains)})")
    out = {}
    for split, examples in splits.items():
        field, flag = flags[split]
        limit = getattr(cfg, field)
        examples = [ex for ex in examples if ex.domain == domain]
        if limit is not None and limit != len(examples):
            logger.warning("%s has %d examples of %s, %s asks for %d: using %d", data_dir / f"{split}.tsv",
                           len(examples), domain, flag, limit, min(limit, len(examples)))
            examples = examples[:limit]
        if not examples:
            raise DataError(data_dir / f"{split}.tsv", f"no examples of domain {domain!r}")
        out[split] = examples
    return out


def _test(best_dir: Path, test_set: EncodedDataset, cfg: FinetuneConfig, labels: list[str]) -> dict:
    """Evaluate the saved best checkpoint (loaded back from its folder) on the test set."""
    from transformers import AutoModelForSequenceClassification

    recover_folder(best_dir)
    model = from_pretrained(AutoModelForSequenceClassification, best_dir, cfg.trust_remote_code)
    accelerator = make_accelerator(cfg.mixed_precision)
    model = accelerator.prepare_model(model, evaluation_mode=True)  # no DDP wrapper: inference only
    loader = eval_loader(test_set, cfg.eval_batch_size, accelerator, cfg.pad_to_multiple_of, cfg.pad_to_length)
    return evaluate(model, loader, hf_logits, accelerator, labels)


def finetune(cfg: FinetuneConfig) -> dict:
    """Stage 3: fine-tune ``cfg.model`` (a meta-learner folder or any checkpoint) on one domain; test the
    best-dev checkpoint. Returns (and writes to ``results.json``) the results."""
    with run_lock(cfg.out, process_state().is_main_process):
        return _finetune(cfg)


def _finetune(cfg: FinetuneConfig) -> dict:
    t_start = time.monotonic()
    run_dir = Path(cfg.out)
    status = open_run(run_dir, cfg, RESULTS)
    if status == "done":
        logger.info("%s is finished already", run_dir)
        return json.loads((run_dir / RESULTS).read_text(encoding="utf-8"))
    data_dir = Path(cfg.data_dir)
    splits = _domain_splits(cfg, data_dir)
    labels = label_set(data_dir, splits["train"], {k: v for k, v in splits.items() if k != "train"})
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    pooling = resolve_pooling(cfg.head_pooling, cfg.model)
    with seeded(cfg.seed):
        model = load_classifier(cfg.model, labels, head=cfg.head_init, dropout=cfg.dropout, seed=cfg.seed,
                                pooling=pooling, trust_remote_code=cfg.trust_remote_code)
    label_ids = {lab: i for i, lab in enumerate(labels)}
    max_length = usable_max_length(cfg.max_length, model.config, tokenizer)
    sets = {k: EncodedDataset(v, tokenizer, max_length, label_ids, None, None, cfg.use_cache)
            for k, v in splits.items()}

    def save_fn(m, folder: Path) -> None:
        save_classifier(m, folder)
        tokenizer.save_pretrained(folder)

    probe = warm_start(cfg, model, sets["train"], sets["dev"])
    start_run(run_dir, cfg, status)
    loop_task = LoopTask(model, sets["train"], sets["dev"], labels, ce_loss, hf_logits, save_fn,
                         head_params=head_parameters(model))
    result = train(loop_task, cfg, run_dir, resume=status == "resume")
    t0 = time.monotonic()
    test = _test(result.best_dir, sets["test"], cfg, labels) if "test" in sets else None
    eval_s = time.monotonic() - t0
    results = {
        "task": cfg.task_name or task_name_for(data_dir), "domain": splits["train"][0].domain,
        "model": cfg.model, "head": cfg.head_init, "head_pooling": pooling, "head_probe": probe, "seed": cfg.seed,
        "test_accuracy": test["accuracy"] if test else None, "test_macro_f1": test["macro_f1"] if test else None,
        "test": test, "best_dev_accuracy": result.best_accuracy, "best_dev_macro_f1": result.best_dev["macro_f1"],
        "best_step": result.best_step, "total_steps": result.total_steps, "best_model": str(result.best_dir),
        "labels": labels, "num_examples": {k: len(v) for k, v in splits.items()},
        "timings": {"train_s": round(result.wall_time_s, 3), "eval_s": round(eval_s, 3),
                    "total_s": round(time.monotonic() - t_start, 3)},
        "resumed_from": result.resumed_from, "dev_history": result.history, "config": cfg.to_dict(),
    }
    finish_run(run_dir, RESULTS, results)
    return results
