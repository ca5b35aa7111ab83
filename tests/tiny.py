"""Tiny random Qwen2 models and hand-built rollout batches for step-level algorithm tests."""
from __future__ import annotations

import torch
from omegaconf import OmegaConf

from agents.models import build_tiny_lm
from rlhf.rollout.batch import Batch

VOCAB, PAD = 48, 0
TINY = OmegaConf.create({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                         "num_attention_heads": 2, "num_key_value_heads": 1,
                         "max_position_embeddings": 64, "tie_word_embeddings": True})


class Vocab(list):
    """What build_tiny_lm reads from a tokenizer: its length and the EOS / pad ids."""
    eos_token_id = PAD
    pad_token_id = PAD


def tiny_lm(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_tiny_lm(TINY, Vocab(range(VOCAB))).eval()


def make_batch(prompts: list[list[int]], responses: list[list[int]], finished: list[bool] | None = None,
               group: list[int] | None = None) -> Batch:
    """Right-padded rows prompt + response; actions are the response tokens, the last one ends the turn."""
    n, width = len(prompts), max(len(p) + len(r) for p, r in zip(prompts, responses))
    ids = torch.full((n, width), PAD, dtype=torch.long)
    attention = torch.zeros(n, width, dtype=torch.long)
    action = torch.zeros(n, width)
    turn_end = torch.zeros(n, width)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, :len(p) + len(r)] = torch.tensor(p + r)
        attention[i, :len(p) + len(r)] = 1
        action[i, len(p):len(p) + len(r)] = 1.0
        turn_end[i, len(p) + len(r) - 1] = 1.0
    return Batch(input_ids=ids, attention_mask=attention, action_mask=action, behaviour_logprobs=torch.zeros(n, width),
                 turn_end_mask=turn_end, group=torch.tensor(group if group is not None else list(range(n))),
                 finished=torch.tensor(finished if finished is not None else [True] * n))
