"""launcher=ray: rollout workers as Ray actors, the trainer as single controller.

The reference is `launcher=local launcher.chunk_episodes=4`: the same seeded chunks in one
process. Ray runs must equal it exactly (episodes token for token, every logged metric but
timings), on one node, across simulated nodes, and when a worker dies mid-phase.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # token auth is on by default and writes to ~/.ray

import pytest
import ray
import torch
from ray.cluster_utils import Cluster

from rlhf.config import ConfigError, validate
from tests.conftest import compose_cfg, read_scalars

# 4 prompts x 2 samples (p3o) = 8 episodes per phase, in two chunks of 4: one per worker.
COMMON = ["model.sft.demonstrations=2000", "model.sft.epochs=1", "reward=gold", "train.steps=2",
          "train.prompts_per_step=4", "eval.prompts=2", "rollout.max_new_tokens=16", "threads=1",
          # Ray workers hold copies of the policy, so the trainer recomputes pi_old there; the local
          # reference must too (reusing the local engine's behaviour log-probs differs by ~1e-7)
          "rollout.behaviour_as_old_logprobs=false"]
CHUNK = ["launcher.chunk_episodes=4"]
RAY_WORKERS = ["launcher=ray", "launcher.num_workers=2", "launcher.cpus_per_worker=1",
               "launcher.placement_timeout_s=120", "launcher.log_to_driver=false"]
RAY = RAY_WORKERS + CHUNK
NOT_COMPARED = ("timing_s/", "perf/")  # wall-clock measurements


def train(overrides: list[str], run_dir: Path, before_fit=None):
    """(trainer, episodes of each phase, logged scalars) of a run trained in this process."""
    from rlhf.trainer import Trainer

    cfg = compose_cfg(COMMON + overrides)
    validate(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = Trainer(cfg, run_dir)
        phases = []
        run = trainer.rollout.run
        trainer.rollout.run = lambda seeds: phases.append(run(seeds)) or phases[-1]
        if before_fit is not None:
            before_fit(trainer)
        trainer.fit()
    finally:
        torch.set_num_threads(threads)
    return trainer, phases, read_scalars(run_dir)


def assert_same_metrics(got: dict, want: dict) -> None:
    tags = sorted(t for t in want if not t.startswith(NOT_COMPARED))
    assert sorted(t for t in got if not t.startswith(NOT_COMPARED)) == tags
    for tag in tags:
        assert got[tag] == want[tag], tag  # exact: same chunks, same seeds, same weights


def assert_same_episodes(got: list, want: list) -> None:
    assert len(got) == len(want)
    for phase_got, phase_want in zip(got, want):
        assert [e.seed for e in phase_got] == [e.seed for e in phase_want]  # none lost, none twice, in order
        for a, b in zip(phase_got, phase_want):
            assert (a.token_ids, a.action_mask, a.logprobs, a.rewards) == (b.token_ids, b.action_mask, b.logprobs, b.rewards)


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
    trainer, phases, scalars = train(CHUNK, tmp_path_factory.mktemp("local"))
    return phases, scalars, trainer


@pytest.mark.slow
def test_single_node_run_equals_local(local_reference, tmp_path):
    """With no Ray running, launcher=ray starts its own (as `python -m rlhf.train launcher=ray`
    does), trains with two workers, logs exactly the local launcher's metrics, and shuts Ray
    down at the end. Runs first: the multi-node tests below connect this process to a cluster."""
    assert not ray.is_initialized()
    trainer, phases, scalars = train(RAY + ["launcher.num_cpus=2"], tmp_path)
    assert trainer.rollout.started_ray and not ray.is_initialized()
    assert_same_episodes(phases, local_reference[0])
    assert_same_metrics(scalars, local_reference[1])
    assert scalars["rollout/policy_version"] == [(1, 1.0), (2, 2.0)]
    assert all(gap <= 1e-5 for _, gap in scalars["rollout/sync_logp_diff_max"])  # workers hold the trainer's weights


@pytest.fixture(scope="module")
def cluster():
    """Head (runs nothing of ours) + two nodes offering the custom resource `rollout_node`.
    Each test joins it the way a user joins an existing cluster: launcher.address=HOST:PORT."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1, resources={"rollout_node": 1})
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def multi_node(cluster) -> list[str]:
    return RAY + [f"launcher.address={cluster.address}", "launcher.resources_per_worker={rollout_node:1}",
                  "launcher.placement_strategy=SPREAD"]


@pytest.mark.slow
def test_multi_node_run_equals_local(cluster, local_reference, tmp_path):
    nodes = {}
    trainer, phases, scalars = train(multi_node(cluster), tmp_path,
                                     before_fit=lambda t: nodes.update(workers=t.rollout.node_ids()))
    head = cluster.head_node.node_id
    assert len(set(nodes["workers"])) == 2 and head not in nodes["workers"], nodes
    assert trainer.rollout.started_ray and not ray.is_initialized()  # joined via launcher.address, then left
    assert_same_episodes(phases, local_reference[0])
    assert_same_metrics(scalars, local_reference[1])


@pytest.mark.slow
def test_dead_worker_is_restarted_and_its_episodes_rerun(cluster, local_reference, caplog):
    """Worker 0 exits (os._exit) after sampling its chunk, before returning it: Ray restarts it,
    the controller loads the current weights into it and re-runs exactly that chunk. The phase
    equals the local launcher's, episode for episode (none lost, none twice)."""
    from rlhf.launch.ray_launcher import RayRollout

    trainer = local_reference[2]  # trained 2 phases: its weights differ from the ones on disk
    rollout = RayRollout(compose_cfg(COMMON + multi_node(cluster)), trainer.policy, trainer.tokenizer, trainer.policy_dir,
                         trainer.num_episodes)
    try:
        ray.get(rollout.workers[0].exit_on.remote(1))
        seeds = trainer.next_prompt_seeds()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            want = trainer.rollout.run(seeds)  # launcher=local, same chunks
        finally:
            torch.set_num_threads(threads)
        got = rollout.run(seeds)
        assert rollout.restarts == 1
        assert "re-running episodes 0:4" in caplog.text
        assert_same_episodes([got], [want])
        assert_same_episodes([rollout.run(seeds)], [want])  # the restarted worker serves the next phase too
    finally:
        rollout.close()


def test_unplaceable_group_fails_with_what_the_cluster_has(cluster):
    from rlhf.launch.ray_launcher import RayRollout

    cfg = compose_cfg(COMMON + multi_node(cluster) + ["launcher.num_workers=3", "launcher.placement_timeout_s=2"])
    with pytest.raises(RuntimeError, match=r"could not reserve 3 x \{'CPU': 1.0, 'rollout_node': 1.0\} .*the cluster has"):
        RayRollout(cfg, policy=None, tokenizer=SimpleNamespace(pad_token_id=0), policy_dir=Path("."), num_episodes=8)
    assert not ray.is_initialized()  # the failed launcher left the cluster


def test_bad_launcher_values_name_the_choices():
    with pytest.raises(ConfigError, match="valid choices: local, ray"):
        validate(compose_cfg(COMMON + ["launcher.name=slurm"]))
    with pytest.raises(ConfigError, match="PACK, SPREAD, STRICT_PACK, STRICT_SPREAD"):
        validate(compose_cfg(COMMON + ["launcher=ray", "launcher.placement_strategy=pack"]))
