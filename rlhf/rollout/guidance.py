"""Decoding modes of the rollout layer (the `decoding` config group).

`decoding=vas`: Value Augmented Sampling (Han et al. 2024, the guided decoding rule). At
each step, for the base policy's top-k tokens a, value models V_i score the extended prefix
s.a (Q(s, a) = V(s.a): the transition is concatenation), and the base log-probs get
sum_i beta_i * (V_i(s.a) - mean over top-k); then the usual temperature / top-p warpers run
and the engine samples. Several value models (one per reward) combine with per-model betas
chosen at decoding time, no retraining.

Every row of a batch is scored on its own prefix (no cache keyed on row 0, the reference
code's bug), so a batch of different prompts decodes exactly like one prompt at a time.
The rule itself is rlhf.functional.value_guided_logits, a pure function a vLLM logits
processor can call the same way.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import LogitsProcessor

from agents.models import ValueModel
from rlhf.functional import value_guided_logits

VALUE_MODEL_DIR = "value_model"  # where VAS checkpoints keep their value model


class ValueGuidance(LogitsProcessor):
    def __init__(self, value_models: list[ValueModel], betas: list[float], top_k: int,
                 restrict_to_topk: bool = False):
        if len(value_models) != len(betas):
            raise ValueError(f"{len(value_models)} value models but {len(betas)} betas: give one beta per model")
        self.value_models = [v.eval() for v in value_models]
        self.betas, self.top_k, self.restrict = [float(b) for b in betas], int(top_k), restrict_to_topk
        self.prompt_mask: torch.Tensor | None = None

    def begin(self, prompt_attention_mask: torch.Tensor) -> None:
        """Called by the engine before each generate call: which prompt tokens are padding."""
        self.prompt_mask = prompt_attention_mask

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if all(b == 0.0 for b in self.betas):
            return torch.log_softmax(scores.float(), dim=-1)
        batch, length = input_ids.shape
        prompt_mask = self.prompt_mask if self.prompt_mask is not None else torch.ones_like(input_ids)
        generated = length - prompt_mask.shape[1]
        mask = torch.cat([prompt_mask, torch.ones(batch, generated + 1, dtype=prompt_mask.dtype,
                                                  device=prompt_mask.device)], dim=1)
        candidates = scores.topk(min(self.top_k, scores.shape[-1]), dim=-1).indices  # [B, K]
        k = candidates.shape[1]
        extended = torch.cat([input_ids.repeat_interleave(k, 0), candidates.reshape(-1, 1)], dim=1)
        extended_mask = mask.repeat_interleave(k, 0)
        values = torch.stack([v.raw(extended, extended_mask)[:, -1].reshape(batch, k) for v in self.value_models])
        return value_guided_logits(scores, candidates, values, self.betas, self.restrict).to(scores.dtype)


def resolve_value_model(path: str | Path) -> Path:
    """A value-model directory, a VAS checkpoint, or a VAS run directory (its latest checkpoint)."""
    from rlhf import checkpoint as ckpt

    path = Path(str(path)).expanduser()
    if (path / "value_head.safetensors").exists():
        return path
    if (path / VALUE_MODEL_DIR).is_dir():
        return path / VALUE_MODEL_DIR
    latest = ckpt.latest_checkpoint(path) if path.is_dir() else None
    if latest is not None and (latest / VALUE_MODEL_DIR).is_dir():
        return latest / VALUE_MODEL_DIR
    raise FileNotFoundError(f"decoding.value_models entry {path} is not a value model, a VAS checkpoint or a VAS run")


def decoding_processors(decoding_cfg, value_models: list[ValueModel] | None = None) -> list[LogitsProcessor]:
    """Processors for the `decoding` config group; `value_models` overrides the configured paths
    (a VAS run evaluates with the value model it is training)."""
    if decoding_cfg is None or decoding_cfg.name in ("none", "value_beam", "value_best_of"):  # searches (rlhf.search)
        return []
    if value_models is None:
        value_models = [ValueModel.load(resolve_value_model(p)) for p in decoding_cfg.value_models]
    if not value_models:
        raise ValueError("decoding=vas needs decoding.value_models=[<VAS run dir>, ...]")
    betas = list(decoding_cfg.betas) if decoding_cfg.betas else [float(decoding_cfg.beta)] * len(value_models)
    return [ValueGuidance(value_models, betas, int(decoding_cfg.top_k), bool(decoding_cfg.restrict_to_topk))]
