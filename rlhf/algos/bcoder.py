"""B-Coder: value-based deep RL for program synthesis (Yu, Tao, Chen, Sun, Yang; ICLR 2024,
"B-Coder: Value-Based Deep Reinforcement Learning for Program Synthesis", arXiv 2310.03173).

Token MDP: s_t = (D, w_<t), a_t the next token, discount gamma, reward 0 except on the EOS
transition: the unit tests' outcome (+1 pass, -0.3 fail, -0.6 runtime error, -1 compile
error; CodeRL's basic reward). Static off-policy data: the ground-truth (GT) programs and
samples of the pretrained checkpoint theta_ckpt, scored once (rlhf.code_eval.code_pool).

Q from the LM's logits (section 4; dueling, non-positive advantage; the bound: App. G.1):
    A_theta(s,a) = alpha (l_theta(s,a) - max_a' l_theta(s,a'))  <= 0
    V_theta(s)   = bound(V^r_theta(s) + V_phi(s)),   bound(v) = R_max - softabs(v)
    Q_theta = A_theta + V_theta,   pi_theta = softmax(Q_theta / alpha) = softmax(l_theta)
so the policy is the LM itself. V^r = h1 - h2 (h2 a frozen copy of h1) is exactly 0 at init,
and V_phi is the phi network's pre-bound output: the theta-stage starts where phi ended.
phi-stage (initialization protocol): Q_phi = alpha (l_ckpt - max l_ckpt) + V_phi; only V_phi
learns, by TD towards r_t + gamma sg[Q_phi(s_{t+1}, a^_{t+1})], a^ = argmax p_ckpt.
theta-stage: the conservative Bellman operator with q = p_ckpt (Prop. 4.1: a gamma-contraction)
    (B^q Q)(s,a) = r + gamma Q(s', argmax_a' q(a'|s'))
    L_Q   = E (1/T) sum_t [r_t + gamma sg[Q_theta(s_{t+1}, a^_{t+1})] - Q_theta(s_t, a_t)]^2
    L_adv = E_GT sum_t |A_theta(s*_t, a*_t)|,   L_ce = -E_GT sum_t log pi_theta(a*_t | s*_t)
    L_ft  = L_Q + beta_adv L_adv + beta_ce L_ce   (a share rho_real of GT programs per minibatch)
with no target network (the current theta under stop-gradient). `algo.operator=optimality`
bootstraps with argmax Q_theta instead (B*, the ablation of Fig. 1). Dual strategy (Prop. 4.2):
the free reward r~(s,a) = Q_theta(s,a) - gamma V_theta(s') (its cheap form; V(terminal) = 0)
scores a program R~(W) = sum_t r~ to re-rank samples (rlhf.code_eval.sampled_eval).
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from agents.models import ValueModel, lm_forward, position_ids_from_mask
from rlhf import checkpoint as ckpt
from rlhf import code_eval
from rlhf.algos.base import optimizer_step
from rlhf.config import ConfigError, require_ints
from rlhf.evaluation import EVAL_SEED_OFFSET, checkpoint_policy, evaluate_lm_checkpoint
from rlhf.functional import aligned
from rlhf.offline import Minibatch, OfflineRounds, Trajectory

log = logging.getLogger("rlhf")
OPERATORS, VALUE_INITS = ("conservative", "optimality"), ("phi_stage", "random")


def softabs(v: torch.Tensor) -> torch.Tensor:
    """(softplus(v) + softplus(-v)) / 2 - ln 2: a smooth |v| with softabs(0) = 0 (App. G.1)."""
    return 0.5 * (F.softplus(v) + F.softplus(-v)) - math.log(2.0)


def bound(v: torch.Tensor, r_max: float) -> torch.Tensor:
    """V = R_max - softabs(v) <= R_max, so Q = A + V <= R_max since A <= 0 (App. G.1)."""
    return r_max - softabs(v)


def advantage(logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """A(s,.) = alpha (l(s,.) - max l(s,.)) over the vocabulary, in fp32: <= 0, 0 at the argmax."""
    logits = logits.float()
    return alpha * (logits - logits.max(-1, keepdim=True).values)


def next_state(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x at s_{t+1}, aligned to t; 0 after the last action (the terminal state has value 0)."""
    return F.pad(x[:, 1:], (0, 1)) * F.pad(mask[:, 1:], (0, 1))


def terminal_rewards(returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """r_t: the program's reward on its last token, 0 elsewhere."""
    last = mask.shape[1] - 1 - mask.flip(-1).argmax(-1)
    r = torch.zeros_like(mask).scatter(1, last[:, None], returns[:, None].to(mask.dtype))
    return r * (mask.sum(-1, keepdim=True) > 0)


def bellman_residual(adv, values, actions, target_actions, mask, returns, gamma: float) -> torch.Tensor:
    """delta_t = r_t + gamma sg[Q(s_{t+1}, a^_{t+1})] - Q(s_t, a_t) on action tokens. Aligned
    inputs: adv [B, L, V] = A(s_t, .), values [B, L] = V(s_t), actions = the tokens, a^ =
    target_actions (argmax of p_ckpt: B^q; argmax of Q_theta: B*; ties: the lowest id)."""
    q_taken = adv.gather(-1, actions[..., None]).squeeze(-1) + values
    q_target = adv.gather(-1, target_actions[..., None]).squeeze(-1) + values
    target = terminal_rewards(returns, mask) + gamma * next_state(q_target, mask).detach()
    return (target - q_taken) * mask


def per_sequence_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """E over programs of (1/T) sum_t x_t (programs without actions skipped)."""
    n = mask.sum(-1)
    return ((x * mask).sum(-1)[n > 0] / n[n > 0]).mean()


def ground_truth_losses(adv, logits, actions, gt_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_adv, L_ce): sums over the tokens of each GT program, mean over GT programs."""
    rows = (gt_mask.sum(-1) > 0).sum().clamp(min=1)
    a_taken = adv.gather(-1, actions[..., None]).squeeze(-1)
    logp = F.log_softmax(logits.float(), -1).gather(-1, actions[..., None]).squeeze(-1)
    return (-a_taken * gt_mask).sum() / rows, (-logp * gt_mask).sum() / rows


def free_reward(adv, values, actions, mask, gamma: float) -> torch.Tensor:
    """R~(W) = sum_t [Q(s_t, a_t) - gamma V(s_{t+1})], V(terminal) = 0 (Prop. 4.2's approximation)."""
    q_taken = adv.gather(-1, actions[..., None]).squeeze(-1) + values
    return ((q_taken - gamma * next_state(values, mask)) * mask).sum(-1)


class ResidualValueHead(nn.Module):
    """V^r_theta = h1(h) - h2(h): h1 random and trainable, h2 its frozen copy (0 at init)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.h1 = nn.Linear(hidden, 1)
        self.h2 = copy.deepcopy(self.h1).requires_grad_(False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return (self.h1(hidden) - self.h2(hidden)).squeeze(-1)


def q_parts(policy, phi, head, ids, attention, r_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned l_theta(s_t, .) [B, L, V] and V_theta(s_t) = bound(V^r_theta + V_phi) [B, L]."""
    out = policy(input_ids=ids, attention_mask=attention, position_ids=position_ids_from_mask(attention),
                 output_hidden_states=True, use_cache=False)
    v_residual = aligned(head(out.hidden_states[-1].float()))
    return aligned(out.logits.float()), bound(v_residual + phi.values(ids, attention), r_max)


def score_programs(policy, phi, head, ids, attention, mask, algo) -> torch.Tensor:
    """R~ of each (right-padded) program under the current Q (algo: alpha, gamma, r_max)."""
    logits, values = q_parts(policy, phi, head, ids, attention, float(algo.r_max))
    return free_reward(advantage(logits, float(algo.alpha)), values, ids, mask, float(algo.gamma))


@dataclass
class CodeMinibatch(Minibatch):
    real: torch.Tensor = field(kw_only=True)  # [B] 1 for ground-truth programs


class BCoder(OfflineRounds):
    @classmethod
    def check(cls, cfg) -> None:
        a = cfg.algo
        if cfg.env.name != "code" or cfg.reward.name != "unit_tests":
            raise ConfigError(f"algo=bcoder learns from unit tests: use env=code reward=unit_tests "
                              f"(got env={cfg.env.name} reward={cfg.reward.name})")
        for key, choices in (("operator", OPERATORS), ("value_init", VALUE_INITS)):
            if a[key] not in choices:
                raise ConfigError(f"algo.{key}={a[key]} unknown; valid choices: {', '.join(choices)}")
        require_ints(a, ("phi_updates", "theta_updates", "batch_size", "prompts", "responses_per_prompt",
                         "rerank_samples"), zero_ok=("phi_updates", "rerank_samples"))
        if a.value_init == "random" and a.phi_updates > 0:
            raise ConfigError(f"algo.value_init=random has no phi-stage: set algo.phi_updates=0 (got {a.phi_updates})")
        if not 0 < float(a.gamma) <= 1:
            raise ConfigError(f"algo.gamma={a.gamma} must lie in (0, 1]")
        if not 0 <= float(a.real_ratio) <= 1:
            raise ConfigError(f"algo.real_ratio={a.real_ratio} must lie in [0, 1]")
        for key in ("alpha", "lr", "rerank_temperature"):
            if float(a[key]) <= 0:
                raise ConfigError(f"algo.{key}={a[key]} must be > 0")

    def __init__(self, cfg, run_dir):
        # OfflineRounds sizes rounds by algo.rounds x algo.epochs; B-Coder has one static pool and
        # counts its updates per stage, so the base class gets one round and the total is set below
        sizing = copy.deepcopy(cfg)
        OmegaConf.set_struct(sizing, False)
        sizing.algo.rounds, sizing.algo.epochs = 1, 1
        super().__init__(sizing, run_dir)
        self.cfg, a = cfg, cfg.algo
        self.phi_updates, self.theta_updates = int(a.phi_updates), int(a.theta_updates)
        self.total = self.updates_per_round = self.phi_updates + self.theta_updates
        self.alpha, self.gamma, self.r_max = float(a.alpha), float(a.gamma), float(a.r_max)
        self.joint_phi = a.value_init == "random"  # ablation: V_phi random and trained with theta
        # a random head: at v = 0 softabs has zero slope, so a zero head would never move
        self.phi = ValueModel.from_lm(self.policy, head_init="normal")
        self.value_head = ResidualValueHead(self.policy.config.hidden_size)
        adamw = lambda params: torch.optim.AdamW(params, lr=float(a.lr), weight_decay=float(a.weight_decay))  # noqa: E731
        self.phi_opt = adamw(list(self.phi.parameters()))
        theta = [*self.policy.parameters(), *self.value_head.h1.parameters()]
        self.theta_opt = adamw(theta + (list(self.phi.parameters()) if self.joint_phi else []))
        self.real: list[Trajectory] = []
        self.real_order, self.real_cursor = [], 0

    # --- data: GT programs + checkpoint samples, stratified minibatches ----------------------------
    def collect(self, round_index: int) -> None:
        a = self.cfg.algo
        pool = code_eval.code_pool(self.cfg, self.policy_dir, self.env, self.tokenizer, int(a.prompts),
                                   int(a.responses_per_prompt), int(a.data_seed))
        self.real = [Trajectory(p, r, reward, 1.0) for p, r, reward in pool.real]
        self.data = [Trajectory(p, r, reward, float(reward == 1.0)) for p, r, reward in pool.generated]
        self.order, self.cursor, self.round, self.real_order, self.real_cursor = [], 0, round_index, [], 0
        self.round_metrics = pool.stats
        log.info("[bcoder] pool: " + " ".join(f"{k[5:]}={v:.3g}" for k, v in pool.stats.items()))

    def draw(self, pool, order, cursor, n):
        chosen = []
        while len(chosen) < min(n, len(pool)):
            if cursor >= len(order):
                order, cursor = list(range(len(pool))), 0
                self.order_rng.shuffle(order)
            chosen.append(pool[order[cursor]])
            cursor += 1
        return chosen, order, cursor

    def next_minibatch(self) -> CodeMinibatch:
        n_real = round(float(self.cfg.algo.real_ratio) * self.batch_size) if self.real else 0
        real, self.real_order, self.real_cursor = self.draw(self.real, self.real_order, self.real_cursor, n_real)
        rest, self.order, self.cursor = self.draw(self.data, self.order, self.cursor, self.batch_size - len(real))
        batch = self.collate(real + rest)
        return CodeMinibatch(**vars(batch), real=torch.tensor([1.0] * len(real) + [0.0] * len(rest)))

    # --- the two stages -----------------------------------------------------------------------------
    def update(self, batch: CodeMinibatch) -> dict[str, float]:
        ids, attn, mask, a = batch.input_ids, batch.attention_mask, batch.action_mask, self.cfg.algo
        phi_stage = self.steps_done < self.phi_updates
        self.phi.requires_grad_(phi_stage or self.joint_phi)  # frozen after its stage (also after a resume)
        if phi_stage or a.operator == "conservative":  # the frozen checkpoint: its advantage, its greedy action
            with torch.no_grad():
                ckpt_logits = aligned(lm_forward(self.ref, ids, attn).float())
        if phi_stage:  # phi-stage: Q_phi = A_ckpt + V_phi, only V_phi learns
            values = bound(self.phi.values(ids, attn), self.r_max)
            delta = bellman_residual(advantage(ckpt_logits, self.alpha), values, ids, ckpt_logits.argmax(-1), mask,
                                     batch.returns, self.gamma)
            loss = per_sequence_mean(delta ** 2, mask)
            norm = optimizer_step(self.phi_opt, loss, float(a.max_grad_norm))
            return {"bcoder/phi_td_loss": float(loss.detach()), "bcoder/phi_grad_norm": norm,
                    **self.value_stats(values.detach(), batch)}
        progress = (self.steps_done - self.phi_updates) / self.theta_updates  # linear decay, no warmup
        for group in self.theta_opt.param_groups:
            group["lr"] = float(a.lr) * (1.0 - progress)
        logits, values = q_parts(self.policy, self.phi, self.value_head, ids, attn, self.r_max)
        adv = advantage(logits, self.alpha)
        target = ckpt_logits.argmax(-1) if a.operator == "conservative" else logits.detach().argmax(-1)
        delta = bellman_residual(adv, values, ids, target, mask, batch.returns, self.gamma)
        q_loss = per_sequence_mean(delta ** 2, mask)
        adv_loss, ce_loss = ground_truth_losses(adv, logits, ids, mask * batch.real[:, None])
        loss = q_loss + float(a.beta_adv) * adv_loss + float(a.beta_ce) * ce_loss
        norm = optimizer_step(self.theta_opt, loss, float(a.max_grad_norm))
        with torch.no_grad():
            r_tilde = free_reward(adv, values, ids, mask, self.gamma)
        return {"bcoder/q_loss": float(q_loss.detach()), "bcoder/adv_loss": float(adv_loss.detach()),
                "bcoder/ce_loss": float(ce_loss.detach()), "bcoder/loss": float(loss.detach()),
                "bcoder/grad_norm": norm, "bcoder/lr": self.theta_opt.param_groups[0]["lr"],
                **{f"bcoder/free_reward_{kind}": float(r_tilde[rows].mean())
                   for kind, rows in (("real", batch.real > 0), ("generated", batch.real == 0)) if rows.any()},
                **self.value_stats(values.detach(), batch)}

    def value_stats(self, values, batch) -> dict[str, float]:
        """V(s_0) (the state after the prompt) and the value of the state before EOS per outcome."""
        mask = batch.action_mask
        first, last = mask.argmax(-1), mask.shape[1] - 1 - mask.flip(-1).argmax(-1)
        v_end = values.gather(1, last[:, None]).squeeze(1)
        out = {"bcoder/v_s0": float(values.gather(1, first[:, None]).mean())}
        for value, name in code_eval.OUTCOMES.items():
            rows = batch.returns == value
            if rows.any():
                out[f"bcoder/v_last_{name}"] = float(v_end[rows].mean())
        return out

    def program_score(self, ids, attention, mask) -> torch.Tensor:
        return score_programs(self.policy, self.phi, self.value_head, ids, attention, mask, self.cfg.algo)

    def evaluate(self) -> dict[str, float]:
        """Greedy pass@1 on the held-out problems; after the phi-stage also R~ re-ranking of
        algo.rerank_samples sampled programs per problem (pass@k ranked and unranked, AUROC)."""
        metrics = super().evaluate()
        a = self.cfg.algo
        if int(a.rerank_samples) > 0 and self.steps_done >= self.phi_updates:
            metrics.update(code_eval.sampled_eval(self.cfg, self.policy, self.tokenizer, int(a.rerank_samples),
                                                  float(a.rerank_temperature), EVAL_SEED_OFFSET, self.program_score,
                                                  self.eval_samples, prefix="rerank/"))
        return metrics

    # --- checkpoints ----------------------------------------------------------------------------------
    def optimizers(self):
        return {"phi": self.phi_opt, "theta": self.theta_opt}

    def modules(self):
        return {"policy": self.policy, "phi": self.phi, "value_head": self.value_head}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "real": [vars(t) for t in self.real], "real_order": self.real_order,
                "real_cursor": self.real_cursor}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.real = [Trajectory(**t) for t in state["real"]]
        self.real_order, self.real_cursor = list(state["real_order"]), int(state["real_cursor"])

    def describe(self) -> str:
        a = self.cfg.algo
        return (f"bcoder on env=code: phi-stage {self.phi_updates} + theta-stage {self.theta_updates} updates of "
                f"{self.batch_size} (operator={a.operator}, value_init={a.value_init}, rho_real={a.real_ratio})")


def evaluate(cfg, checkpoint, run_dir, records: list | None = None) -> dict[str, float]:
    """`python -m rlhf.evaluate run=<bcoder run>`: greedy and sampled pass@k, and R~ re-ranking."""
    state, weights = ckpt.load_checkpoint(checkpoint)
    metrics = evaluate_lm_checkpoint(cfg, checkpoint, state, records)
    if int(cfg.algo.rerank_samples) > 0:
        policy, _, tokenizer, _ = checkpoint_policy(cfg, checkpoint, state)
        phi, head = ValueModel.from_lm(policy), ResidualValueHead(policy.config.hidden_size)
        phi.load_state_dict(weights["phi"])
        head.load_state_dict(weights["value_head"])
        a = cfg.algo
        score = lambda ids, attn, mask: score_programs(policy, phi, head, ids, attn, mask, a)  # noqa: E731
        metrics.update(code_eval.sampled_eval(cfg, policy, tokenizer, int(a.rerank_samples),
                                              float(a.rerank_temperature), EVAL_SEED_OFFSET, score, records, "rerank/"))
    return metrics
