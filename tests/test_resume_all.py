"""Resume means resume, for every registered algorithm: a run paused after N steps
(train.stop_after, with its checkpoint) and continued with train.resume=true ends with the
same weights and the same logged metrics as the same run made in one go.

Each case is the smallest run of its algorithm that still exercises its state (optimizer,
counters, archives, private RNGs) across the pause: `total` steps in all, paused after `pause`.
"""
from __future__ import annotations

import pytest
import torch

from rlhf.algos import algo_names
from rlhf.checkpoint import latest_checkpoint, load_checkpoint
from tests.conftest import SMALL, compose_cfg, read_scalars

# timing and throughput differ between any two runs; everything else must match
VOLATILE = ("timing_s/", "perf/", "time/", "rollout/sync_logp_diff_max")

LM = SMALL + ["train.log_every=1", "eval.prompts=4", "eval.samples_per_prompt=1", "train.prompts_per_step=4"]
MATH = ["env=math", "reward=verifier", *[o for o in LM if not o.startswith("env.")]]
CODE = ["env=code", "reward=unit_tests", "model.tokenizer.vocab_size=258", *[o for o in LM if not o.startswith("env.")]]
# algo -> (overrides, pause after N steps); the total comes from each algorithm's own settings
CASES: dict[str, tuple[list[str], int]] = {
    "ppo": (["algo=ppo", "train.steps=4", *LM], 2),
    "ppo:shared_trunk": (["algo=ppo", "algo.shared_trunk=true", "train.steps=4", *LM], 2),  # checkpoints the value head alone
    "p3o": (["algo=p3o", "train.steps=4", *LM], 2),
    "grpo": (["algo=grpo", "train.steps=4", *MATH], 2),
    "vas": (["algo=vas", "reward=gold", "train.steps=4", *LM], 2),
    "constrained_ppo": (["algo=constrained_ppo", "reward=composite", "algo.thresholds=[0.1,0.2]", "train.steps=4",
                         *LM], 2),
    "rm": (["algo=rm", "reward=ensemble", "reward.members=2", *SMALL], 1),
    # stages: sample, score, curves; paused with the member scores in the checkpoint
    "bon": (["algo=bon", "reward=ensemble", "reward.members=2", "algo.prompts=2", "algo.n_max=8", *SMALL], 2),
    # Curry-DPO iterative, 2 stages x 2 epochs, paused inside stage 2: its reference comes from the checkpoint
    "dpo": (["algo=dpo", "algo.curriculum=iterative", "algo.responses_per_prompt=3", "algo.prompts=16", "algo.epochs=2",
             "algo.batch_size=8", "algo.lr=1e-3", *LM], 3),
    "dno": (["algo=dno", "algo.iterations=2", "algo.prompts_per_iteration=4", "algo.eval_prompts=2",
             "algo.eval_samples=2", "algo.lr=1e-3", *SMALL, "rollout.max_new_tokens=12"], 1),
    # 2 rounds x 4 updates; paused inside round 2, whose fresh samples of the policy come from the checkpoint
    "oreo": (["algo=oreo", "algo.prompts=8", "algo.responses_per_prompt=4", "algo.batch_size=8", "algo.epochs=1",
              "algo.rounds=2", *MATH], 5),
    # 2 iterations of tiny trees; paused after the first (its optimizer state comes from the checkpoint)
    "mcts_dpo": (["algo=mcts_dpo", "algo.iterations=2", "algo.problems=4", "algo.n_iters=2", "algo.filter=false",
                  *MATH], 1),
    # 2 phi-stage + 2 theta-stage updates, paused in the theta-stage: its pool, both optimizers, the frozen V_phi
    "bcoder": (["algo=bcoder", "algo.phi_updates=2", "algo.theta_updates=2", "algo.prompts=8", "algo.responses_per_prompt=2",
                "algo.batch_size=8", "algo.rerank_samples=2", *CODE], 3),
    "rft": (["algo=rft", "algo.prompts=8", "algo.responses_per_prompt=4", "algo.batch_size=8", "algo.epochs=1",
             "algo.rounds=2", "algo.accept_threshold=0", *MATH], 5),
    # 8 chunks of one update: 2 weights x 2 in Stage 1, 4 extensions; paused inside a Stage 2 round
    "cmorl": (["algo=cmorl", "env=mo", "algo.num_envs=2", "algo.num_steps=16", "algo.minibatches=2", "algo.epochs=2",
               "algo.weight_delta=1", "algo.update_iter=1", "algo.init_steps=128", "algo.total_steps=256",
               "algo.num_select=1", "algo.eu_delta=0.5"], 5),
    # tabular Q-learning on the integer-cell DST: 4 chunks of 100 env steps (each a new weight and policy)
    "morl_baselines": (["algo=morl_baselines", "env=mo", "algo.method=MPMOQLearning", "algo.total_steps=400",
                        "algo.chunks=4", "algo.eu_delta=0.5"], 2),
    # Mario with 12-step episodes: 3 meta-iterations of 2 tasks x one 16-step PPO update each
    "reptile": (["algo=reptile", "env=mario", "env.stages=[1-1,2-1]", "env.max_episode_steps=12",
                 "env.no_progress_steps=25", "algo.num_envs=1", "algo.num_steps=16", "algo.meta_batch=2",
                 "algo.inner_updates=1", "algo.epochs=1", "algo.minibatches=2", "algo.total_steps=96"], 1),
    # 3 chunks of 32 env steps (SB3's learn() from freshly seeded episodes each)
    "sb3_ppo": (["algo=sb3_ppo", "env=mario", "env.stages=[1-1]", "env.max_episode_steps=12", "env.no_progress_steps=25",
                 "algo.num_envs=2", "algo.n_steps=16", "algo.batch_size=16", "algo.n_epochs=1", "algo.features_dim=32",
                 "algo.chunk_steps=32", "algo.total_steps=96"], 1),
    "sb3_dqn": (["algo=sb3_dqn", "env=mario", "env.stages=[1-1]", "env.max_episode_steps=12", "env.no_progress_steps=25",
                 "algo.learning_starts=16", "algo.buffer_size=200", "algo.batch_size=8", "algo.target_update_interval=32",
                 "algo.features_dim=32", "algo.chunk_steps=32", "algo.total_steps=96"], 1),
    # 2 iterations of 32 env steps sampled in this process (no env-runner actors), a small CNN; still the
    # slowest case (~20 s idle, ~60 s on a busy 2-core machine): each of the three runs starts Ray and builds PPO
    "rllib_ppo": (["algo=rllib_ppo", "env=mario", "env.stages=[1-1]", "env.max_episode_steps=12",
                   "env.no_progress_steps=25", "algo.num_env_runners=0", "algo.train_batch_size=32",
                   "algo.minibatch_size=32", "algo.num_epochs=1", "algo.conv_filters=[[8,[8,8],4],[16,[4,4],2]]",
                   "algo.head_hiddens=[32]", "algo.total_steps=64"], 1),
}


def test_every_algorithm_has_a_case():
    assert sorted({name.split(":")[0] for name in CASES}) == algo_names(), "add a resume case for each registered algorithm"


def run(overrides: list[str], run_dir) -> None:
    from rlhf.train import run as train

    train(compose_cfg(overrides), run_dir)


def weights(run_dir) -> dict[str, dict[str, torch.Tensor]]:
    return load_checkpoint(latest_checkpoint(run_dir))[1]


def logged(run_dir) -> dict[str, list[tuple[int, float]]]:
    return {tag: values for tag, values in read_scalars(run_dir).items() if not tag.startswith(VOLATILE)}


@pytest.mark.slow
@pytest.mark.parametrize("algo", sorted(CASES))
def test_resume_equals_uninterrupted(algo, tmp_path):
    overrides, pause = CASES[algo]
    run(overrides, tmp_path / "whole")
    run(overrides + [f"train.stop_after={pause}"], tmp_path / "paused")
    paused_at = load_checkpoint(latest_checkpoint(tmp_path / "paused"))[0]["step"]
    assert paused_at == pause
    run(overrides + ["train.resume=true"], tmp_path / "paused")

    whole, resumed = weights(tmp_path / "whole"), weights(tmp_path / "paused")
    assert sorted(whole) == sorted(resumed)
    for module in whole:
        for name, tensor in whole[module].items():
            if torch.is_tensor(tensor) and tensor.is_floating_point():
                torch.testing.assert_close(resumed[module][name], tensor, rtol=0, atol=1e-5,
                                           msg=f"{algo}: {module}.{name} differs after resume")
    a, b = logged(tmp_path / "whole"), logged(tmp_path / "paused")
    assert sorted(a) == sorted(b)
    for tag in a:
        assert [s for s, _ in a[tag]] == [s for s, _ in b[tag]], f"{algo}: {tag} logged at other steps"
        assert [v for _, v in a[tag]] == pytest.approx([v for _, v in b[tag]], rel=1e-4, abs=1e-5, nan_ok=True), \
            f"{algo}: {tag} differs after resume"
