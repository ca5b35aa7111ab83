"""`python -m rlhf.reproduce rm_ensembles_overoptimization --quick`: a three-valued verdict whose
effects and 95% intervals are recomputed here from the runs' own logs (bon.json, the PPO runs'
eval/samples_step_N.jsonl), and tables that hold the TensorBoard values."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from rlhf.logger import read_scalars
from rlhf.reproduce.stats import paired_effect

REPO = Path(__file__).resolve().parents[1]


def effect_line(report: str, name: str) -> tuple[float, float, float, str]:
    match = re.search(re.escape(name) + r": ([+-][\d.]+) \[95% CI ([+-][\d.]+), ([+-][\d.]+)\] .* -> "
                      r"(REPRODUCED|NOT REPRODUCED|INCONCLUSIVE)$", report, re.M)
    assert match, f"no effect line for {name!r}"
    return float(match[1]), float(match[2]), float(match[3]), match[4]


def final_gold_per_prompt(run_dir: Path) -> np.ndarray:
    last = sorted((run_dir / "eval").glob("samples_step_*.jsonl"))[-1]
    by_prompt = defaultdict(list)
    for line in last.read_text().splitlines():
        row = json.loads(line)
        by_prompt[row["seed"]].append(row["gold"])
    return np.array([np.mean(by_prompt[s]) for s in sorted(by_prompt)])


@pytest.mark.slow
def test_quick_rm_ensembles_claim_effects_from_logs(tmp_path):
    out = tmp_path / "ens"
    result = subprocess.run([sys.executable, "-m", "rlhf.reproduce", "rm_ensembles_overoptimization", "--quick",
                             "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert results["outcome"] in ("REPRODUCED", "NOT REPRODUCED", "INCONCLUSIVE")
    assert re.search(r"\*\*Verdict:\*\* (REPRODUCED|NOT REPRODUCED|INCONCLUSIVE): .+ measured: best-of-n: mean "
                     r"single RM at n\*=\d+ - at n=16", report)
    assert "## Criterion history" in report and "REPRODUCED, narrowly" in results["history"][0]
    for png in ("bon_gold.png", "bon_final.png", "ppo_gold.png", "ppo_final.png"):
        assert (out / png).stat().st_size > 1000
    runs = {r["name"]: Path(r["run_dir"]) for r in results["runs"]}

    # best-of-n: the best member is chosen on the validation pool, the effects read the test pool
    test, valid = (json.loads((runs[f"bon-{split}"] / "bon.json").read_text()) for split in ("test", "valid"))
    members = [f"single_{i}" for i in range(3)]
    valid_single = np.array([np.mean(valid["curves"][m]["gold_per_prompt"], 0) for m in members])  # [members, ns]
    best, peak = int(np.argmax(valid_single[:, -1])), int(np.argmax(valid_single.mean(0)[:-1]))
    curves = np.array([test["curves"][m]["gold_per_prompt"] for m in members])  # [members, prompts, ns]
    singles = curves[:, :, -1]
    wco = np.array(test["curves"]["wco"]["gold_per_prompt"])[:, -1]
    for name, mine in ((f"best-of-n: mean single RM at n*={test['ns'][peak]} - at n=16 (overoptimization)",
                        paired_effect("", curves[:, :, peak], singles)),
                       (f"best-of-n WCO - best single RM (member {best})", paired_effect("", wco, singles[best])),
                       ("best-of-n WCO - mean single RM", paired_effect("", np.broadcast_to(wco, singles.shape), singles))):
        estimate, low, high, word = effect_line(report, name)
        assert (estimate, low, high) == pytest.approx((mine.estimate, mine.low, mine.high), abs=5e-4)
        assert word == mine.outcome
    # the table holds the gold the bon run logged to TensorBoard at n = N
    row = next(line for line in report.splitlines() if line.startswith("| WCO |"))
    assert float(row.strip("|").split("|")[3]) == pytest.approx(read_scalars(runs["bon-test"])["bon/wco/gold"][-1][1],
                                                                abs=5e-4)

    # PPO: per-prompt final gold averaged over seeds (quick: 2 single-RM seeds, 1 per ensemble);
    # the best single seed by its validation gold
    seeds = (0, 1)
    best_seed = max(seeds, key=lambda s: read_scalars(runs[f"valid-single-s{s}"])["eval/gold"][-1][1])
    single = np.stack([final_gold_per_prompt(runs[f"ppo-single-s{s}"]) for s in seeds])
    for arm, label in (("wco", "WCO"), ("uwo", "UWO")):
        ens = final_gold_per_prompt(runs[f"ppo-{arm}-s0"])
        for name, mine in ((f"PPO {label} - mean single RM", paired_effect("", ens, single.mean(0))),
                           (f"PPO {label} - best single RM (seed {best_seed})", paired_effect("", ens, single[best_seed]))):
            estimate, low, high, word = effect_line(report, name)
            assert (estimate, low, high) == pytest.approx((mine.estimate, mine.low, mine.high), abs=5e-4)
            assert word == mine.outcome
    for s in seeds:
        row = next(line for line in report.splitlines() if line.startswith(f"| single RM | {s} |"))
        logged = read_scalars(runs[f"ppo-single-s{s}"])["eval/gold"][-1][1]
        assert float(row.strip("|").split("|")[4]) == pytest.approx(logged, abs=5e-4)
        assert logged == pytest.approx(single[seeds.index(s)].mean(), abs=1e-6)
    # nine effects, combined: any refuted part refutes, all reproduced reproduces
    words = re.findall(r"-> (REPRODUCED|NOT REPRODUCED|INCONCLUSIVE)$", report, re.M)
    assert len(words) == 9
    expected = ("REPRODUCED" if all(w == "REPRODUCED" for w in words) else
                "NOT REPRODUCED" if "NOT REPRODUCED" in words else "INCONCLUSIVE")
    assert results["outcome"] == expected
