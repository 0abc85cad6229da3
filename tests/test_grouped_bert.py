"""The grouped BERT forward of a bank (metaft.grouped_bert) computes what the vmap path computes: logits, hidden
states and gradients of every run, for every head kind a bank trains, with padding and token type ids."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn
from transformers import DistilBertConfig, DistilBertForSequenceClassification

from helpers import ft_config, metrics_without_time, write_task
from metaft.bank import Bank
from metaft.bank_forward import vmapped_output
from metaft.grouped_bert import grouped_output, supports
from metaft.modeling import load_classifier
from metaft.packed import PreparedRun
from metaft.runs import start_run

RUNS, BATCH, WIDTH = 3, 4, 9
HEADS = [("pooler", False), ("mean", False), ("mean", True), ("cls", False), ("cls", True)]


def without_dropout(model: nn.Module) -> nn.Module:
    """Every dropout at 0, in training mode (the training code path of both forwards)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    for config in {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}.values():
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    return model.train()


def stacked_runs(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """R runs: the model's weights, each run's perturbed differently (so a mixed-up run would show)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.stack([p.detach() + 0.05 * torch.randn(p.shape, generator=gen) for _ in range(RUNS)])
            .requires_grad_() for k, p in model.named_parameters()}


def batch(vocab: int, types: bool) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (RUNS, BATCH, WIDTH), generator=gen)
    lengths = torch.randint(2, WIDTH + 1, (RUNS, BATCH), generator=gen)
    lengths[0, 0] = WIDTH  # one full row, the others padded
    mask = (torch.arange(WIDTH) < lengths[..., None]).long()
    out = {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}
    if types:
        out["token_type_ids"] = (torch.arange(WIDTH) >= lengths[..., None] // 2).long() * mask
    return out


def vmapped(model, params, inputs, hidden_states):
    return vmapped_output(model, params, dict(model.named_buffers()), inputs, hidden_states)


@pytest.mark.parametrize("pooling,normalize", HEADS)
@pytest.mark.parametrize("types", [False, True])
def test_grouped_forward_equals_vmap(tiny_model_dir, pooling, normalize, types):
    model = without_dropout(load_classifier(str(tiny_model_dir), ["a", "b", "c"], head="reinit", dropout=0.0,
                                            seed=1, pooling=pooling, normalize=normalize))
    model.set_attn_implementation("eager")
    assert supports(model)
    inputs = batch(model.config.vocab_size, types)
    mask = inputs["attention_mask"]
    results = []
    for forward in (vmapped, grouped_output):
        params = stacked_runs(model)
        logits, states = forward(model, params, inputs, True)
        # a loss that reads the logits and every hidden state at real tokens only
        gen = torch.Generator().manual_seed(2)
        loss = (logits * torch.randn(logits.shape, generator=gen)).sum()
        for h in states:
            loss = loss + (h * torch.randn(h.shape, generator=gen) * mask[..., None]).sum()
        loss.backward()
        results.append((logits.detach(), [h.detach() for h in states], {k: p.grad for k, p in params.items()}))
    (logits_v, states_v, grads_v), (logits_g, states_g, grads_g) = results
    assert logits_g.shape == (RUNS, BATCH, 3)
    assert torch.allclose(logits_g, logits_v, atol=1e-5, rtol=0), (logits_g - logits_v).abs().max()
    assert len(states_g) == len(states_v) == model.config.num_hidden_layers + 1
    for hg, hv in zip(states_g, states_v):  # padding positions differ (masked keys only), real tokens agree
        assert torch.allclose(hg * mask[..., None], hv * mask[..., None], atol=1e-5, rtol=0)
    assert grads_g.keys() == grads_v.keys()
    for k in grads_v:
        if grads_v[k] is None:  # a pooled head's unused pooler
            assert grads_g[k] is None, k
            continue
        worst = (grads_g[k] - grads_v[k]).abs().max()
        assert worst < 1e-5 * max(1.0, grads_v[k].abs().max()), f"{k}: gradient off by {worst}"  # relative: ~1e2
    # the runs differ: had the grouped forward mixed them up, the comparison above would fail
    assert (logits_v[0] - logits_v[1]).abs().max() > 1e-3


def test_dropout_masks_differ_per_run(tiny_model_dir):
    model = load_classifier(str(tiny_model_dir), ["a", "b"], head="reinit", dropout=0.1, seed=1, pooling="mean")
    params = {k: p.detach().expand(RUNS, *p.shape).clone() for k, p in model.named_parameters()}  # equal runs
    inputs = batch(model.config.vocab_size, False)
    inputs = {k: v[:1].expand(RUNS, -1, -1) for k, v in inputs.items()}  # equal batches
    with torch.no_grad():
        train = grouped_output(model.train(), params, inputs)[0]
        evaluated = grouped_output(model.eval(), params, inputs)[0]
    assert (train[0] - train[1]).abs().max() > 1e-4  # each run its own dropout masks
    assert torch.equal(evaluated[0], evaluated[1])


def test_other_architectures_keep_the_vmap_path():
    config = DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32, num_labels=2)
    assert not supports(DistilBertForSequenceClassification(config))


def test_a_bank_trains_alike_with_either_forward(tiny_model_dir, tmp_path):
    """Whole banks (training steps, clipping, AdamW, dev evaluation: grouped vs one run at a time) at dropout 0."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(config))
    tasks = [write_task(tmp_path / f"t{i}", seed=7 * i + 1) for i in range(2)]
    records = {}
    for name, grouped in (("vmap", False), ("grouped", True)):
        runs = [PreparedRun(ft_config(task, model, tmp_path / f"{name}{i}", seed=3 + i, dropout=0.0, epochs=2,
                                      eval_every=4, mixed_precision="no", max_grad_norm=0.5, learning_rate=1e-3))
                for i, task in enumerate(tasks)]
        for run in runs:
            start_run(run.run_dir, run.cfg, "new")
        bank = Bank([run.member() for run in runs], grouped=grouped)
        assert bank.grouped == grouped
        bank.group_eval = grouped  # all runs' dev sets in grouped forwards (on CUDA by default) vs one at a time
        bank.train()
        records[name] = [metrics_without_time(run.run_dir) for run in runs]
        assert all((run.run_dir / "best" / "model.safetensors").is_file() for run in runs)
    for vmap, grouped in zip(records["vmap"], records["grouped"]):
        assert [r["kind"] for r in vmap] == [r["kind"] for r in grouped] and len(vmap) > 12
        for a, b in zip(vmap, grouped):
            assert a.keys() == b.keys()
            for key in a:
                close = a[key] == (b[key] if isinstance(a[key], str) else pytest.approx(b[key], rel=1e-5, abs=1e-5))
                assert close, (key, a, b)


def test_grouped_evaluation_reports_each_runs_metrics_and_nan():
    """Runs with dev sets of different sizes in chunks; run 1's NaN logits stop run 1 only."""
    from metaft.bank_eval import evaluate_runs
    from metaft.evaluation import NonFiniteError

    class Dev(list):
        def lengths(self):
            return [len(x["text"]) for x in self]

    dev_sets = [Dev({"text": "x" * (i % 5 + 1), "labels": i % 2, "id": i} for i in range(n)) for n in (5, 3, 7)]
    seen = []

    def logits_fn(items):  # run 0 right, run 1 NaN, run 2 always class 0
        seen.append([len(run) for run in items])
        out = torch.zeros(len(items), len(items[0]), 2)
        for j, it in enumerate(items[0]):
            out[0, j, it["labels"]] = 1.0
        out[1] = float("nan")
        out[2, :, 0] = 1.0
        return out
    res = evaluate_runs(logits_fn, dev_sets, [["a", "b"]] * 3, batch_size=2)
    assert seen == [[2, 2, 2]] * 3 + [[1, 1, 1]]  # the longest run (7) in chunks of 2; shorter runs padded
    assert res[0]["accuracy"] == 1.0 and res[0]["n"] == 5
    assert isinstance(res[1], NonFiniteError) and "3 of 3" in str(res[1])
    assert res[2]["n"] == 7 and res[2]["accuracy"] == pytest.approx(4 / 7)


def test_clip_runs_scales_each_run_by_its_own_norm():
    from metaft.bank_forward import clip_runs

    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(3, 4, 5, generator=gen), torch.randn(3, 7, generator=gen)]
    grads[0][1] *= 1e-3  # run 1 is within the limit
    grads[1][1] *= 1e-3
    norms_alone = [torch.linalg.vector_norm(torch.cat([g[r].flatten() for g in grads])) for r in range(3)]
    for always in (False, True):
        mine = [g.clone() for g in grads]
        norms = clip_runs(mine, 1.0, always_scale=always)
        assert torch.allclose(norms, torch.stack(norms_alone))
        for r in range(3):
            coef = min(1.0, 1.0 / (float(norms_alone[r]) + 1e-6))
            for g, m in zip(grads, mine):
                assert torch.allclose(m[r], g[r] * coef)
        assert torch.equal(mine[0][1], grads[0][1])  # run 1 untouched (x 1.0)
