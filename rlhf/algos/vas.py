"""VAS: Value Augmented Sampling (Han, Shenfeld, Srivastava, Kim, Agrawal 2024).

Follows the paper and the authors' released code (and its TRL port). VAS never trains
the policy. It fits a value function of the *frozen* base policy pi_0 from pi_0's own samples,
then sharpens pi_0 at decoding time (rlhf.rollout.guidance):  pi(a|s) ~ pi_0(a|s) exp(beta Q(s,a)),
with Q(s, a) = V(s.a) because the transition is concatenation.

Value training, per rollout phase, on samples drawn by the shared loop from pi_0:
    V(s_t) for every generated token t (the state before it; rlhf.functional convention),
    reward on the last generated token, V after the end = 0,
    TD(lambda) targets from the pre-update values:  G_t = A_t + V(s_t), A = GAE(gamma, lambda),
    loss = 1/2 masked_mean((V_phi(s_t) - G_t)^2)
  plus the terminal state s.EOS with target r (otherwise V(s.EOS), which decoding asks
  for whenever EOS is a top-k candidate, is never trained).
The value model is the base policy's trunk (same tokenizer: it scores pi_0's token ids) with
a zero-initialized head. The base policy gets no optimizer and no gradient.
"""
from __future__ import annotations

import torch

from agents.models import ValueModel
from rlhf.algos.base import Algorithm, make_optimizer, minibatch_indices, optimizer_step
from rlhf.functional import gae, masked_mean
from rlhf.rollout.batch import Batch
from rlhf.rollout.guidance import VALUE_MODEL_DIR, ValueGuidance


def td_lambda_targets(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                      lam: float) -> torch.Tensor:
    """lambda-returns G_t = A_t + V(s_t) with A = GAE over generated tokens (V after the end = 0)."""
    return gae(rewards, values, mask, gamma, lam)[1]


def terminal_values(value_model: ValueModel, batch: Batch) -> torch.Tensor:
    """V(state after the last token) of each (right-padded) row."""
    raw = value_model.raw(batch.input_ids, batch.attention_mask)
    last = batch.attention_mask.long().sum(-1) - 1
    return raw.gather(1, last.unsqueeze(1)).squeeze(1)


class VAS(Algorithm):
    name = "vas"

    def __init__(self, cfg, policy, ref, tokenizer, **kw):
        super().__init__(cfg, policy, ref, tokenizer)
        policy.requires_grad_(False)  # the base policy never changes
        self.value = ValueModel.from_lm(policy, head_init="zeros").requires_grad_(True)
        self.value.train()
        self.optimizer = make_optimizer(self.value.parameters(), self.algo_cfg)
        self.generator = torch.Generator().manual_seed(int(cfg.seed))

    def modules(self):
        return {"policy": self.policy, "value": self.value}

    def state_dict(self):
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])

    def write_extra(self, checkpoint_dir) -> None:
        self.value.save(checkpoint_dir / VALUE_MODEL_DIR)

    def eval_processors(self) -> list:
        a = self.algo_cfg
        return [ValueGuidance([self.value], [float(a.eval_beta)], int(a.eval_top_k))]

    def step(self, batch: Batch, turn_rewards: torch.Tensor) -> dict[str, float]:
        a, mask = self.algo_cfg, batch.action_mask
        final_reward = turn_rewards.sum(-1)
        with torch.no_grad():
            old_values = self.value.values(batch.input_ids, batch.attention_mask) * mask
            targets = td_lambda_targets(turn_rewards, old_values, mask, float(a.gamma), float(a.lam))
        stats: dict[str, list[float]] = {}
        for _ in range(int(a.epochs)):
            for idx in minibatch_indices(len(batch), int(a.minibatches), self.generator):
                mb, m = batch.select(idx), mask[idx]
                values = self.value.values(mb.input_ids, mb.attention_mask)
                td_loss = 0.5 * masked_mean((values - targets[idx]) ** 2, m)
                terminal_loss = 0.5 * ((terminal_values(self.value, mb) - final_reward[idx]) ** 2).mean()
                loss = td_loss + float(a.terminal_coef) * terminal_loss
                grad_norm = optimizer_step(self.optimizer, loss, float(a.max_grad_norm))
                for key, value in {"loss/value": td_loss.item(), "value/terminal_loss": terminal_loss.item(),
                                   "value/grad_norm": grad_norm}.items():
                    stats.setdefault(key, []).append(value)
        with torch.no_grad():
            fitted = self.value.values(batch.input_ids, batch.attention_mask)
            residual = masked_mean((targets - fitted) ** 2, mask)
            spread = masked_mean((targets - masked_mean(targets, mask)) ** 2, mask)
        metrics = {key: sum(v) / len(v) for key, v in stats.items()}
        metrics.update({"value/explained_variance": float(1 - residual / spread.clamp(min=1e-8)),
                        "value/mean": float(masked_mean(fitted, mask)),
                        "objective/kl": 0.0})  # the sampling policy is pi_0 itself
        return metrics
