from __future__ import annotations

import torch

from metaft.features import Collator, EncodedDataset, cache_dir, encode
from metaft.hub import load_tokenizer
from metaft.pooling import masked_mean
from metaft.records import Example


def _examples():
    texts = ["great movie", "a very very boring and awful plot", "fine", "the battery works"]
    return [Example(f"u{i}", t, str(i % 2), "d0" if i < 2 else "d1") for i, t in enumerate(texts)]


def test_collator_pads_to_multiple_of_8_and_masks(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    ds = EncodedDataset(_examples(), tok, 32, {"0": 0, "1": 1}, {"d0": 0, "d1": 1}, weights=[0.5, 1, 1, 2])
    batch = Collator(tok.pad_token_id)([ds[i] for i in range(4)])
    longest = max(ds.lengths())
    assert batch["input_ids"].shape[1] % 8 == 0 and batch["input_ids"].shape[1] >= longest
    assert batch["attention_mask"].sum(1).tolist() == ds.lengths()
    assert batch["labels"].tolist() == [0, 1, 0, 1]
    assert batch["domains"].tolist() == [0, 0, 1, 1]
    assert batch["weights"].tolist() == [0.5, 1.0, 1.0, 2.0]
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tok.pad_token_id).all()
    assert Collator(tok.pad_token_id, multiple_of=1)([ds[i] for i in range(4)])["input_ids"].shape[1] == longest


def test_truncation_is_counted(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    enc = encode(_examples(), tok, max_length=4)
    assert max(len(x) for x in enc.ids) == 4
    assert enc.truncated == 2


def test_encode_cache_is_reused_and_keyed_by_max_length(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    first = encode(_examples(), tok, 32)
    files = list(cache_dir().glob("*.npz"))
    assert len(files) == 1
    again = encode(_examples(), tok, 32)
    assert [a.tolist() for a in first.ids] == [b.tolist() for b in again.ids]
    encode(_examples(), tok, 4)
    assert len(list(cache_dir().glob("*.npz"))) == 2


def test_masked_mean_ignores_padding():
    hidden = torch.randn(2, 6, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    out = masked_mean(hidden, mask)
    assert torch.allclose(out[0], hidden[0, :3].mean(0))
    assert torch.allclose(out[1], hidden[1].mean(0))
