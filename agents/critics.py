"""Critics with several value heads: one per reward stream, on one shared trunk.

Constrained RLHF (Moskovitz et al. 2024) learns a value for the KL task and one for each
component reward of a composite reward, so each stream gets its own GAE and its own value
loss while the trunk is shared.
"""
from __future__ import annotations

from torch import nn

from agents.models import ValueModel


class MultiHeadCritic(ValueModel):
    """A value model with one head per reward stream: values() is [B, L, heads] (ValueModel.values
    aligns along the positions whatever the trailing shape)."""

    def __init__(self, trunk: nn.Module, heads: int):
        super().__init__(trunk, head_init="zeros")
        self.head = nn.Linear(trunk.config.hidden_size, heads)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
