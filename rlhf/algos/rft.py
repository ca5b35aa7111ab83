"""Rejection-sampling fine-tuning (RFT): supervised fine-tuning on the policy's own samples
that the verifier accepts (Yuan et al. 2023, "Scaling Relationship on Learning Mathematical
Reasoning with Large Language Models"; the "rejection sampling" baseline of OREO, Wang et al.
2024, section 5).

    data  = { (x, y) : y ~ pi_SFT(.|x), verifier(x, y) = 1 }
    L(θ)  = - mean over accepted responses' tokens of log pi_θ(y_t | x, y_<t)

The same rounds, samples and minibatches as OREO (rlhf.offline): at equal settings both train
on the very same cached SFT samples; rounds > 1 resample with the current policy.
"""
from __future__ import annotations

import torch

from agents.models import lm_forward
from rlhf.algos.base import optimizer_step
from rlhf.functional import masked_mean, token_logprobs
from rlhf.offline import Minibatch, OfflineRounds, Trajectory, evaluate  # noqa: F401  (python -m rlhf.evaluate)


class RFT(OfflineRounds):
    def __init__(self, cfg, run_dir):
        super().__init__(cfg, run_dir)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=float(cfg.algo.lr))

    def keep(self, t: Trajectory, score: float) -> bool:
        return score >= float(self.cfg.algo.accept_threshold)

    def update(self, batch: Minibatch) -> dict[str, float]:
        logp = token_logprobs(lm_forward(self.policy, batch.input_ids, batch.attention_mask), batch.input_ids,
                              allowed=batch.allowed_ids)  # constrained decoding: pi renormalized over the allowed ids
        loss = -masked_mean(logp, batch.action_mask)
        norm = optimizer_step(self.optimizer, loss, float(self.cfg.algo.max_grad_norm))
        return {"rft/nll": float(loss.detach()), "rft/grad_norm": norm}

    def optimizers(self):
        return {"policy": self.optimizer}
