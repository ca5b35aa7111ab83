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
# algo -> (overrides, pause after N steps); the total comes from each algorithm's own settings
CASES: dict[str, tuple[list[str], int]] = {
    "ppo": (["algo=ppo", "train.steps=4", *LM], 2),
    "p3o": (["algo=p3o", "train.steps=4", *LM], 2),
    "vas": (["algo=vas", "reward=gold", "train.steps=4", *LM], 2),
    "constrained_ppo": (["algo=constrained_ppo", "reward=composite", "algo.thresholds=[0.1,0.2]", "train.steps=4",
                         *LM], 2),
    "rm": (["algo=rm", "reward=ensemble", "reward.members=2", *SMALL], 1),
}


def test_every_algorithm_has_a_case():
    assert sorted(CASES) == algo_names(), "add a resume case for each registered algorithm"


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
        assert [v for _, v in a[tag]] == pytest.approx([v for _, v in b[tag]], rel=1e-4, abs=1e-5), \
            f"{algo}: {tag} differs after resume"
