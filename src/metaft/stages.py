"""Stages 2 and 3 as functions: ``meta_finetune(MetaConfig) -> Path``, ``finetune(FinetuneConfig) -> FinetuneResult``.

Both read prepared folders (``train.tsv``, ``dev.tsv``[, ``test.tsv``]), train with the one loop of
:mod:`metaft.training` and write a run folder: ``config.json``, ``metrics.jsonl``, the best checkpoint
(a standard Hugging Face folder) and a results file that marks the run as finished.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from .config import FinetuneConfig, MetaConfig
from .devices import process_state
from .features import EncodedDataset
from .heads import head_parameters, resolve_normalize, resolve_pooling, save_classifier
from .hub import load_tokenizer, usable_max_length
from .locking import run_lock
from .losses import grl_coefficient, mft_loss, weighted_cross_entropy
from .modeling import MetaLearner, load_classifier
from .prepared import domain_splits, label_set, read_split, task_name_for
from .results import (
    META_RESULTS,
    RESULTS,
    SNAPSHOT_PREFIX,
    FinetuneResult,
    MetaResult,
    read_finetune_result,
    read_meta_result,
)
from .runs import finish_run, open_run, start_run
from .scoring import evaluate_checkpoint, hf_logits
from .steps import planned_steps, seeded, step_generator
from .training import LoopTask, train
from .typicality import typicality_weights
from .warmstart import probe_warm_start

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------- model adapters

def ce_loss(model, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
    """Stage 3: plain (unweighted) cross-entropy."""
    loss = weighted_cross_entropy(hf_logits(model, batch), batch["labels"])
    return {"cls": loss, "total": loss}


def _meta_loss_fn(cfg: MetaConfig, total_steps: int):
    def loss_fn(model, batch, step):
        coeff = grl_coefficient(step / total_steps) if cfg.domain_loss == "grl" else 0.0
        return mft_loss(model(batch, grl_coeff=coeff), batch, domain_loss=cfg.domain_loss,
                        domain_weight=cfg.domain_weight, use_weights=cfg.typicality,
                        generator=step_generator(cfg.seed, step), corruption=cfg.corruption)
    return loss_fn


def warm_start(cfg, classifier, train_set: EncodedDataset, dev_set: EncodedDataset) -> dict | None:
    """``head probe``: fit the fresh head on the frozen features first (see :mod:`metaft.warmstart`)."""
    if cfg.head != "probe":
        return None
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
        return run_dir / read_meta_result(run_dir / META_RESULTS).best_model_name
    data_dir = Path(cfg.data_dir)
    train_ex = read_split(data_dir, "train", cfg.train_limit, "--train-limit/--train_example_num")
    dev_ex = read_split(data_dir, "dev", cfg.dev_limit, "--dev-limit/--dev_example_num")
    labels = label_set(data_dir, train_ex, {"dev": dev_ex})
    domains = sorted({ex.domain for ex in train_ex})
    weights = typicality_weights(cfg, data_dir, train_ex)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    pooling = resolve_pooling(cfg.head_pooling, cfg.model)
    normalize = resolve_normalize(cfg.head_normalize, pooling, cfg.model)
    with seeded(cfg.seed):
        model = MetaLearner.build(cfg.model, labels, domains, domain_loss=cfg.domain_loss,
                                  domain_layers=cfg.domain_layers, dropout=cfg.dropout, pooling=pooling,
                                  normalize=normalize, trust_remote_code=cfg.trust_remote_code, domain_embedding=cfg.domain_embedding,
                                  corruption=cfg.corruption)
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
        evaluate_start=cfg.head != "reinit",
    )
    result = train(loop_task, cfg, run_dir, resume=status == "resume")
    stale = [p for p in run_dir.glob(f"{SNAPSHOT_PREFIX}*") if p.name != result.best_dir.name]  # killed runs
    finish_run(run_dir, META_RESULTS, MetaResult(
        task=task, best_dev_accuracy=result.best_accuracy, best_dev_macro_f1=result.best_dev["macro_f1"],
        best_step=result.best_step, total_steps=result.total_steps, best_model=str(result.best_dir),
        best_model_name=result.best_dir.name, wall_time_s=round(result.wall_time_s, 3),
        resumed_from=result.resumed_from, labels=labels, domains=domains,
        num_examples={"train": len(train_ex), "dev": len(dev_ex)}, model=cfg.model, seed=cfg.seed,
        dev_history=result.history, config=cfg.to_dict(), head_pooling=pooling, head_normalize=normalize, head_probe=probe,
    ), stale)
    return result.best_dir


# ----------------------------------------------------------------------------------------------- stage 3


def finetune(cfg: FinetuneConfig) -> FinetuneResult:
    """Stage 3: fine-tune ``cfg.model`` (a meta-learner folder or any checkpoint) on one domain; test the
    best-dev checkpoint. Returns (and writes to ``results.json``) its results."""
    with run_lock(cfg.out, process_state().is_main_process):
        return _finetune(cfg)


def _finetune(cfg: FinetuneConfig) -> FinetuneResult:
    t_start = time.monotonic()
    run_dir = Path(cfg.out)
    status = open_run(run_dir, cfg, RESULTS)
    if status == "done":
        logger.info("%s is finished already", run_dir)
        return read_finetune_result(run_dir / RESULTS)
    data_dir = Path(cfg.data_dir)
    splits = domain_splits(cfg, data_dir)
    labels = label_set(data_dir, splits["train"], {k: v for k, v in splits.items() if k != "train"})
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    pooling = resolve_pooling(cfg.head_pooling, cfg.model)
    normalize = resolve_normalize(cfg.head_normalize, pooling, cfg.model)
    with seeded(cfg.seed):
        model = load_classifier(cfg.model, labels, head=cfg.head, dropout=cfg.dropout, seed=cfg.seed,
                                pooling=pooling, normalize=normalize, trust_remote_code=cfg.trust_remote_code)
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
                         head_params=head_parameters(model), evaluate_start=cfg.head != "reinit")
    result = train(loop_task, cfg, run_dir, resume=status == "resume")
    t0 = time.monotonic()
    test = evaluate_checkpoint(result.best_dir, sets["test"], cfg, labels) if "test" in sets else None
    eval_s = time.monotonic() - t0
    results = FinetuneResult(
        task=cfg.task_name or task_name_for(data_dir), domain=splits["train"][0].domain,
        model=cfg.model, head=cfg.head, seed=cfg.seed,
        test_accuracy=test["accuracy"] if test else None, test_macro_f1=test["macro_f1"] if test else None,
        test=test, best_dev_accuracy=result.best_accuracy, best_dev_macro_f1=result.best_dev["macro_f1"],
        best_step=result.best_step, total_steps=result.total_steps, best_model=str(result.best_dir),
        labels=labels, num_examples={k: len(v) for k, v in splits.items()},
        timings={"train_s": round(result.wall_time_s, 3), "eval_s": round(eval_s, 3),
                 "total_s": round(time.monotonic() - t_start, 3)},
        resumed_from=result.resumed_from, dev_history=result.history, config=cfg.to_dict(),
        head_pooling=pooling, head_normalize=normalize, head_probe=probe,
    )
    finish_run(run_dir, RESULTS, results)
    return results
