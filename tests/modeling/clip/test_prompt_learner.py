"""PromptLearner and the class-slot tokenizer: prompt layout, names that do not fit."""

import os

import pytest
import torch

from mta_clip.modeling.clip.prompt_learner import clip_tokenizer, tokenize_class_slot
from tests.conftest import ROOT
from tests.modeling.clip.conftest import CLASSES, make_encoder


def test_prompt_layout(clip):
    enc = make_encoder(clip, num_prompts=2, n_ctx=3, class_slot=5)
    prompts, eot = enc.prompt_learner(enc.token_embedding)
    tok = clip_tokenizer()
    emb = enc.token_embedding.weight
    assert prompts.shape == (2 * len(CLASSES), 8, 128)
    for k in range(2):
        for c, name in enumerate(CLASSES):
            row = prompts[k * len(CLASSES) + c]
            ids = tok.encode(name)
            assert torch.equal(row[0], emb[tok.sot_token_id])
            assert torch.equal(row[1:4], enc.prompt_learner.ctx[k])
            assert torch.equal(row[4 : 4 + len(ids)], emb[ids])
            assert torch.equal(row[4 + len(ids)], emb[tok.eot_token_id])
            assert torch.equal(row[5 + len(ids) :], emb[[0] * (3 - len(ids))])
            assert eot[k * len(CLASSES) + c] == 4 + len(ids)


def test_names_that_do_not_fit_are_named():
    with pytest.raises(ValueError) as e:
        tokenize_class_slot(["wall", "windowpane, window", "chest of drawers", "sky"], class_slot=5)
    msg = str(e.value)
    assert "windowpane, window" in msg and "'wall'" not in msg and "'sky'" not in msg
    assert "chest of drawers" not in msg  # exactly 3 BPE tokens: fits
    with pytest.raises(ValueError, match="chest of drawers."):
        tokenize_class_slot(["chest of drawers"], class_slot=5, suffix=".")
    tokens, lengths = tokenize_class_slot(["chest of drawers"], class_slot=6, suffix=".")
    assert lengths.tolist() == [4] and tokens[0, 5].item() == clip_tokenizer().eot_token_id


def test_reference_short_names_fit_default_slot():
    for fname in ("ade20k_150_short_class_names.txt", "cityscapes_19_class_names.txt"):
        with open(os.path.join(ROOT, "tests", "reference", fname)) as f:
            names = [line.strip() for line in f if line.strip() and not line.startswith("#")]
        assert len(names) in (150, 19)
        tokens, lengths = tokenize_class_slot(names, class_slot=5)
        assert tokens.shape == (len(names), 5) and lengths.max() <= 3
