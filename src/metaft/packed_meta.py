"""Stage 2 in banks: the bank of meta-learners (:class:`MetaBank`) and the pending stage-2 run (:class:`PreparedMetaRun`)
that :func:`metaft.packed.run_packed` trains.

All variants of the meta stage share one bank: the loss terms are per-run coefficients. Every run's stacked
parameters hold the union of the variants' modules (the classifier plus a domain head with a domain
embedding); a run without a domain embedding (GRL, or domain_embedding off) or without a domain head (no
domain loss) keeps those parameters at zero and multiplies their contribution by 0, so it trains exactly what
the one-run path trains:

    L_r = mean_i(w_ri * CE_i) + lambda_r * (c_r * L_corrupt + g_r * L_adversarial)
    z_rl = W_r (h_l + e_r * E_r[d]) + b_r

with w the typicality weights (or ones), c_r / g_r = 1 for a corrupt / GRL run, 0 otherwise, e_r = 1 for a
corrupt run with its domain embedding E_r (``domain_embedding`` on), 0 otherwise; each run's corrupted targets
are drawn as alone (its ``corruption``, from its (seed, step) generator); the domain features of a GRL run
pass a gradient reversal of -coefficient (``h.detach() + m * (h - h.detach())``: the value of h, gradient m),
those of other runs m = 1. Each run's meta-learner folder is what
:func:`metaft.stages.meta_finetune` writes (its own head kind, snapshot name and ``meta_results.json``).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .bank import Bank, Member
from .bank_data import to_device
from .bank_forward import classifier_output, within
from .bank_plan import bank_key, model_config
from .config import MetaConfig
from .features import MODEL_INPUT_KEYS, EncodedDataset
from .grouped_bert import linear, lookup
from .heads import resolve_normalize, resolve_pooling
from .hub import load_tokenizer, usable_max_length
from .losses import corrupted_domain_targets, grl_coefficient, run_cross_entropy
from .modeling import DomainHead, MetaLearner, default_domain_layers
from .pooling import masked_mean
from .prepared import label_set, read_split, task_name_for
from .results import META_RESULTS, SNAPSHOT_PREFIX, MetaResult, read_meta_result
from .steps import seeded, step_generator
from .typicality import typicality_weights
from .warmstart import probe_warm_start

CLS = "classifier."
META_PER_RUN = ("domain_loss", "domain_weight", "typicality", "typicality_norm", "corruption", "domain_embedding")


class MetaBank(Bank):
    """A bank of meta-learners (:class:`metaft.modeling.MetaLearner`) with per-run loss coefficients."""

    prefix = CLS

    def __init__(self, members: list[Member], device: torch.device | None = None, **state):
        super().__init__(members, device, **state)
        self.cls_buffers = within(self.buffers, CLS)
        kinds = [m.cfg.domain_loss for m in members]
        as_tensor = lambda values, dtype=torch.float32: torch.tensor(values, dtype=dtype, device=self.device)  # noqa: E731
        self.coeffs = {"use_weights": as_tensor([m.cfg.typicality for m in members], torch.bool),
                       "lam": as_tensor([m.cfg.domain_weight for m in members]),
                       "corrupt": as_tensor([k == "corrupt" for k in kinds]),
                       "grl": as_tensor([k == "grl" for k in kinds]),
                       "embed": as_tensor([k == "corrupt" and m.cfg.domain_embedding for k, m in zip(kinds, members)])}

    def make_template(self, model: MetaLearner) -> MetaLearner:
        cfg, n_layers = self.members[0].cfg, model.classifier.config.num_hidden_layers
        self.layers = tuple(cfg.domain_layers) or default_domain_layers(n_layers)
        self.domains = list(model.domains)
        head = DomainHead(len(model.domains), model.classifier.config.hidden_size, self.layers, use_embedding=True)
        return MetaLearner(model.classifier, model.domains, head, "corrupt")

    @staticmethod
    def hf_model(model: MetaLearner):
        return model.classifier

    def losses(self, stacked: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every run's (cls, domain, total) losses, [R] each, computed for all runs at once."""
        coeff = grl_coefficient(self.step / self.total_steps)
        domains, mask, c = stacked["domains"], stacked["attention_mask"], self.coeffs
        targets = to_device(torch.stack([
            corrupted_domain_targets(self.host_batch["domains"][r], len(self.layers), step_generator(m.cfg.seed, self.step),
                                     m.cfg.corruption, len(self.domains))
            if m.cfg.domain_loss == "corrupt" else torch.zeros(len(self.layers), domains.shape[1], dtype=torch.long)
            for r, m in enumerate(self.members)]), self.device)  # [R, L, B]
        class_logits, hidden_states = self.outputs(stacked, hidden_states=True)
        weights = torch.where(c["use_weights"][:, None], stacked["weights"], torch.ones_like(stacked["weights"]))
        cls = run_cross_entropy(class_logits, stacked["labels"], weights)
        column = lambda v: v.view(-1, 1, 1)  # noqa: E731  [R] -> [R, 1, 1]
        reverse = column(torch.where(c["grl"] > 0, -coeff, 1.0))
        emb = column(c["embed"]) * lookup(self.params["domain_head.embedding.weight"], domains)
        logits = []
        for layer in self.layers:
            h = masked_mean(hidden_states[layer + 1], mask)
            h = h.detach() + reverse * (h - h.detach())  # value h; gradient x reverse
            logits.append(linear(h + emb, self.params["domain_head.classifier.weight"],
                                 self.params["domain_head.classifier.bias"]))
        flat = torch.stack(logits, 1).flatten(1, 2)  # [R, L * B, K], layer-major as alone
        corrupt = run_cross_entropy(flat, targets.flatten(1))
        adversarial = run_cross_entropy(flat, domains.repeat(1, len(self.layers)))
        domain = c["corrupt"] * corrupt + c["grl"] * adversarial
        return {"cls": cls, "domain": domain, "total": cls + c["lam"] * domain}

    def eval_logits(self, model: MetaLearner, params: dict, batch: dict) -> torch.Tensor:
        inputs = {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}
        return classifier_output(model.classifier, within(params, CLS), self.cls_buffers, inputs,
                                 batch["attention_mask"])[0]

    def save(self, r: int, folder: Path, weights: dict[str, torch.Tensor] | None = None) -> None:
        """Run r's meta-learner with its own head kind: none, GRL (no embedding) or corrupt (with or without)."""
        kind, embedding = self.members[r].cfg.domain_loss, self.members[r].cfg.domain_embedding
        with self.as_run(r, weights) as template:
            head = None
            if kind != "none":
                head = DomainHead(len(self.domains), template.classifier.config.hidden_size, self.layers,
                                  use_embedding=kind == "corrupt" and embedding)
                own = head.state_dict()
                head.load_state_dict({k: v for k, v in template.domain_head.state_dict().items() if k in own})
            corruption = self.members[r].cfg.corruption if kind == "corrupt" else None  # recorded like a lone run
            self.members[r].save_fn(MetaLearner(template.classifier, self.domains, head, kind, corruption), folder)


class PreparedMetaRun:
    """A pending stage-2 run: data, typicality weights and tokenizer ready, model not loaded yet."""

    bank_class = MetaBank
    results_file = META_RESULTS
    read_result = staticmethod(read_meta_result)

    def __init__(self, cfg: MetaConfig):
        started = time.monotonic()
        self.cfg, self.run_dir, self.data_dir = cfg, Path(cfg.out), Path(cfg.data_dir)
        self.train_ex = read_split(self.data_dir, "train", cfg.train_limit, "--train-limit/--train_example_num")
        self.dev_ex = read_split(self.data_dir, "dev", cfg.dev_limit, "--dev-limit/--dev_example_num")
        self.labels = label_set(self.data_dir, self.train_ex, {"dev": self.dev_ex})
        self.domains = sorted({ex.domain for ex in self.train_ex})
        weights = typicality_weights(cfg, self.data_dir, self.train_ex)
        self.tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
        self.config = model_config(cfg.model, cfg.trust_remote_code)
        max_length = usable_max_length(cfg.max_length, self.config, self.tokenizer)
        label_ids = {lab: i for i, lab in enumerate(self.labels)}
        domain_ids = {d: i for i, d in enumerate(self.domains)}
        self.train_set = EncodedDataset(self.train_ex, self.tokenizer, max_length, label_ids, domain_ids, weights,
                                        cfg.use_cache)
        self.dev_set = EncodedDataset(self.dev_ex, self.tokenizer, max_length, label_ids, domain_ids, None,
                                      cfg.use_cache)
        self.task = cfg.task_name or task_name_for(self.data_dir)
        self.pooling, self.probe = resolve_pooling(cfg.head_pooling, cfg.model), None
        self.normalize = resolve_normalize(cfg.head_normalize, self.pooling, cfg.model)
        shared = cfg.replace(**{k: getattr(MetaConfig, k) for k in META_PER_RUN})
        self.key = bank_key(shared, len(self.train_set), len(self.labels), self.config) + str(len(self.domains))
        self.prepare_s = time.monotonic() - started

    def load_model(self) -> MetaLearner:
        cfg = self.cfg
        with seeded(cfg.seed):  # as stages.meta_finetune
            model = MetaLearner.build(cfg.model, self.labels, self.domains, domain_loss=cfg.domain_loss,
                                      domain_layers=cfg.domain_layers, dropout=cfg.dropout, pooling=self.pooling,
                                      normalize=self.normalize, trust_remote_code=cfg.trust_remote_code,
                                      domain_embedding=cfg.domain_embedding, corruption=cfg.corruption)
        if cfg.head == "probe":  # as stages.warm_start
            self.probe = probe_warm_start(model.classifier, self.train_set, self.dev_set, cfg.eval_batch_size)
        return model

    def member(self) -> Member:
        return Member(self.cfg, self.run_dir, self.train_set, self.dev_set, self.labels, self.load_model,
                      lambda model, folder: model.save(folder, self.tokenizer),
                      best_name=lambda acc: f"{SNAPSHOT_PREFIX}{self.task}_dev_{acc!r}")

    def stale(self, member: Member) -> list[Path]:
        """Snapshots a killed earlier run left behind."""
        return [p for p in self.run_dir.glob(f"{SNAPSHOT_PREFIX}*") if p.name != member.best["name"]]

    def results(self, member: Member, total_steps: int, share) -> MetaResult:
        """The one-run path's meta results (``share``: the run's :class:`metaft.packed.BankShare`)."""
        cfg, best_dir = self.cfg, self.run_dir / member.best["name"]
        return MetaResult(
            task=self.task, best_dev_accuracy=member.best["accuracy"],
            best_dev_macro_f1=member.best["dev"]["macro_f1"], best_step=member.best["step"],
            total_steps=total_steps, best_model=str(best_dir), best_model_name=best_dir.name,
            wall_time_s=round(share.train_s, 3), resumed_from=share.resumed_from, labels=self.labels,
            domains=self.domains, num_examples={"train": len(self.train_ex), "dev": len(self.dev_ex)},
            model=cfg.model, seed=cfg.seed, dev_history=member.history, config=cfg.to_dict(),
            head_pooling=self.pooling, head_normalize=self.normalize, head_probe=self.probe)
