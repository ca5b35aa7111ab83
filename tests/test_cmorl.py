"""C-MORL (algo=cmorl) on MO-Gymnasium (env=mo): the weight grid, crowding distance and the
Pareto archive (rlhf.pareto) on hand-made fronts, the reference-shifted threshold and the
barrier on hand-made numbers, infeasible-start recovery, a resume paused inside a Stage 2 round,
an end-to-end run with evaluation, and the quick `cmorl_pareto` claim's report read back from
the logs. (tests/test_resume_all.py checks the generic pause/resume contract for every algorithm.)"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mo_gymnasium", reason="needs the optional extra: pip install -e '.[mo]'")
pytest.importorskip("morl_baselines", reason="needs the optional extra: pip install -e '.[mo]'")

from rlhf.algos.cmorl import CMORL, barrier_loss, shifted_threshold
from rlhf.control_ppo import ReturnNormalizer
from rlhf.pareto import Member, ParetoArchive, crowding_distance, front_metrics, simplex_weights, supported_points
from rlhf.config import ConfigError, validate
from tests.conftest import compose_cfg, read_scalars

INF = math.inf
# a small but complete run: 2 weights x 4 updates of 4 envs x 32 steps, then 2 Stage 2 rounds of 2 extensions;
# 8 chunks (steps of the run) of 2 updates
TINY = ["algo=cmorl", "env=mo", "algo.num_envs=4", "algo.num_steps=32", "algo.minibatches=2", "algo.weight_delta=1",
        "algo.update_iter=2", "algo.init_steps=1024", "algo.total_steps=2048", "algo.num_select=1",
        "algo.eu_delta=0.1"]


# --- 1. weight grids ----------------------------------------------------------------------

def test_simplex_weight_grid():
    np.testing.assert_allclose(simplex_weights(2, 0.25), [[0, 1], [0.25, 0.75], [0.5, 0.5], [0.75, 0.25], [1, 0]])
    assert len(simplex_weights(2, 0.2)) == 6  # hopper-2d in the paper: 6 preferences
    np.testing.assert_allclose(simplex_weights(3, 1.0), [[0, 0, 1], [0, 1, 0], [1, 0, 0]])  # delta = 1: one-hots
    three = simplex_weights(3, 0.5)  # minecart: delta 0.5
    assert {tuple(w) for w in three} == {(0, 0, 1), (0, 0.5, 0.5), (0, 1, 0), (0.5, 0, 0.5), (0.5, 0.5, 0), (1, 0, 0)}
    np.testing.assert_allclose(simplex_weights(2, 0.2, min_w=0.1, max_w=0.9),
                               [[0.1, 0.9], [0.3, 0.7], [0.5, 0.5], [0.7, 0.3], [0.9, 0.1]])
    eu = simplex_weights(2, 0.01)
    assert len(eu) == 101 and np.allclose(eu.sum(1), 1) and (eu >= 0).all()
    assert len(simplex_weights(3, 0.1)) == 66


# --- 3. crowding distance and the archive --------------------------------------------------

def test_crowding_distance_by_hand():
    front = np.array([[0, 10], [1, 9], [5, 5], [6, 1], [10, 0]], dtype=float)
    # obj 0 (range 10): (5-0)/10, (6-1)/10, (10-5)/10; obj 1 (range 10): (10-5)/10, (9-1)/10, (5-0)/10
    np.testing.assert_allclose(crowding_distance(front), [INF, 1.0, 1.3, 1.0, INF])
    # zero-range objective (all times equal): skipped, no division by zero, no NaN
    np.testing.assert_allclose(crowding_distance(np.array([[0, 1], [1, 1], [3, 1]], dtype=float)), [INF, 1.0, INF])
    np.testing.assert_allclose(crowding_distance(np.array([[2, 2], [2, 2]], dtype=float)), [0.0, 0.0])
    # duplicate vectors: finite, and the pair's distances sum to the gap they fill
    np.testing.assert_allclose(crowding_distance(np.array([[0, 3], [1, 2], [1, 2], [3, 0]], dtype=float)),
                               [INF, 1 / 3 + 2 / 3, 2 / 3 + 1 / 3, INF])
    assert crowding_distance(np.zeros((0, 2))).shape == (0,)


def member(g, uid) -> Member:
    return Member(np.asarray(g, dtype=float), {}, {}, {"test": uid}, uid)


def test_archive_update_filters_dominated_below_reference_and_duplicates():
    archive = ParetoArchive(np.array([0.0, -25.0]), capacity=10)
    archive.update([member((1, -1), 1), member((103.5, -17.4), 2)])
    archive.update([member((63.0, -15.7), 3), member((1, -1), 4),  # 4 duplicates 1: the old member stays
                    member((50.0, -20.0), 5),  # dominated by 3
                    member((-1.0, -5.0), 6), member((10.0, -30.0), 7)])  # below the reference point
    assert [p.uid for p in archive.members] == [1, 2, 3]
    assert archive.dropped_below_ref == 2
    # a point that dominates an archive member replaces it
    archive.update([member((2.0, -1.0), 8)])
    assert [p.uid for p in archive.members] == [2, 3, 8]


def test_archive_capacity_keeps_largest_crowding_distance():
    archive = ParetoArchive(np.array([-1.0, -1.0]), capacity=3)
    archive.update([member(g, i) for i, g in enumerate([(0, 10), (1, 9), (5, 5), (6, 1), (10, 0)])])
    assert [tuple(p.objectives) for p in archive.members] == [(0, 10), (5, 5), (10, 0)]


def test_selection_uses_crowding_distance_and_history():
    archive = ParetoArchive(np.array([-1.0, -1.0]), capacity=10)
    archive.update([member(g, i) for i, g in enumerate([(0, 10), (1, 9), (5, 5), (10, 0)])])
    # cd: (1,9): 5/10 + 5/10 = 1.0; (5,5): 9/10 + 9/10 = 1.8
    assert [p.uid for p in archive.select(2)] == [0, 3]  # the two extremes (inf), archive order
    assert [p.uid for p in archive.select(2)] == [2, 1]  # then by crowding distance, skipping the history
    # a re-found policy with an already-selected vector is not selected again; a new vector is
    archive.members.append(member((5, 5), 9))
    archive.update([member((3, 7), 10)])
    assert [p.uid for p in archive.select(3)] == [10]
    assert archive.history_resets == 0
    # everything extended already: the history is set aside for one pick (counted)
    assert [p.uid for p in archive.select(2)] == [0, 3] and archive.history_resets == 1


def test_archive_state_round_trip():
    archive = ParetoArchive(np.array([0.0, -25.0]), capacity=5)
    archive.update([member((1, -1), 1), member((103.5, -17.4), 2), member((-3, -3), 3)])
    archive.select(1)
    again = ParetoArchive.from_state(archive.state_dict())
    assert [p.uid for p in again.members] == [1, 2] and again.history == archive.history
    assert again.dropped_below_ref == 1


# --- 4. the Stage 2 constraint --------------------------------------------------------------

def test_reference_shifted_threshold_keeps_negative_objectives_feasible():
    g_r, ref = np.array([103.5, -17.4]), np.array([0.0, -25.0])
    np.testing.assert_allclose(shifted_threshold(g_r, ref, 0.5), [51.75, -21.2])
    np.testing.assert_allclose(shifted_threshold(g_r, ref, 0.9), [93.15, -18.16])
    naive = shifted_threshold(g_r, ref, 0.5, shift=False)
    np.testing.assert_allclose(naive, [51.75, -8.7])
    assert naive[1] > g_r[1]  # beta * G for a negative G: pi_r itself violates its own constraint
    assert np.all(shifted_threshold(g_r, ref, 0.5) < g_r)  # shifted: pi_r strictly feasible


def test_barrier_loss_by_hand_and_a_negative_objective_constrains():
    ref, g_r = torch.tensor([0.0, -25.0]), torch.tensor([103.5, -17.4])
    c = torch.as_tensor(shifted_threshold(g_r.numpy(), ref.numpy(), 0.5), dtype=torch.float32)
    scale = g_r - ref  # [103.5, 7.6]
    active = torch.tensor([False, True])  # maximising treasure (l = 0), time constrained
    g_hat = g_r.clone().requires_grad_(True)
    loss = barrier_loss(g_hat, c, scale, active, t=20.0)
    # slack = (-17.4 + 21.2) / 7.6 = 0.5 -> loss = -log(0.5)/20
    assert loss.item() == pytest.approx(math.log(2) / 20, rel=1e-5)
    loss.backward()
    # d loss / d G_time = -(1/t) / slack / scale = -(1/20) / 0.5 / 7.6: raising time lowers the loss
    assert float(g_hat.grad[1]) == pytest.approx(-1 / 20 / 0.5 / 7.6, rel=1e-4)
    assert float(g_hat.grad[0]) == 0.0
    # at the naive (unshifted) threshold the slack is negative: still finite, still pushing back
    g_hat = g_r.clone().requires_grad_(True)
    naive = torch.as_tensor(shifted_threshold(g_r.numpy(), ref.numpy(), 0.5, shift=False), dtype=torch.float32)
    loss = barrier_loss(g_hat, naive, scale, active, t=20.0)
    loss.backward()
    assert torch.isfinite(loss) and float(g_hat.grad[1]) < -1.0  # 1/floor slope: a strong push to feasibility
    # the extended log is continuous at the floor, and two active objectives are averaged
    s = torch.tensor([1e-3, 0.25])
    two = barrier_loss(s, torch.zeros(2), torch.ones(2), torch.tensor([True, True]), t=2.0)
    assert float(two) == pytest.approx(-(math.log(1e-3) + math.log(0.25)) / 2 / 2, rel=1e-5)


def test_front_metrics_are_morl_baselines_numbers():
    """Hand-computed values on a 5-point front, and DST's supported-points bound."""
    front = np.array([[1, 9], [3, 7], [5, 5], [7, 3], [9, 1]], dtype=float)
    m = front_metrics(front, np.zeros(2), simplex_weights(2, 0.5))
    assert m["hypervolume"] == pytest.approx(41.0) and m["sparsity"] == pytest.approx(8.0) and m["cardinality"] == 5
    assert m["expected_utility"] == pytest.approx((9 + 5 + 9) / 3)
    import mo_gymnasium as mo
    known = np.asarray(mo.make("deep-sea-treasure-concave-v0").unwrapped.pareto_front(gamma=0.99))
    ends = supported_points(known)
    assert len(ends) == 2  # only (1, -1) and (124 * .99^18, -sum .99^i): linear scalarisation reaches nothing else
    by_hand = 1 * 24 + (known[-1][0] - 1) * (known[-1][1] + 25)
    assert front_metrics(ends, np.array([0.0, -25.0]), np.eye(2))["hypervolume"] == pytest.approx(by_hand)
    assert by_hand == pytest.approx(804.6, abs=0.1)
    assert front_metrics(known, np.array([0.0, -25.0]), np.eye(2))["hypervolume"] == pytest.approx(1101.38, abs=0.01)


def test_infeasible_start_is_detected_and_recovered(tmp_path):
    """Extending an archive policy with G = (1, -1) (ref (0, -25), beta 0.5): the authors' threshold
    beta*G = (0.5, -0.5) puts its own time (-1) below the constraint when treasure is maximised, so
    that extension starts with a recovery step; the reference-shifted (0.5, -13) never does."""
    counts, threads = {}, torch.get_num_threads()
    for shift in (True, False):
        job = CMORL(compose_cfg([*TINY, f"algo.reference_shift={str(shift).lower()}", "algo.update_iter=1"]),
                    tmp_path / str(shift))
        agent = job.new_agent()
        job.archive.update([Member(np.array([1.0, -1.0]), agent.state_dict(), ReturnNormalizer(2, 0.99).state_dict(),
                                   {"test": True}, 1)])
        job.steps_done = job.stage1_jobs  # straight to Stage 2: one round = 2 extensions (treasure, time)
        first = job.step()
        job.steps_done += 1
        job.step()
        job.close()
        counts[shift] = (job.counters["infeasible_starts"], first["cmorl/recovery"])
        assert job.metrics()["cmorl/recovery_updates"] == job.counters["recovery_updates"] == counts[shift][0]
    assert torch.get_num_threads() == threads  # close() gives the caller its thread count back
    assert counts == {True: (0, 0.0), False: (1, 1.0)}


# --- 5. runs through rlhf.train -------------------------------------------------------------

def test_algo_and_env_kinds_must_match():
    with pytest.raises(ConfigError, match=r"algo=cmorl runs on env kinds control.*env=text"):
        validate(compose_cfg(["algo=cmorl", "env=text"]))
    with pytest.raises(ConfigError, match=r"algo=p3o runs on env kinds text.*env=mo"):
        validate(compose_cfg(["algo=p3o", "env=mo"]))
    with pytest.raises(ConfigError, match=r"algo.stages='both3'.*valid choices: both, init"):
        validate(compose_cfg(["algo=cmorl", "env=mo", "algo.stages=both3"]))


def test_end_to_end_run_logs_checkpoints_and_evaluates(train_run):
    from rlhf import checkpoint as ckpt
    from rlhf.evaluate import main as evaluate_main

    run_dir = train_run(TINY, "cmorl")
    scalars = read_scalars(run_dir)
    for name in ("hypervolume", "expected_utility", "sparsity", "cardinality", "archive_size"):
        assert len(scalars[f"morl/{name}"]) == 4, name  # after each round: 2 Stage 1 + 2 Stage 2
    assert [s for s, _ in scalars["morl/hypervolume"]] == [512, 1024, 1536, 2048]  # x = env steps x envs
    assert [v for _, v in scalars["cmorl/stage"]] == [1, 1, 1, 1, 2, 2, 2, 2]  # every chunk
    assert [v for _, v in scalars["morl/pool_size"]] == [4, 4, 4, 4]  # every update's policy is a candidate
    final = json.loads((run_dir / "eval" / "step_000008.json").read_text())
    assert final["hypervolume"] == pytest.approx(scalars["morl/hypervolume"][-1][1], rel=1e-6)
    assert final["env_steps"] == 2048
    state = torch.load(ckpt.latest_checkpoint(run_dir) / ckpt.STATE, weights_only=False)
    assert state["step"] == 8 and state["env_steps"] == 2048 and state["config"]["algo"]["name"] == "cmorl"
    front = json.loads((run_dir / "front.json").read_text())
    assert len(state["archive"]["members"]) == len(front["points"]) == final["archive_size"]
    assert len(state["archive"]["history"]) == 2  # num_select=1 per Stage 2 round
    assert front == json.loads((ckpt.latest_checkpoint(run_dir) / "front.json").read_text())
    if not front["points"]:
        pytest.skip("the tiny run's archive is empty; nothing to choose from")
    points = np.array(front["points"])
    for w, best in (([1.0, 0.0], points[:, 0].max()), ([0.0, 1.0], points[:, 1].max())):
        metrics = evaluate_main([f"run={run_dir}", f"eval.preference=[{w[0]},{w[1]}]"])
        chosen = np.array([metrics["chosen/archived_treasure"], metrics["chosen/archived_time"]])
        assert float(np.dot(w, chosen)) == pytest.approx(best)
        # DST is deterministic: re-running the chosen policy gives its archived returns
        assert metrics["chosen/treasure"] == pytest.approx(chosen[0]) and metrics["chosen/time"] == pytest.approx(chosen[1])
    assert (run_dir / "eval" / "front_step_000008.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="eval.preference"):
        evaluate_main([f"run={run_dir}", "eval.preference=[1,0,0]"])


def test_resume_inside_a_stage2_round_continues_the_archive_exactly(tmp_path):
    """Paused after chunk 5 (the first extension of the first Stage 2 round: the round's other
    extension and its pool of candidates are pending) and resumed: the same archive, origins
    and selection history as the run made in one go."""
    from rlhf import checkpoint as ckpt
    from rlhf.train import run

    run(compose_cfg(TINY), tmp_path / "full")
    run(compose_cfg([*TINY, "train.stop_after=5"]), tmp_path / "part")
    paused = torch.load(ckpt.latest_checkpoint(tmp_path / "part") / ckpt.STATE, weights_only=False)
    assert paused["step"] == 5 and len(paused["queue"]) == 1 and len(paused["pool"]) == 2
    run(compose_cfg([*TINY, "train.resume=true"]), tmp_path / "part")
    a, b = (json.loads((tmp_path / d / "front.json").read_text()) for d in ("full", "part"))
    assert a["points"] == b["points"] and a["origins"] == b["origins"]
    history = [torch.load(ckpt.latest_checkpoint(tmp_path / d) / ckpt.STATE, weights_only=False)["archive"]["history"]
               for d in ("full", "part")]
    assert history[0] == history[1]
    full, part = read_scalars(tmp_path / "full"), read_scalars(tmp_path / "part")
    for tag in ("morl/hypervolume", "morl/final/hypervolume", "morl/final/cardinality"):
        assert full[tag] == part[tag], tag
    # the last policies are a subset of all candidates: their front can only be dominated by the archive's
    assert 0 < full["morl/final/hypervolume"][-1][1] <= full["morl/hypervolume"][-1][1] + 1e-9


# --- the claim ------------------------------------------------------------------------------

@pytest.mark.slow
def test_quick_cmorl_pareto_claim_report_comes_from_the_logs(tmp_path):
    from rlhf.reproduce import run_claim

    out = tmp_path / "claim"
    verdict = run_claim("cmorl_pareto", quick=True, out=out)
    report = (out / "report.md").read_text()
    line = re.search(r"\*\*Verdict:\*\* (NOT REPRODUCED|REPRODUCED|INCONCLUSIVE): (.+)", report)
    assert line and "measured:" in line.group(2) and line.group(1) == verdict.word
    # four effects with intervals; each difference is recomputed from the runs' logs
    effects = re.findall(r"^- (C-MORL[^:]*): ([+-][\d.]+) \[95% CI", report, flags=re.M)
    assert len(effects) == 4
    runs = {r["arm"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    logged = {arm: read_scalars(Path(r["run_dir"])) for arm, r in runs.items()}
    last = {"cmorl": logged["cmorl"]["morl/final/hypervolume"][-1][1],
            "stage1_only": logged["stage1_only"]["morl/final/hypervolume"][-1][1],
            "mpmoql": logged["mpmoql"]["morl/hypervolume_all_policies"][-1][1]}
    assert float(effects[2][1]) == pytest.approx(last["cmorl"] - last["stage1_only"], abs=1e-3)
    assert float(effects[3][1]) == pytest.approx(last["cmorl"] - last["mpmoql"], abs=1e-3)
    for png in ("fronts_cmorl.png", "hypervolume_vs_steps.png"):
        assert (out / png).stat().st_size > 1000
    results = json.loads((out / "results.json").read_text())
    assert {r["arm"] for r in results["runs"]} == {"cmorl", "cmorl_beta0.9", "stage1_only", "mpmoql", "pql"}
    for run in results["runs"]:  # each row holds the run's last logged morl/* values
        row = next(line for line in report.splitlines() if line.startswith(f"| {run['name']} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        logged = read_scalars(Path(run["run_dir"]))
        for column, metric in ((3, "hypervolume"), (4, "expected_utility"), (6, "cardinality")):
            assert float(cells[column]) == pytest.approx(logged[f"morl/{metric}"][-1][1], abs=1e-3)
        assert int(cells[8]) == logged["morl/hypervolume"][-1][0]
