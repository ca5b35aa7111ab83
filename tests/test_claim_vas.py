"""`python -m rlhf.reproduce vas_steering --quick`: the three-valued verdict, and effects whose
95% intervals are recomputed here from the runs' own logs (per-sample eval rows, bon.json, each
evaluation's config)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from rlhf.evaluation import EVAL_SEED_OFFSET
from rlhf.logger import read_scalars
from rlhf.reproduce.stats import combine, paired_effect

REPO = Path(__file__).resolve().parents[1]
OUTCOME = r"(REPRODUCED|NOT REPRODUCED|INCONCLUSIVE)"
EFFECT = re.compile(r"^- (?P<name>.+?): (?P<est>[+-]\d+\.\d{4}) \[95% CI (?P<low>[+-]\d+\.\d{4}), "
                    rf"(?P<high>[+-]\d+\.\d{{4}})\] \(.+\) -> (?P<outcome>{OUTCOME})$")


def per_prompt(run_dir: Path, key: str = "gold") -> dict[str, float]:
    """Each prompt's mean over its sample rows (eval/samples_step_N.jsonl)."""
    (path,) = (run_dir / "eval").glob("samples_step_*.jsonl")
    grouped = defaultdict(list)
    for line in path.read_text().splitlines():
        row = json.loads(line)
        grouped[row["prompt"]].append(row[key])
    return {p: float(np.mean(v)) for p, v in grouped.items()}


def last(run_dir: Path, tag: str) -> float:
    return read_scalars(run_dir)[tag][-1][1]


@pytest.mark.slow
def test_quick_vas_claim_reports_intervals_from_logged_samples(tmp_path):
    out = tmp_path / "vas"
    result = subprocess.run([sys.executable, "-m", "rlhf.reproduce", "vas_steering", "--quick", "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    runs = {r["name"]: Path(r["run_dir"]) for r in results["runs"]}
    assert re.search(rf"\*\*Verdict:\*\* {OUTCOME}: .+ measured: gold at beta 4 - beta 0 ", report)
    for png in ("gold_vs_beta.png", "kl_vs_beta.png", "bon_gold_vs_n.png", "vas_vs_bon.png", "composition.png"):
        assert (out / png).stat().st_size > 1000
    assert any("best-of-n at N = 11: 0.803" in h for h in results["history"]) and "## Criterion history" in report

    # the beta table's gold is the evaluation's logged mean, which is the mean of its sample rows
    for beta in ("0.0", "4.0"):
        row = next(line for line in report.splitlines() if line.startswith(f"| {beta} |"))
        logged = last(runs[f"beta{beta}"], "eval/gold")
        assert float(row.strip("|").split("|")[1]) == pytest.approx(logged, abs=5e-4)
    # beta = 0 decodes the base policy exactly: KL to the base ~0
    assert abs(last(runs["beta0.0"], "eval/kl")) < 0.05

    effects = {m["name"]: m for m in map(EFFECT.match, report.splitlines()) if m}
    assert len(effects) == 7
    verdict_parts = [m["outcome"] for name, m in effects.items() if "not in the verdict" not in name]
    assert results["outcome"] == combine(verdict_parts)

    def check(name: str, a: dict[str, float], b: dict[str, float]) -> None:
        prompts = sorted(a)
        effect = paired_effect(name, np.array([a[p] for p in prompts]), np.array([b[p] for p in prompts]))
        logged = effects[name]
        for key, value in (("est", effect.estimate), ("low", effect.low), ("high", effect.high)):
            assert float(logged[key]) == pytest.approx(value, abs=1e-4), (name, key)

    base = per_prompt(runs["beta0.0"])
    check("gold at beta 4 - beta 0", per_prompt(runs["beta4.0"]), base)

    # beta* on the validation prompts (highest logged gold, the smaller beta on a tie)
    valid = {b: last(runs[f"valid-beta{b}"], "eval/gold") for b in ("0.0", "4.0")}
    beta_star = max(valid, key=lambda b: (valid[b], -float(b)))
    vas = runs[f"beta{beta_star}"]
    assert f"VAS at beta* = {float(beta_star):g} spends" in report
    # the compute match reads top_k from the evaluation's config (4 in quick mode, not the default 10)
    decoding = OmegaConf.load(vas / "eval_config.yaml").decoding
    assert decoding.top_k == 4
    passes = 1 + decoding.top_k if float(beta_star) else 1
    n_star = passes * last(vas, "eval/response_length") / last(runs["beta0.0"], "eval/response_length")
    assert f"= {n_star:.2f}" in report
    bon = json.loads((runs["bon-rm"] / "bon.json").read_text())
    (samples,) = (vas / "eval").glob("samples_step_*.jsonl")
    prompt_of = {json.loads(line)["seed"]: json.loads(line)["prompt"] for line in samples.read_text().splitlines()}
    at_n = defaultdict(list)
    for p, gold in enumerate(bon["curves"]["single_0"]["gold_per_prompt"]):
        at_n[prompt_of[EVAL_SEED_OFFSET + p]].append(np.interp(np.log(n_star), np.log(bon["ns"]), gold))
    check(f"VAS (beta* = {float(beta_star):g}) - best-of-{n_star:.1f} gold (matched forward passes)",
          per_prompt(vas), {p: float(np.mean(v)) for p, v in at_n.items()})
