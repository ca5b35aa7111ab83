"""Episodes -> right-padded training tensors (aligned as in rlhf.functional)."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from rlhf.rollout.runner import Episode


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L] right padded
    attention_mask: torch.Tensor  # [B, L] 1 on real tokens
    action_mask: torch.Tensor  # [B, L] 1 on generated tokens
    behaviour_logprobs: torch.Tensor  # [B, L] from the engine
    turn_end_mask: torch.Tensor  # [B, L] 1 on the last generated token of each turn
    group: torch.Tensor  # [B] episode seed: samples of the same prompt share it
    finished: torch.Tensor  # [B] bool, the last turn ended with EOS / a stop string
    old_logprobs: torch.Tensor | None = None  # [B, L] pi_old recomputed by the trainer
    allowed_ids: torch.Tensor | None = None  # [B, L, K] constrained decoding's allowed ids per token, -1 padded

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: torch.Tensor) -> "Batch":
        picked = {f.name: getattr(self, f.name) for f in fields(self)}
        return Batch(**{k: v[index] if v is not None else None for k, v in picked.items()})

    def to(self, device) -> "Batch":
        """The same batch on `device` (the policy's: rollouts are collated on the CPU)."""
        return Batch(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                        for f in fields(self)})

    @property
    def response_length(self) -> torch.Tensor:
        return self.action_mask.sum(-1)


def collate(episodes: list[Episode], pad_id: int) -> Batch:
    width = max(len(ep.token_ids) for ep in episodes)
    n = len(episodes)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    action_mask = torch.zeros((n, width), dtype=torch.float32)
    logprobs = torch.zeros((n, width), dtype=torch.float32)
    turn_end = torch.zeros((n, width), dtype=torch.float32)
    for i, ep in enumerate(episodes):
        length = len(ep.token_ids)
        input_ids[i, :length] = torch.tensor(ep.token_ids)
        attention_mask[i, :length] = 1
        action_mask[i, :length] = torch.tensor(ep.action_mask, dtype=torch.float32)
        logprobs[i, :length] = torch.tensor(ep.logprobs, dtype=torch.float32)
        turn_end[i, ep.turn_ends] = 1.0
    return Batch(input_ids=input_ids, attention_mask=attention_mask, action_mask=action_mask,
                 behaviour_logprobs=logprobs, turn_end_mask=turn_end,
                 group=torch.tensor([ep.seed for ep in episodes]),
                 finished=torch.tensor([ep.finish_reasons[-1] == "stop" for ep in episodes]),
                 allowed_ids=collate_allowed([ep.allowed for ep in episodes], width))


def collate_allowed(rows: list[list[list[int] | None] | None], width: int) -> torch.Tensor | None:
    """[B, L, K] allowed ids of constrained positions (-1 elsewhere) from each row's per-token
    allowed ids (an episode's `allowed`), or None when no row was decoded under a constraint."""
    if all(r is None for r in rows):
        return None
    k = max((len(a) for r in rows if r is not None for a in r if a is not None), default=1)
    out = torch.full((len(rows), width, k), -1, dtype=torch.int32)
    for i, r in enumerate(rows):
        for t, ids in enumerate(r or ()):
            if ids is not None:
                out[i, t, :len(ids)] = torch.tensor(ids, dtype=torch.int32)
    return out
