"""Config checks that run before any work starts (docs/layout.md, contract 5).

Hydra itself rejects unknown groups and group values (listing the available options).
This module adds what Hydra cannot know: keys given on the command line that do not exist
(with the valid keys of that section and a did-you-mean), values outside their choices,
out-of-range numbers, and combinations that cannot work.
"""
from __future__ import annotations

import difflib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

import configs
from envs.base import EnvConfigError

CONFIG_DIR = str(Path(configs.__file__).parent)
GROUPS = ("algo", "env", "model", "reward", "rollout", "launcher", "decoding")

# key -> valid values (checked when the key exists in the composed config)
CHOICES: dict[str, tuple] = {
    "device": ("cpu", "cuda"),
    "rollout.name": ("hf", "vllm"),
    "launcher.name": ("local", "ray"),  # rlhf.launch.LAUNCHERS
    "launcher.placement_strategy": ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
    "algo.clip_variant": ("joint", "separate"),
    "algo.kl_from": ("current", "old"),
    "algo.loss_average": ("pairs", "tokens"),
    "algo.reward_scaling": ("running", "none"),
    "algo.kl_estimator": ("k1", "k2", "k3"),
    "algo.kl_penalty": ("reward", "loss"),
    "algo.critic_init": ("auto", "reward_model", "policy"),
    "reward.init": ("policy", "scratch"),
    "reward.objective": ("mean", "wco", "uwo"),
    "reward.member_pass": ("auto", "loop", "vmap"),
    "reward.placement": ("turn", "episode"),
    "model.sft.loss_on": ("all", "actions"),
    "env.sft.loss_on": ("all", "actions"),
    "algo.stages": ("both", "init"),
    "algo.method": ("MPMOQLearning", "PQL", "PGMORL"),
    "algo.weight_selection": ("random", "ols", "gpi-ls"),
    "env.payoff_format": ("compact", "sentences"),
    "env.reviews": ("mixed", "plain"),
    "env.reward_timing": ("round", "end"),
    "env.invalid_move": ("C", "D"),
    "algo.form": ("mu", "xi", "all"),
    "env.actions": ("right_only", "simple", "complex"),
    "algo.meta": ("reptile", "joint"),
    "eval.stages": ("held_out", "train", "all", "none"),
    "algo.threshold_search": ("none", "nelder_mead"),
    "algo.loss": ("dpo", "ipo", "simpo", "fdpo", "tdpo", "asft", "rpo", "lipo"),  # rlhf.preference.losses.LOSSES
    "algo.curriculum": ("none", "iterative", "single_run"),
    "algo.f_divergence": ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"),
    "algo.sft_reduction": ("sum", "mean"),
    "algo.tdpo_variant": (1, 2),
    "algo.oracle": ("gold", "intransitive"),  # envs.preference.ORACLES
    "algo.pairs": ("all", "restrictive", "spin"),
    "reward.labels": ("gold", "intransitive"),
}
POSITIVE_INTS = ("train.steps", "train.prompts_per_step", "algo.samples_per_prompt", "algo.epochs",
                 "algo.minibatches", "algo.minibatch_pairs", "rollout.max_new_tokens", "eval.prompts",
                 "eval.samples_per_prompt", "env.preference_pairs", "env.max_turns", "reward.members",
                 "algo.prompts", "algo.n_max", "algo.responses_per_prompt", "algo.batch_size", "algo.iterations",
                 "launcher.num_workers")
UNIT_INTERVAL = ("env.label_noise", "env.eval_fraction")
# Ranges by a setting's name, applied to every numeric setting of every group (algo.*, env.*,
# model.*, ...), so that an algorithm's new `foo_lr` or `bar_coef` is checked without a list.
# Each entry: (test of the name, test of the value, the range in words).
RANGES = (
    (lambda k: k in ("lr", "learning_rate", "adam_eps", "max_grad_norm") or k.endswith(("_lr", "_lr_final"))
     or k.endswith("timeout_s"), lambda v: v > 0, "> 0"),
    (lambda k: k.endswith("coef") or k in ("weight_decay", "label_smoothing"), lambda v: v >= 0, ">= 0"),
    (lambda k: k.endswith(("_fraction", "_rate")) or k in (
        "label_noise", "gamma", "eval_gamma", "gae_lambda", "lam", "adam_beta1", "adam_beta2",
        "gpu_memory_utilization", "initial_epsilon", "final_epsilon", "exploration_final_eps"),
     lambda v: 0 <= v <= 1, "in [0, 1]"),
)


def check_ranges(cfg: DictConfig) -> None:
    """Every numeric setting whose name has a known valid range (RANGES), in every group."""
    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, DictConfig):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                for name_test, value_test, words in RANGES:
                    if name_test(str(key)) and not value_test(value):
                        raise ConfigError(f"{prefix}{key}={value!r} must be {words}")
    walk(cfg, "")


def compose(overrides: list[str]) -> DictConfig:
    """The config `python -m rlhf.train <overrides>` would run, via Hydra's Compose API
    (for tests and sweeps that train in-process); checked like the CLI checks it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        check_override_keys(hydra_compose("config", overrides=[o for o in overrides
                                                               if o.split("=", 1)[0].lstrip("+~") in GROUPS]),
                            overrides)
        return hydra_compose("config", overrides=overrides)


class ConfigError(ValueError):
    """A bad value, key or combination, found before any work started."""


# What the CLI reports as a config error (exit status 2): ours, and the environments' own
# (envs/ do not import rlhf/, so they raise their own type).
CONFIG_ERRORS = (ConfigError, EnvConfigError)


def check_override_keys(cfg: DictConfig, overrides: list[str]) -> None:
    """Every `key=value` override must name an existing key (Hydra's struct error does not
    say which keys exist); `+key=value` adds keys deliberately and is left alone."""
    for override in overrides:
        if "=" not in override or override.startswith(("+", "~", "hydra.", "-")):
            continue
        key = override.split("=", 1)[0]
        if key in GROUPS or OmegaConf.select(cfg, key, default=_MISSING) is not _MISSING:
            continue
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
        while not isinstance(node, DictConfig):  # walk up to the deepest section that exists
            parent, _, leaf = parent.rpartition(".")
            node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
        valid = sorted(node.keys())
        guess = difflib.get_close_matches(leaf, valid, n=1)
        hint = f" Did you mean '{parent + '.' if parent else ''}{guess[0]}'?" if guess else ""
        where = f"under '{parent}'" if parent else "at the top level"
        raise ConfigError(f"unknown config key '{key}'.{hint} Valid keys {where}: {', '.join(valid)}")


_MISSING = object()


def validate(cfg: DictConfig) -> None:
    from rlhf.algos import algo_names, algorithm_class, env_kinds

    _check_choice("algo.name", cfg.algo.name, algo_names())
    kinds = env_kinds(str(cfg.algo.name))
    env_kind = cfg.env.get("kind", "text")
    if env_kind not in kinds:
        raise ConfigError(f"algo={cfg.algo.name} runs on env kinds {', '.join(kinds)}, but env={cfg.env.name} "
                          f"is of kind '{env_kind}'; choose an env of kind {' or '.join(kinds)}")
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            _check_choice(key, value, choices)
    for key in POSITIVE_INTS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{key}={value!r} must be a positive integer")
    for key in UNIT_INTERVAL:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not 0.0 <= float(value) <= 1.0:
            raise ConfigError(f"{key}={value!r} must lie in [0, 1]")
    check_ranges(cfg)
    _check_combinations(cfg)
    check = getattr(algorithm_class(str(cfg.algo.name)), "check", None)
    if check is not None:  # the algorithm's own settings, checked next to its code
        check(cfg)


def require_ints(section: DictConfig, keys, prefix: str = "algo", zero_ok=()) -> None:
    """Each `section[key]` must be an integer >= 1 (>= 0 for keys in `zero_ok`)."""
    for key in keys:
        value, least = section[key], 0 if key in zero_ok else 1
        if not isinstance(value, int) or value < least:
            raise ConfigError(f"{prefix}.{key}={value!r} must be " + ("a positive integer" if least else "an integer >= 0"))


def _check_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not valid; valid choices: {', '.join(map(str, choices))}")


def _check_combinations(cfg: DictConfig) -> None:
    r = cfg.rollout
    if float(r.temperature) < 0:
        raise ConfigError(f"rollout.temperature={r.temperature} must be >= 0 (0 = greedy)")
    if not 0.0 < float(r.top_p) <= 1.0:
        raise ConfigError(f"rollout.top_p={r.top_p} must lie in (0, 1]")
    if r.get("sync_check_threshold") is not None and float(r.sync_check_threshold) < 0:
        raise ConfigError(f"rollout.sync_check_threshold={r.sync_check_threshold} must be >= 0 (null or 0: log the "
                          "engine/trainer log-prob gap without raising)")
    if r.name == "vllm" and int(cfg.model.lora.rank) > 0:
        raise ConfigError(f"rollout=vllm syncs full weights; with model.lora.rank={cfg.model.lora.rank} use "
                          "rollout=hf (LoRA adapters into vLLM are not supported yet)")
    if r.name == "vllm" and cfg.env.get("constrain_actions"):
        raise ConfigError("env.constrain_actions=true decodes constrained to the env's admissible commands, which "
                          "only the HF engine does: use rollout=hf (or env.constrain_actions=false)")
    if cfg.env.name == "games" and cfg.reward.name != "gold":
        raise ConfigError(f"env=games is scored by its own payoffs: use reward=gold (got reward={cfg.reward.name})")
    if cfg.env.name == "alfworld" and cfg.reward.name != "gold":
        raise ConfigError(f"env=alfworld is scored by its own task reward: use reward=gold (got reward={cfg.reward.name})")
    if cfg.env.name == "games" and int(cfg.env.max_turns) != int(cfg.env.rounds):
        raise ConfigError(f"env=games plays one round per turn: env.max_turns ({cfg.env.max_turns}) must equal "
                          f"env.rounds ({cfg.env.rounds})")
    needs_env = {"verifier": "math", "unit_tests": "code"}.get(str(cfg.reward.name))
    if needs_env and cfg.env.name != needs_env:
        raise ConfigError(f"reward={cfg.reward.name} reads the env={needs_env} reward; with env={cfg.env.name} "
                          "use reward=gold, rm, ensemble or composite")
    objective = cfg.reward.get("objective")
    if objective in ("wco", "uwo") and int(cfg.reward.members) < 2:
        raise ConfigError(f"reward.objective={objective} combines an ensemble: reward.members must be >= 2, "
                          f"got {cfg.reward.members} (with one member use reward.objective=mean)")
    _check_launcher(cfg.launcher)
    if cfg.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda but no CUDA device is visible; valid choices here: device=cpu")
        from rlhf.algos import algo_names, algorithm_class
        cuda_algos = sorted(a for a in algo_names() if getattr(algorithm_class(a), "runs_on_cuda", False))
        if str(cfg.algo.name) not in cuda_algos:
            raise ConfigError(f"algo={cfg.algo.name} runs on the CPU only; device=cuda is supported by algo="
                              f"{', '.join(cuda_algos)} (checked on a GPU: docs/scale.md)")
    if cfg.model.path and not Path(str(cfg.model.path)).expanduser().is_dir():
        raise ConfigError(f"model.path={cfg.model.path} is not a directory")
    if cfg.train.resume not in (None, False) and str(cfg.train.resume).lower() not in ("true", "latest"):
        if not Path(str(cfg.train.resume)).expanduser().exists():
            raise ConfigError(f"train.resume={cfg.train.resume} does not exist; valid values: null, true, "
                              "latest, or a run/checkpoint directory")


def _check_launcher(launcher: DictConfig) -> None:
    for key in ("chunk_episodes", "max_restarts"):
        value = launcher.get(key)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ConfigError(f"launcher.{key}={value!r} must be an integer >= 0")
    if launcher.name == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ConfigError("launcher=ray needs Ray: pip install -e '.[ray]' (valid choice without it: launcher=local)")
