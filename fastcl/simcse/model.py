"""SimCSE sentence embeddings (Gao, Yao and Chen 2021) on any Hugging Face encoder: the paper's
poolers, the CLS MLP (used only in training when `mlp_only_train`), `encode`, and saving in a
form that plain `transformers.AutoModel` and `sentence_transformers.SentenceTransformer` load.

    model = fastcl.SimCSE.from_pretrained("minilm")
    embeddings = model.encode(["A man is playing a guitar.", "Someone plays music."])
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..engine import checkpoint, files
from ..engine import progress as heartbeat
from . import backbones

POOLERS = ("cls", "cls_before_pooler", "avg", "avg_first_last", "avg_top2")
CONFIG_NAME = "fastcl_simcse.json"
HEAD_NAME = "fastcl_simcse_mlp.pt"
# What a save writes only for some poolers: removed from the folder when a later save does not.
MODULE_FILES = (HEAD_NAME, "modules.json", "sentence_bert_config.json", "1_Pooling", "2_Dense")


def _remove_stale_modules(new: str, path: str) -> None:
    """The module files in `path` that the save in `new` does not write."""
    for stale in MODULE_FILES:
        target = os.path.join(path, stale)
        if os.path.exists(os.path.join(new, stale)) or not os.path.exists(target):
            continue
        if os.path.isdir(target):
            shutil.rmtree(target)
        else:
            os.remove(target)


def _move_into(new: str, path: str) -> None:
    """Every file under `new` to the same place under `path`, flushed to disk and with the default
    mode (safetensors writes 0600), each in one rename."""
    mode = files.default_mode()
    for folder, _, names in os.walk(new):
        target = os.path.join(path, os.path.relpath(folder, new))
        os.makedirs(target, exist_ok=True)
        for name in names:
            with open(os.path.join(folder, name), "rb+") as f:
                os.fchmod(f.fileno(), mode)
                os.fsync(f.fileno())
            os.replace(os.path.join(folder, name), os.path.join(target, name))


def _masked_mean(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1)


def pool(pooler: str, attention_mask: Tensor, last_hidden: Tensor, hidden_states=None) -> Tensor:
    """Sentence vectors from token states, as SimCSE's Pooler: `cls`/`cls_before_pooler` the first
    token of the last layer; `avg` the masked mean of the last layer; `avg_first_last` of the mean
    of the first transformer layer (hidden_states[1]) and the last; `avg_top2` of the last two."""
    if pooler in ("cls", "cls_before_pooler"):
        return last_hidden[:, 0]
    if pooler == "avg":
        return _masked_mean(last_hidden, attention_mask)
    if hidden_states is None:
        raise ValueError(f"pooler {pooler!r} needs the hidden states of every layer")
    if pooler == "avg_first_last":
        return _masked_mean((hidden_states[1] + hidden_states[-1]) / 2, attention_mask)
    if pooler == "avg_top2":
        return _masked_mean((hidden_states[-2] + hidden_states[-1]) / 2, attention_mask)
    raise ValueError(f"pooler must be one of {POOLERS}, got {pooler!r}")


def saved_settings(path: Optional[str]) -> dict:
    """The pooler settings of a model fastcl saved (empty for anything else)."""
    return backbones.read_json(os.path.join(path, CONFIG_NAME)) if path else {}


def native_pooler(name: str) -> Optional[str]:
    """The pooler a checkpoint was trained with, when it says: a fastcl save, or a
    sentence-transformers pooling config (CLS or mean)."""
    path = backbones.resolve(name)
    return saved_settings(path).get("pooler") or (backbones.sentence_transformers_pooler(path) if path else None)


class SimCSE(nn.Module):
    """A SimCSE sentence encoder: Hugging Face encoder -> pooler (-> MLP for `cls`).

    In training mode the MLP always runs (for `cls`); in eval mode only when `mlp_only_train` is
    False, as in the SimCSE code. Build one with `SimCSE.from_pretrained(name)`.

    Args:
        backbone, tokenizer: a transformers encoder and its tokenizer.
        pooler: one of POOLERS: cls, cls_before_pooler, avg, avg_first_last, avg_top2.
        mlp_only_train: `cls` only: use the MLP in training but not at inference (unsupervised SimCSE).
        max_length: tokens per training sentence; encode_max_length: tokens per sentence in `encode`.

    Call: ``model(input_ids, attention_mask[, token_type_ids])`` -> (B, hidden) embeddings;
    ``model.encode(sentences)`` -> (len(sentences), hidden) float32 on the CPU.

    Example::

        model = fastcl.SimCSE.from_pretrained("minilm")
        a, b = model.encode(["A man is playing a guitar.", "Someone plays music."])
        model.save_pretrained("out/")        # loads with AutoModel and SentenceTransformer too
    """

    def __init__(self, backbone: nn.Module, tokenizer, pooler: str = "cls", mlp_only_train: bool = False,
                 max_length: int = 32, name: str = "", encode_max_length: Optional[int] = None):
        """max_length cuts training sentences (the paper's 32); encode_max_length cuts what
        `encode` embeds (default: the most the model takes, as the SimCSE evaluation)."""
        super().__init__()
        if pooler not in POOLERS:
            raise ValueError(f"pooler must be one of {POOLERS}, got {pooler!r}")
        for arg, value in (("max_length", max_length), ("encode_max_length", encode_max_length)):
            if value is not None and value <= 0:
                raise ValueError(f"{arg} must be > 0, got {value}")
        self.backbone, self.tokenizer = backbone, tokenizer
        self.pooler, self.mlp_only_train, self.max_length, self.name = pooler, mlp_only_train, max_length, name
        self.encode_max_length = encode_max_length or backbones.longest_input(backbone, tokenizer)
        hidden = backbone.config.hidden_size
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh()) if pooler == "cls" else None
        self.head_trained = False  # True once loaded from a save or trained: an untrained MLP means nothing

    @property
    def head_at_inference(self) -> bool:
        """Whether `encode` (eval mode) runs the MLP: `cls` without mlp_only_train."""
        return self.mlp is not None and not self.mlp_only_train

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name: str, pooler: Optional[str] = None, mlp_only_train: Optional[bool] = None,
                        max_length: Optional[int] = None, seed: int = 0,
                        encode_max_length: Optional[int] = None) -> "SimCSE":
        """A built-in name (minilm, tiny), a folder (a SimCSE model saved by fastcl, any
        transformers checkpoint, a sentence-transformers folder) or a hub name. Unset options come
        from a fastcl save, else from a sentence-transformers pooling config, else the CLS vector
        (`cls_before_pooler`: a plain checkpoint has no trained MLP) and max length 32. A `cls`
        MLP that no save provides starts from `seed` (it is what training learns)."""
        backbone, tokenizer = backbones.load_backbone(name, seed)
        path = backbones.resolve(name)
        saved = saved_settings(path)
        if encode_max_length is None:
            encode_max_length = saved.get("encode_max_length") or (
                backbones.sentence_transformers_max_length(path) if path else None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(backbone, tokenizer, pooler=pooler or native_pooler(name) or "cls_before_pooler",
                        mlp_only_train=saved.get("mlp_only_train", False) if mlp_only_train is None else mlp_only_train,
                        max_length=saved.get("max_length", 32) if max_length is None else max_length, name=name,
                        encode_max_length=encode_max_length)
        head = os.path.join(path, HEAD_NAME) if path else None
        if model.mlp is not None and head and os.path.isfile(head) and model.pooler == saved.get("pooler"):
            model.mlp.load_state_dict(checkpoint.load(head))  # tensors only: a pickle is refused
            model.head_trained = True
        return model

    # -- embedding ----------------------------------------------------------------------------
    def tokenize(self, sentences: Sequence[str], max_length: Optional[int] = None) -> dict:
        if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
            raise TypeError("sentences must be a list of strings")
        return self.tokenizer(list(sentences), padding=True, truncation=True,
                              max_length=max_length or self.max_length, return_tensors="pt")

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Optional[Tensor] = None) -> Tensor:
        layers = self.pooler in ("avg_first_last", "avg_top2")
        kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=layers,
                            return_dict=True, **kwargs)
        z = pool(self.pooler, attention_mask, out.last_hidden_state, out.hidden_states if layers else None)
        if self.mlp is not None and (self.training or self.head_at_inference):
            z = self.mlp(z)
        return z

    @torch.no_grad()
    def encode(self, sentences: Sequence[str], batch_size: int = 64, max_length: Optional[int] = None,
               normalize: bool = False) -> Tensor:
        """Sentence embeddings (len(sentences), hidden) on the CPU, in eval mode (no dropout), of
        up to `max_length` tokens (default `encode_max_length`)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        was_training, device = self.training, next(self.parameters()).device
        self.eval()
        try:
            chunks = []
            for start in range(0, len(sentences), batch_size):
                batch = {k: v.to(device) for k, v in self.tokenize(sentences[start:start + batch_size],
                                                                   max_length or self.encode_max_length).items()}
                chunks.append(self(**batch).float().cpu())
                heartbeat.count(min(start + batch_size, len(sentences)), len(sentences))
        finally:
            self.train(was_training)
        if not chunks:
            return torch.empty(0, self.backbone.config.hidden_size)
        z = torch.cat(chunks)
        return nn.functional.normalize(z, dim=-1) if normalize else z

    # -- saving -------------------------------------------------------------------------------
    def save_pretrained(self, path: str) -> None:
        """Weights and tokenizer (transformers' save_pretrained), fastcl's pooler settings and MLP,
        and sentence-transformers module files. Everything is written to a temporary folder first
        and then renamed file by file into `path` (other files there, such as a run's metrics,
        stay), so a crash never leaves a half-written file; the files get the mode the user's umask
        gives. Module files of an earlier save that this one does not write (an MLP,
        sentence-transformers modules) are removed first, so they cannot outlive the model they
        described. A failed write (a full disk) raises files.WriteFailed."""
        os.makedirs(path, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-save-", dir=path)
        try:
            self._write_files(tmp)
            _remove_stale_modules(tmp, path)
            _move_into(tmp, path)
        except Exception as exc:  # noqa: BLE001 (only a failed write is re-raised as one)
            cause = files.os_error(exc)
            if cause is None:
                raise
            raise files.failure(os.path.join(path, os.path.basename(cause.filename or "")), cause,
                                note="; the model saved there before, if any, is kept") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _write_files(self, folder: str) -> None:
        self.backbone.save_pretrained(folder)
        self._write_mlp_as_pooler(folder)
        self.tokenizer.save_pretrained(folder)
        with open(os.path.join(folder, CONFIG_NAME), "w") as f:
            json.dump(dict(pooler=self.pooler, mlp_only_train=self.mlp_only_train, max_length=self.max_length,
                           encode_max_length=self.encode_max_length, base_model=self.name), f, indent=2)
        if self.mlp is not None:
            torch.save(self.mlp.state_dict(), os.path.join(folder, HEAD_NAME))
        self._write_sentence_transformers_files(folder)

    def _write_mlp_as_pooler(self, folder: str) -> None:
        """BERT's and RoBERTa's pooler is the SimCSE MLP (Linear + Tanh on the first token), so an
        MLP used at inference is stored as its weights, as the SimCSE repository's
        simcse_to_huggingface does: plain `AutoModel(...).pooler_output` is then the embedding."""
        weights = os.path.join(folder, "model.safetensors")
        if (not self.head_at_inference or not os.path.isfile(weights)
                or self.backbone.config.model_type not in backbones.POOLER_MODEL_TYPES):
            return
        from safetensors.torch import load_file, save_file

        state = load_file(weights)
        prefix = next((k[:k.index("embeddings.")] for k in state if "embeddings." in k), "")
        linear = self.mlp[0]
        state[prefix + "pooler.dense.weight"] = linear.weight.detach().cpu().contiguous()
        state[prefix + "pooler.dense.bias"] = linear.bias.detach().cpu().contiguous()
        save_file(state, weights, metadata={"format": "pt"})

    def _write_sentence_transformers_files(self, folder: str) -> None:
        """modules.json and module configs, so SentenceTransformer(folder) embeds as `encode`
        does, for the poolers it can express (CLS or mean, plus the MLP as a Tanh Dense)."""
        if self.pooler not in ("cls", "cls_before_pooler", "avg"):
            return  # sentence-transformers has no first-last or top-2 average pooling
        hidden = self.backbone.config.hidden_size
        modules = [dict(idx=0, name="0", path="", type="sentence_transformers.models.Transformer"),
                   dict(idx=1, name="1", path="1_Pooling", type="sentence_transformers.models.Pooling")]
        os.makedirs(os.path.join(folder, "1_Pooling"))
        with open(os.path.join(folder, "1_Pooling", "config.json"), "w") as f:
            json.dump(dict(word_embedding_dimension=hidden, pooling_mode_cls_token=self.pooler != "avg",
                           pooling_mode_mean_tokens=self.pooler == "avg", pooling_mode_max_tokens=False,
                           pooling_mode_mean_sqrt_len_tokens=False), f, indent=2)
        if self.head_at_inference:
            os.makedirs(os.path.join(folder, "2_Dense"))
            modules.append(dict(idx=2, name="2", path="2_Dense", type="sentence_transformers.models.Dense"))
            with open(os.path.join(folder, "2_Dense", "config.json"), "w") as f:
                json.dump(dict(in_features=hidden, out_features=hidden, bias=True,
                               activation_function="torch.nn.modules.activation.Tanh"), f, indent=2)
            linear = self.mlp[0]
            torch.save({"linear.weight": linear.weight.detach().cpu(), "linear.bias": linear.bias.detach().cpu()},
                       os.path.join(folder, "2_Dense", "pytorch_model.bin"))
        with open(os.path.join(folder, "modules.json"), "w") as f:
            json.dump(modules, f, indent=2)
        with open(os.path.join(folder, "sentence_bert_config.json"), "w") as f:
            json.dump(dict(max_seq_length=self.encode_max_length, do_lower_case=False), f, indent=2)
