"""Language-model policies, value models and reward models, built without a model hub.

* `build_tiny_lm`: a Qwen2-shaped causal LM from a config (random init). head_dim >= 32 so
  that vLLM's CPU attention can run it too.
* `load_lm` / `save_lm`: any HF causal LM from a local directory (`model.path=...`).
* `ValueModel`: a transformer trunk with a scalar head. Used as a reward model (score read
  at the last real token) and as a PPO critic (one value per state, aligned as in
  rlhf.functional: values[:, t] is V(state before token t)).
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast,
                          Qwen2Config)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip padding: cumsum(mask) - 1, clamped at 0 (left or right padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def aligned(x: torch.Tensor) -> torch.Tensor:
    """Outputs at position t-1 moved to t along dim 1 (position 0 gets zeros): position t then
    holds what the model said before token t, the distribution that predicts it or the value of
    the state s_t. [B, L] or [B, L, ...]."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)


def real_width(attention_mask: torch.Tensor) -> int:
    """One past the last column where any row is real: the columns after it are padding in
    every row (right padding) and no real position attends to them."""
    real = attention_mask.bool().any(0).nonzero()
    return int(real.max()) + 1 if len(real) else attention_mask.shape[1]


# Long rows of very different lengths (multi-turn episodes) are cheaper as two forwards than one:
# a PPO minibatch of 4 ALFWorld episodes (206-1,066 tokens), policy + critic forward and backward,
# 326 -> 206 ms split in two by length (docs/profile.md). Short rows are left whole: the extra
# forward's fixed cost outweighs the padding it saves there (measured on the text task).
GROUP_MIN_WIDTH = 256  # rows this long or longer are grouped (the tiny models elsewhere have 128-256 positions)
GROUP_MIN_SAVING = 0.15  # the share of the padded grid a split must save


def length_groups(attention_mask: torch.Tensor) -> list[torch.Tensor] | None:
    """Two groups of row indices (shorter rows, longer rows) when the batch's rows reach
    GROUP_MIN_WIDTH and forwarding them apart skips at least GROUP_MIN_SAVING of the padded
    grid (right padding; a row's length is one past its last real column); None: one forward.
    Each row's result is the same either way, to float rounding (causal attention, no row reads
    another)."""
    n = attention_mask.shape[0]
    if n < 2:
        return None
    columns = torch.arange(1, attention_mask.shape[1] + 1, device=attention_mask.device)
    ends = (attention_mask.bool() * columns).amax(-1)
    if int(ends.max()) < GROUP_MIN_WIDTH:
        return None
    order = torch.argsort(ends, stable=True)
    sorted_ends = ends[order].tolist()
    grid = n * sorted_ends[-1]
    k = min(range(1, n), key=lambda k: k * sorted_ends[k - 1] + (n - k) * sorted_ends[-1])
    if grid - (k * sorted_ends[k - 1] + (n - k) * sorted_ends[-1]) < GROUP_MIN_SAVING * grid:
        return None
    return [order[:k], order[k:]]


def grouped(forward, attention_mask: torch.Tensor, *rows: torch.Tensor | None):
    """forward(*rows) per length group (length_groups), results put back in row order (each
    result [B, ...] or a tuple of them, None kept); None when the batch is best left whole."""
    groups = length_groups(attention_mask)
    if groups is None:
        return None
    outs = [forward(*(None if r is None else r[g] for r in rows)) for g in groups]
    back = torch.argsort(torch.cat(groups))

    def join(parts):
        return None if parts[0] is None else torch.cat(parts)[back]

    if isinstance(outs[0], tuple):
        return tuple(join([o[i] for o in outs]) for i in range(len(outs[0])))
    return join(outs)


def pad_right(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(sequences):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids, mask


def build_tiny_lm(model_cfg, tokenizer) -> nn.Module:
    heads = int(model_cfg.num_attention_heads)
    head_dim = int(model_cfg.hidden_size) // heads
    if head_dim < 32:
        raise ValueError(f"model.hidden_size / model.num_attention_heads = {head_dim}; it must be "
                         ">= 32 so that vLLM's CPU attention can run the model")
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=int(model_cfg.hidden_size),
        intermediate_size=int(model_cfg.intermediate_size),
        num_hidden_layers=int(model_cfg.num_hidden_layers), num_attention_heads=heads,
        num_key_value_heads=int(model_cfg.num_key_value_heads),
        max_position_embeddings=int(model_cfg.max_position_embeddings),
        tie_word_embeddings=bool(model_cfg.tie_word_embeddings),
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, attention_dropout=0.0, dtype="float32",
    )
    return AutoModelForCausalLM.from_config(config)


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer saved in `path`. A plain `tokenizers` tokenizer (the warm start's own BPE)
    is loaded as saved: AutoTokenizer would pick the model type's class (Qwen2Tokenizer for a
    Qwen2-shaped model), whose own pre-tokenizer splits " 7" into " ", "7", so prompts would be
    encoded differently from what SFT trained on."""
    config = Path(path) / "tokenizer_config.json"
    saved_class = json.loads(config.read_text()).get("tokenizer_class") if config.exists() else None
    if saved_class in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # not saved by save_pretrained; generation needs it
    return tokenizer


def load_lm(path: str | os.PathLike) -> nn.Module:
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"model.path={path} holds no HF model (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    disable_dropout(model)
    return model


def save_lm(model: nn.Module, tokenizer, path: str | os.PathLike) -> None:
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))


def disable_dropout(model: nn.Module) -> None:
    """RLHF practice: no dropout in policy, reference, critic or reward model (ratios must be 1
    at the first minibatch)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def frozen_copy(model: nn.Module) -> nn.Module:
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    ref.eval()
    return ref


def apply_lora(model: nn.Module, lora_cfg) -> nn.Module:
    """Wrap the policy with LoRA adapters (peft) when model.lora.rank > 0."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=int(lora_cfg.rank), lora_alpha=float(lora_cfg.alpha),
                        lora_dropout=0.0, target_modules=list(lora_cfg.target_modules),
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def lm_forward(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Teacher-forced forward with padding-aware positions; returns logits [B, L, V]."""
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    return out.logits


class ValueModel(nn.Module):
    """Transformer trunk + scalar head. Head init N(0, 1/sqrt(d+1)) for reward models
    (Stiennon et al. 2020) or zeros for critics (Huang et al. 2024, "N+ implementation details")."""

    def __init__(self, trunk: nn.Module, head_init: str = "normal"):
        super().__init__()
        self.trunk = trunk
        hidden = trunk.config.hidden_size
        self.head = nn.Linear(hidden, 1)
        if head_init == "zeros":
            nn.init.zeros_(self.head.weight)
        else:
            nn.init.normal_(self.head.weight, std=1.0 / (hidden + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)
        disable_dropout(self)

    @classmethod
    def from_lm(cls, lm: nn.Module, head_init: str = "normal") -> "ValueModel":
        if hasattr(lm, "get_base_model"):  # a LoRA-wrapped policy: the critic copies the plain model
            lm = lm.get_base_model()
        return cls(copy.deepcopy(lm.base_model), head_init)

    def raw(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Head output at every position: [B, L] (value of the state *after* token t). Trailing
        columns that are padding in every row, beyond the first of them, skip the trunk and are 0
        (causal attention: no real position reads them; a minibatch of a right-padded grid is often
        much shorter than the grid). Long rows of very different lengths go through in two
        length groups (`grouped`)."""
        split = grouped(self.raw, attention_mask, input_ids, attention_mask)
        if split is not None:
            return split
        full = input_ids.shape[1]
        width = min(real_width(attention_mask) + 1, full)
        ids, mask = input_ids[:, :width], attention_mask[:, :width]
        hidden = self.trunk(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                            use_cache=False).last_hidden_state
        out = self.head(hidden.float()).squeeze(-1)
        if width < full:
            out = torch.cat([out, out.new_zeros((out.shape[0], full - width, *out.shape[2:]))], 1)
        return out

    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """V(state before token t) aligned to token t (rlhf.functional convention)."""
        return aligned(self.raw(input_ids, attention_mask))

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Reward: the head at the last real token of each (right-padded) row."""
        raw = self.raw(input_ids, attention_mask)
        last = attention_mask.long().sum(-1) - 1
        return raw.gather(1, last.unsqueeze(1)).squeeze(1)

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.trunk.save_pretrained(str(path))
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()},
                  str(path / "value_head.safetensors"))
        (path / "value_model.json").write_text(json.dumps({"hidden_size": self.head.in_features}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ValueModel":
        path = Path(path)
        if not (path / "value_head.safetensors").exists():
            raise FileNotFoundError(f"{path} holds no value/reward model (no value_head.safetensors)")
        trunk = AutoModel.from_pretrained(str(path), config=AutoConfig.from_pretrained(str(path)),
                                          dtype=torch.float32)
        model = cls(trunk)
        model.head.load_state_dict(load_file(str(path / "value_head.safetensors")))
        return model
