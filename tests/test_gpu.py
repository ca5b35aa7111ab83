"""device=cuda: the shared loop on a GPU. These tests need a CUDA device; CI machines have none,
so they are skipped there and run on a lent GPU machine (docs/scale.md says how and when they
last ran).

* every algorithm of the shared loop trains and evaluates with all its models on the GPU;
* a teacher-forced pass and one PPO update give the same numbers on the GPU as on the CPU;
* a run paused and resumed on the GPU ends as the same run made in one go (CUDA RNG included);
* an algorithm outside the shared loop is refused with device=cuda before any work starts.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch

from rlhf.config import ConfigError, validate
from tests.conftest import SMALL, compose_cfg, read_scalars

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")]

LM = [*SMALL, "train.prompts_per_step=4", "eval.prompts=4", "eval.samples_per_prompt=1", "train.checkpoint_every=0"]
MATH = ["env=math", "reward=verifier", *[o for o in LM if not o.startswith("env.")]]
CASES = {
    "ppo": ["algo=ppo", "reward=rm", *LM],
    "ppo:shared_trunk": ["algo=ppo", "reward=rm", "algo.shared_trunk=true", *LM],  # one network, value head on the policy
    "p3o": ["algo=p3o", "reward=rm", *LM],
    "grpo": ["algo=grpo", *MATH],
    "vas": ["algo=vas", "reward=gold", *LM],
    "constrained_ppo": ["algo=constrained_ppo", "reward=composite", "algo.thresholds=[0.1,0.2]", *LM],
}


def modules_on_cuda(trainer) -> list[str]:
    """Names of the trainer's modules with a parameter or buffer off the GPU."""
    named = {**trainer.algo.modules(), "ref": trainer.ref}
    if hasattr(trainer.reward, "ensemble"):
        named.update({f"rm{i}": m for i, m in enumerate(trainer.reward.ensemble.members)})
    return [name for name, m in named.items()
            if any(not t.is_cuda for t in [*m.parameters(), *m.buffers()])]


@pytest.mark.parametrize("algo", sorted(CASES))
def test_shared_loop_trains_on_cuda(algo, tmp_path):
    from rlhf.trainer import Trainer

    cfg = compose_cfg([*CASES[algo], "device=cuda", "train.steps=2"])
    validate(cfg)
    trainer = Trainer(cfg, tmp_path / algo)
    assert modules_on_cuda(trainer) == []
    trainer.fit()
    scalars = read_scalars(tmp_path / algo)
    losses = [v for tag, series in scalars.items() if tag.startswith("loss/") for _, v in series]
    assert losses and all(math.isfinite(v) for v in losses)
    assert any(tag.startswith("eval/") for tag in scalars)
    assert modules_on_cuda(trainer) == []
    trainer.close()


def test_cuda_matches_cpu(tmp_path):
    """The same batch and weights: teacher-forced log-probs and one PPO update on the CPU and the GPU."""
    from rlhf.trainer import Trainer

    cfg = compose_cfg([*CASES["ppo"], "algo.epochs=1", "algo.minibatches=1", "train.steps=1"])
    cpu = Trainer(cfg, tmp_path / "cpu")
    episodes = cpu.rollout.run(cpu.next_prompt_seeds())
    from rlhf.rollout.batch import collate

    batch = collate(episodes, cpu.tokenizer.pad_token_id)
    rewards, _ = cpu.reward(episodes, batch)
    gpu_cfg = compose_cfg([*CASES["ppo"], "algo.epochs=1", "algo.minibatches=1", "train.steps=1", "device=cuda"])
    gpu = Trainer(gpu_cfg, tmp_path / "gpu")
    gpu_rewards, _ = gpu.reward(episodes, batch)
    assert torch.allclose(rewards, gpu_rewards, atol=1e-4)
    lp_cpu = cpu.algo.frozen_logprobs(cpu.policy, batch)
    lp_gpu = gpu.algo.frozen_logprobs(gpu.policy, batch.to("cuda")).cpu()
    assert (lp_cpu - lp_gpu).abs().max() < 1e-3
    before = copy.deepcopy(cpu.policy.state_dict())
    m_cpu = cpu.algo.step(copy.deepcopy(batch), rewards)
    m_gpu = gpu.algo.step(batch.to("cuda"), gpu_rewards.to("cuda"))
    for key in ("loss/policy", "loss/value", "objective/kl"):
        assert m_cpu[key] == pytest.approx(m_gpu[key], rel=1e-3, abs=1e-4), key
    # the GPU update moves the weights by the CPU update's amounts, up to 1% in total (Adam's first
    # step is ~lr * sign(g), so a gradient near 0 may round to either side on either device)
    after_cpu, after_gpu = cpu.policy.state_dict(), gpu.policy.state_dict()
    step_cpu = sum(float((after_cpu[n] - before[n]).abs().sum()) for n in before)
    gap = sum(float((after_gpu[n].cpu() - after_cpu[n]).abs().sum()) for n in before)
    assert step_cpu > 0 and gap <= 0.01 * step_cpu, (gap, step_cpu)
    cpu.close()
    gpu.close()


def test_cpu_only_algorithm_is_refused():
    with pytest.raises(ConfigError, match="runs on the CPU only"):
        validate(compose_cfg(["algo=dpo", "device=cuda"]))


@pytest.mark.parametrize("algo", ["ppo", "p3o"])
def test_resume_on_cuda_equals_one_go(algo, tmp_path):
    """As tests/test_resume_all.py, on the GPU: the checkpoint holds the CUDA generators' state,
    which the sampling there draws from."""
    from rlhf.checkpoint import latest_checkpoint, load_checkpoint
    from rlhf.train import run

    overrides = [*CASES[algo], "device=cuda", "train.steps=3", "train.checkpoint_every=1", "train.log_every=1"]
    run(compose_cfg(overrides), tmp_path / "whole")
    run(compose_cfg([*overrides, "train.stop_after=1"]), tmp_path / "paused")
    run(compose_cfg([*overrides, "train.resume=true"]), tmp_path / "paused")
    whole = load_checkpoint(latest_checkpoint(tmp_path / "whole"))[1]
    resumed = load_checkpoint(latest_checkpoint(tmp_path / "paused"))[1]
    for module in whole:
        for name, tensor in whole[module].items():
            if torch.is_tensor(tensor) and tensor.is_floating_point():
                torch.testing.assert_close(resumed[module][name], tensor, rtol=0, atol=1e-4, msg=f"{module}.{name}")
    a, b = read_scalars(tmp_path / "whole"), read_scalars(tmp_path / "paused")
    for tag in ("objective/scores", "response_length/mean", "loss/policy"):
        assert [v for _, v in a[tag]] == pytest.approx([v for _, v in b[tag]], rel=1e-3, abs=1e-4), tag
