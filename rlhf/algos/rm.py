"""`algo=rm`: build (or reuse) the proxy reward model(s) of these settings and log their
validation metrics. Bradley-Terry reward models (Gao et al. 2023, Section 2; an ensemble of
k members with `reward=ensemble`, Coste et al. 2024) are built by rlhf.reward_models, which
every run with `reward=rm|ensemble` uses; this job only builds them alone, one step per
member, and logs each member's validation metrics at its step.

    python -m rlhf.train algo=rm env.label_noise=0.25 reward.seed=3
"""
from __future__ import annotations

import json
import logging

from envs import base as env_base
from envs.base import env_settings
from rlhf.config import ConfigError
from rlhf.harness import Job
from rlhf.reward_models import reward_model_dir
from rlhf.warmstart import warm_start_policy

log = logging.getLogger("rlhf")


class RewardModels(Job):
    unit = "stage"

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.reward.name not in ("rm", "ensemble"):
            raise ConfigError(f"algo=rm needs proxy reward models; got reward={cfg.reward.name} "
                              "(valid choices for algo=rm: reward=rm, reward=ensemble)")

    def __init__(self, cfg, run_dir):
        super().__init__(cfg, run_dir)
        self.total = int(cfg.reward.members)  # one stage per ensemble member
        self.policy_dir = None

    def step(self) -> dict[str, float]:
        """Build (or find in the cache) member `steps_done`: seed reward.seed + its index."""
        if self.policy_dir is None:
            env = env_base.make(str(self.cfg.env.name), split="train", **env_settings(self.cfg.env))
            self.policy_dir = warm_start_policy(self.cfg, env, log.info)
        path = reward_model_dir(self.cfg, self.policy_dir, log.info, int(self.cfg.reward.seed) + self.steps_done)
        with open(self.run_dir / "reward_models.txt", "a") as listing:
            listing.write(f"{path}\n")
        metrics = json.loads((path / "metrics.json").read_text())
        log.info(f"[rm] member {self.steps_done}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        return metrics

    def state_dict(self) -> dict:
        return {"members_built": self.steps_done}
