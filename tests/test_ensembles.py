"""Reward-model ensembles (WCO/UWO) and best-of-n (Coste et al. 2024, "Reward Model Ensembles Help
Mitigate Overoptimization")."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from agents.models import ValueModel, build_tiny_lm
from agents.rewards import RewardModelEnsemble
from rlhf.warmstart import train_tokenizer
from rlhf.functional import best_of_n_expectation, best_of_n_kl, ensemble_objective
from tests.conftest import SMALL, read_scalars

SCORES = torch.tensor([[1.0, -2.0, 0.5],
                       [3.0, -1.0, 0.5],
                       [2.0, 0.0, -0.5]])  # 3 members x 3 samples


def test_wco_is_the_elementwise_minimum():
    assert ensemble_objective(SCORES, "wco").tolist() == [1.0, -2.0, -0.5]


def test_uwo_is_mean_minus_lambda_population_variance():
    # sample 0: mean 2, population variance ((1-2)^2 + (3-2)^2 + 0) / 3 = 2/3
    # sample 1: mean -1, variance (1 + 0 + 1) / 3 = 2/3;  sample 2: mean 1/6, variance 2/9
    expected = [2.0 - 0.5 * 2 / 3, -1.0 - 0.5 * 2 / 3, 1 / 6 - 0.5 * 2 / 9]
    assert ensemble_objective(SCORES, "uwo", 0.5).tolist() == pytest.approx(expected)
    assert ensemble_objective(SCORES, "mean").tolist() == pytest.approx([2.0, -1.0, 1 / 6])


@pytest.mark.parametrize("objective", ["wco", "uwo"])
def test_single_member_rejected_for_conservative_objectives(objective):
    with pytest.raises(ValueError, match="at least 2 members"):
        ensemble_objective(SCORES[:1], objective)
    with pytest.raises(ValueError, match="valid choices: mean, wco, uwo"):
        ensemble_objective(SCORES, "median")


def brute_force_best_of_n(scores, values, n):
    """Exact expectation over every n-subset; ties go to the larger index (as the estimator)."""
    total = []
    for subset in itertools.combinations(range(len(scores)), n):
        best = max(subset, key=lambda i: (scores[i], i))
        total.append(values[best])
    return float(np.mean(total))


def test_best_of_n_estimator_equals_brute_force_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=10).round(1)
    scores[3] = scores[7]  # a tie: each record keeps its own value
    values = rng.normal(size=10)
    ns = [1, 2, 3, 5, 10]
    assert best_of_n_expectation(scores, values, ns) == pytest.approx(
        [brute_force_best_of_n(scores, values, n) for n in ns], abs=1e-12)
    assert best_of_n_expectation(scores, values, [1])[0] == pytest.approx(values.mean())


def test_best_of_n_estimator_agrees_with_monte_carlo_resampling():
    rng = np.random.default_rng(1)
    scores, values = rng.normal(size=40), rng.normal(size=40)
    for n in (4, 16):
        draws = [rng.choice(40, n, replace=False) for _ in range(20000)]
        mc = np.mean([values[d[np.argmax(scores[d])]] for d in draws])
        assert best_of_n_expectation(scores, values, [n])[0] == pytest.approx(mc, abs=0.02)


def test_best_of_n_kl_values():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(256) == pytest.approx(math.log(256) - 255 / 256)
    with pytest.raises(ValueError, match="1 <= n <= N"):
        best_of_n_expectation([0.0, 1.0], [0.0, 1.0], [3])


@pytest.fixture(scope="module")
def two_member_dirs(tmp_path_factory):
    tokenizer = train_tokenizer(["the food was good.", "i hated the soup."] * 20, vocab_size=280)
    cfg = OmegaConf.create({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                            "num_attention_heads": 2, "num_key_value_heads": 1,
                            "max_position_embeddings": 64, "tie_word_embeddings": True})
    dirs = []
    for seed, (mean, std) in enumerate([(0.5, 2.0), (-1.0, 0.5)]):
        torch.manual_seed(seed)
        path = tmp_path_factory.mktemp(f"member{seed}")
        ValueModel.from_lm(build_tiny_lm(cfg, tokenizer)).save(path)
        (path / "metrics.json").write_text(json.dumps({"rm/score_mean": mean, "rm/score_std": std}))
        dirs.append(path)
    return dirs


def test_ensemble_members_normalized_and_one_call_equals_loop(two_member_dirs):
    ids = torch.randint(2, 250, (6, 9))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    loop = RewardModelEnsemble(two_member_dirs, objective="wco", member_pass="loop")
    vmap = RewardModelEnsemble(two_member_dirs, objective="wco", member_pass="vmap")
    scores = loop.member_scores(ids, mask)
    assert torch.allclose(scores, vmap.member_scores(ids, mask), atol=1e-5)
    raw = torch.stack([ValueModel.load(p).score(ids, mask) for p in two_member_dirs]).detach()
    assert torch.allclose(scores, (raw - torch.tensor([[0.5], [-1.0]])) / torch.tensor([[2.0], [0.5]]), atol=1e-5)
    assert torch.allclose(loop.score(ids, mask), scores.min(0).values)


def test_ensemble_rejects_one_member_for_wco(two_member_dirs):
    with pytest.raises(ValueError, match="at least 2 members"):
        RewardModelEnsemble(two_member_dirs[:1], objective="wco")


ENSEMBLE_SMALL = SMALL + ["reward=ensemble", "reward.members=2"]


def test_best_of_n_run_logs_curves(train_run):
    run_dir = train_run(ENSEMBLE_SMALL + ["algo=bon", "algo.prompts=2", "algo.n_max=8"], "bon")
    scalars = read_scalars(run_dir)
    assert [s for s, _ in scalars["bon/kl"]] == [1, 2, 4, 8]
    assert [v for _, v in scalars["bon/kl"]] == pytest.approx([best_of_n_kl(n) for n in (1, 2, 4, 8)], abs=1e-6)
    for rule in ("single_0", "single_1", "mean", "wco", "uwo"):
        gold = [v for _, v in scalars[f"bon/{rule}/gold"]]
        proxy = [v for _, v in scalars[f"bon/{rule}/proxy"]]
        assert len(gold) == 4 and all(0.0 <= g <= 1.0 for g in gold)
        assert proxy == sorted(proxy), "the selected proxy score must not fall as n grows"
    first = {rule: scalars[f"bon/{rule}/gold"][0][1] for rule in ("single_0", "mean", "wco")}
    assert len({round(v, 6) for v in first.values()}) == 1, "n = 1 is the base policy for every rule"


def test_best_of_n_pool_is_shared_only_by_runs_that_sample_alike(tmp_path):
    """Runs differing only in their reward models' data (label noise, pair count) reuse one
    cached sample pool; anything that changes the samples gets its own."""
    from rlhf.algos.bon import pool_spec
    from rlhf.cache import artifact_key
    from rlhf.config import compose

    def key(*extra):
        return artifact_key(pool_spec(compose(["algo=bon", "reward=ensemble", *extra]), tmp_path))

    base = key()
    assert key("env.label_noise=0.25") == base
    assert key("env.preference_pairs=1000") == base
    for changed in ("rollout.temperature=1.6", "algo.n_max=64", "algo.prompts=4", "seed=1"):
        assert key(changed) != base, changed


@pytest.mark.parametrize("kl_coef", [0.0, 0.05])
def test_ppo_with_ensemble_rewards(train_run, kl_coef):
    """PPO optimizes the UWO score of a 2-member ensemble. Two members: per sample, min = mean - std
    (population std) and UWO = mean - lambda * std^2, so over a batch min = mean - std exactly and
    UWO <= mean - lambda * std^2 (Jensen), strictly below the plain mean once members disagree.
    The KL penalty is -beta * (sequence KL) per episode: 0 with beta = 0."""
    run_dir = train_run(ENSEMBLE_SMALL + ["algo=ppo", "reward.objective=uwo", "reward.uwo_lambda=0.5",
                                          f"algo.kl_coef={kl_coef}", "train.steps=2"], f"ppo-{kl_coef}")
    scalars = read_scalars(run_dir)
    steps = [s for s, _ in scalars["objective/scores"]]
    assert len(steps) == 2
    for i in range(len(steps)):
        mean, low, std = (scalars[f"ensemble/{key}"][i][1] for key in ("mean", "min", "std"))
        uwo = scalars["objective/scores"][i][1]
        assert low == pytest.approx(mean - std, abs=1e-5)
        assert std > 1e-3, "the two members (different seeds) must disagree"
        assert uwo <= mean - 0.5 * std**2 + 1e-5
        kl = scalars["objective/kl"][i][1]
        assert scalars["objective/non_score_reward"][i][1] == pytest.approx(-kl_coef * kl, abs=1e-5)
    assert "eval/proxy" in scalars
