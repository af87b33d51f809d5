"""fastcl.integrations.sentence_transformers against sentence-transformers' own classes: values and
gradients for every direction, partition mode, hardness mode and number of hard-negative columns,
with cos_sim and dot_score, fp32 and bf16; the config dict and citation; the cached loss; and a
few steps of a real SentenceTransformerTrainer on the built-in MiniLM with each loss."""

from __future__ import annotations

import itertools

import pytest
import torch

st = pytest.importorskip("sentence_transformers")
pytest.importorskip("datasets")

from sentence_transformers import util  # noqa: E402
from sentence_transformers.sentence_transformer import losses as st_losses  # noqa: E402

from fastcl.integrations import sentence_transformers as fused  # noqa: E402

Q2D, Q2Q, D2Q, D2D = "query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"
DIRECTIONS = [(Q2D,), (Q2D, D2Q), (Q2D, Q2Q), (Q2D, D2D), (Q2D, D2Q, D2D), (Q2D, Q2Q, D2Q, D2D)]
HARDNESS = [None, "in_batch_negatives", "hard_negatives", "all_negatives"]


def _configs():
    for directions, partition, hardness in itertools.product(DIRECTIONS, ("joint", "per_direction"), HARDNESS):
        if partition == "per_direction" and ({Q2Q, D2D} & set(directions)):
            continue  # sentence-transformers refuses these
        yield directions, partition, hardness


def _embeddings(n, d, columns, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g).to(dtype).requires_grad_() for _ in range(columns)]


def _loss_and_grads(loss_obj, embeddings):
    loss = loss_obj.compute_loss_from_embeddings(embeddings, None)
    return loss, torch.autograd.grad(loss, embeddings)


@pytest.mark.parametrize("directions,partition,hardness", list(_configs()),
                         ids=lambda v: "+".join(x.replace("_to_", "2") for x in v) if isinstance(v, tuple) else str(v))
@pytest.mark.parametrize("columns", [2, 3, 4], ids=["pairs", "1-negative", "2-negatives"])
def test_matches_sentence_transformers(directions, partition, hardness, columns):
    kw = dict(scale=20.0, directions=directions, partition_mode=partition, hardness_mode=hardness,
              hardness_strength=5.0 if hardness else 0.0)
    for similarity, dtype in [(util.cos_sim, torch.float32), (util.dot_score, torch.float32),
                              (util.cos_sim, torch.bfloat16)]:
        embeddings = _embeddings(7, 11, columns, dtype)
        want, want_grads = _loss_and_grads(st_losses.MultipleNegativesRankingLoss(None, similarity_fct=similarity,
                                                                                  **kw),
                                           [e.detach().float().requires_grad_() for e in embeddings])
        got, got_grads = _loss_and_grads(fused.MultipleNegativesRankingLoss(None, similarity_fct=similarity, **kw),
                                         embeddings)
        scale = 1.0 if similarity is util.cos_sim else 0.2  # dot_score logits are larger
        torch.testing.assert_close(got.float(), want, rtol=2e-5, atol=2e-5 / scale)
        tol = dict(rtol=1e-4, atol=1e-5 / scale) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-3)
        for g, w in zip(got_grads, want_grads):
            torch.testing.assert_close(g.float(), w, **tol)


def test_symmetric_loss_and_config(minilm):
    embeddings = _embeddings(6, 9, 2, torch.float32, seed=1)
    want, want_grads = _loss_and_grads(st_losses.MultipleNegativesSymmetricRankingLoss(None, scale=10.0), embeddings)
    got, got_grads = _loss_and_grads(fused.MultipleNegativesSymmetricRankingLoss(None, scale=10.0), embeddings)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    kw = dict(scale=7.0, directions=(Q2D, D2Q), partition_mode="per_direction")
    model = st.SentenceTransformer(minilm, device="cpu")
    for cls in ("MultipleNegativesRankingLoss", "CachedMultipleNegativesRankingLoss"):
        original, ours = getattr(st_losses, cls)(model, **kw), getattr(fused, cls)(model, **kw)
        assert ours.get_config_dict() == original.get_config_dict()
        assert ours.citation == original.citation


def test_other_similarity_functions_are_refused():
    with pytest.raises(ValueError, match="util.cos_sim or util.dot_score, got manhattan_sim"):
        fused.MultipleNegativesRankingLoss(None, similarity_fct=util.manhattan_sim)


@pytest.fixture(scope="module")
def minilm():
    from fastcl.simcse.backbones import minilm_path

    return minilm_path()


def _dataset():
    from datasets import Dataset

    anchors = [f"question number {i} about topic {i % 5}" for i in range(24)]
    return Dataset.from_dict({"anchor": anchors, "positive": [f"an answer on topic {i % 5}, item {i}" for i in range(24)],
                              "negative": [f"unrelated text {i * 7 % 11}" for i in range(24)]})


def _train(minilm, tmp_path, make_loss, steps=4):
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, \
        SentenceTransformerTrainingArguments

    torch.manual_seed(0)
    model = SentenceTransformer(minilm, device="cpu")
    args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8,
                                                max_steps=steps, learning_rate=5e-5, logging_steps=1, seed=0,
                                                report_to=[], save_strategy="no", dataloader_drop_last=True,
                                                use_cpu=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=_dataset(), loss=make_loss(model))
    trainer.train()
    return [r["loss"] for r in trainer.state.log_history if "loss" in r]


@pytest.mark.parametrize("name,kw", [("MultipleNegativesRankingLoss", {}),
                                     ("MultipleNegativesRankingLoss", dict(directions=(Q2D, Q2Q, D2Q, D2D))),
                                     ("CachedMultipleNegativesRankingLoss", dict(mini_batch_size=3))])
def test_a_sentence_transformers_trainer_run_has_the_same_loss_curve(minilm, tmp_path, name, kw):
    want = _train(minilm, tmp_path / "original", lambda m: getattr(st_losses, name)(m, **kw))
    got = _train(minilm, tmp_path / "fastcl", lambda m: getattr(fused, name)(m, **kw))
    assert len(got) == len(want) == 4
    assert got == pytest.approx(want, rel=2e-4, abs=1e-4)


@pytest.mark.parametrize("directions", [(Q2D,), (Q2D, D2Q)], ids=["q2d", "q2d+d2q"])
@pytest.mark.parametrize("columns", [2, 3], ids=["pairs", "1-negative"])
def test_a_batch_of_one_matches_sentence_transformers(directions, columns):
    """A last batch of one: the query's positive (and its own hard negative) are its only columns."""
    kw = dict(scale=20.0, directions=directions)
    embeddings = _embeddings(1, 11, columns, torch.float32)
    want, want_grads = _loss_and_grads(st_losses.MultipleNegativesRankingLoss(None, **kw),
                                       [e.detach().clone().requires_grad_() for e in embeddings])
    got, got_grads = _loss_and_grads(fused.MultipleNegativesRankingLoss(None, **kw), embeddings)
    torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
