"""Constrained RLHF (algo=constrained_ppo, reward=composite, rlhf.proxy_points): the
multipliers' parameterizations and update directions, the mixed advantage by hand,
Nelder-Mead ask/tell, proxy points recovered from logs, the composite reward's lexicons,
config errors, checkpoint/resume of the multipliers, and NM-PPO end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import SMALL, compose_cfg

from envs.composite import COMPONENTS, CompositeScorer, detail_lexicon, praise_lexicon
from rlhf import checkpoint as ckpt
from rlhf.algos.constrained_ppo import load_thresholds
from rlhf.config import ConfigError, validate
from rlhf.functional import constraint_violation, lagrange_loss, mixed_advantage, squash_multipliers
from rlhf.logger import read_scalars
from rlhf.nelder_mead import NelderMead


def test_parameterizations_keep_their_ranges():
    raw = torch.tensor([-50.0, -1.0, 0.0, 1.0, 50.0])
    for form in ("mu", "all"):  # sigmoid: a weight in (0, 1), saturating at both ends
        assert squash_multipliers(raw, form).tolist() == pytest.approx([0.0, 0.2689, 0.5, 0.7311, 1.0], abs=1e-4)
    # tanh: xi can push a component down as well as up
    assert squash_multipliers(raw, "xi").tolist() == pytest.approx([-1.0, -0.7616, 0.0, 0.7616, 1.0], abs=1e-4)
    with pytest.raises(ValueError, match="valid choices: mu, xi, all"):
        squash_multipliers(raw, "nu")


def one_sgd_step(form: str, value: float, threshold: float) -> float:
    """Change of the raw multiplier after one SGD step of the Lagrange loss."""
    raw = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([raw], lr=0.1)
    violation = constraint_violation(torch.tensor([value]), torch.tensor([threshold]), form)
    lagrange_loss(squash_multipliers(raw, form), violation, form).backward()
    opt.step()
    return float(raw.detach())


@pytest.mark.parametrize("form", ["mu", "xi"])
def test_lower_or_equality_constraint_multiplier_direction(form):
    assert one_sgd_step(form, value=0.1, threshold=0.2) > 0  # violated (below): more weight on the component
    assert one_sgd_step(form, value=0.3, threshold=0.2) < 0  # satisfied with room: less weight


def test_upper_bound_multiplier_direction_all_ppo():
    assert one_sgd_step("all", value=0.3, threshold=0.2) > 0  # above its bound: the penalty grows
    assert one_sgd_step("all", value=0.1, threshold=0.2) < 0


def test_xi_multiplier_can_push_a_component_down():
    raw = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([raw], lr=1.0)
    for _ in range(5):
        opt.zero_grad()
        violation = constraint_violation(torch.tensor([0.5]), torch.tensor([0.2]), "xi")
        lagrange_loss(squash_multipliers(raw, "xi"), violation, "xi").backward()
        opt.step()
    assert squash_multipliers(raw, "xi").item() < 0  # tanh goes negative: A_i enters with a minus sign


def test_mixed_advantage_by_hand():
    a0 = torch.tensor([1.0, 2.0])
    ai = torch.tensor([[0.5, -1.0], [2.0, 0.0]])  # [tokens, N=2]
    w = torch.tensor([0.25, 0.5])
    # (N - sum w) * A0 + sum w_i A_i = 1.25 * A0 + (0.25 * A_1 + 0.5 * A_2)
    expected = torch.tensor([1.25 * 1.0 + 0.125 - 0.5, 1.25 * 2.0 + 0.5 + 0.0])
    assert torch.allclose(mixed_advantage(a0, ai, w, "mu"), expected)
    assert torch.allclose(mixed_advantage(a0, ai, w, "xi"), expected)
    # All-PPO: A0 + sum (1 - w_i) A_i = A0 + 0.75 * A_1 + 0.5 * A_2
    expected_all = torch.tensor([1.0 + 0.375 - 0.5, 2.0 + 1.5 + 0.0])
    assert torch.allclose(mixed_advantage(a0, ai, w, "all"), expected_all)


def test_violation_dead_band():
    v = constraint_violation(torch.tensor([0.21, 0.30, 0.10]), torch.tensor([0.2, 0.2, 0.2]), "xi", tolerance=0.1)
    assert v.tolist() == pytest.approx([0.0, 0.08, -0.08])


def test_nelder_mead_ask_tell_minimizes_and_resumes_exactly():
    def f(p):
        return (p[0] - 1.0) ** 2 + 2 * (p[1] + 2.0) ** 2

    nm = NelderMead([[0.0, 0.0], [0.5, 0.0], [0.0, 0.5]], tol=1e-10)
    asked = []
    for i in range(60):
        if i == 30:
            copy = NelderMead([[0.0, 0.0]] * 3)
            copy.load_state_dict(json.loads(json.dumps(nm.state_dict())))
        point = nm.ask()
        asked.append(point)
        nm.tell(f(point))
    best, value = nm.best()
    assert best == pytest.approx([1.0, -2.0], abs=0.05) and value < 1e-2
    for point in asked[30:]:  # the restored copy asks for exactly the same points
        assert copy.ask() == pytest.approx(point)
        copy.tell(f(copy.ask()))


def test_composite_lexicons_and_evaluation_by_hand():
    assert not set(praise_lexicon()) & detail_lexicon(0.0)
    assert set(praise_lexicon()) <= detail_lexicon(1.0)
    with pytest.raises(ValueError, match="overlap"):
        detail_lexicon(1.5)
    scorer = CompositeScorer(overlap=0.0, sweet_spots=(0.15, 0.22), quality_weight=0.3)
    parts = scorer.components("the food was great.")  # 4 words: 1 praise, 1 detail
    assert parts == {"praise": 0.25, "detail": 0.25}
    # praise 0.25 > 0.15: 0.15 - 1.5 * 0.10; detail 0.25 > 0.22: 0.22 - 1.5 * 0.03
    assert scorer.evaluation(parts, quality=1.0) == pytest.approx(0.15 - 0.15 + 0.22 - 0.045 + 0.3)
    assert scorer.components("") == {"praise": 0.0, "detail": 0.0}


def test_overlap_setting_raises_the_components_correlation():
    from envs.text import corpus

    texts = [r for _, r in corpus.demonstrations(corpus.all_prompts(), 2000, 0)]

    def corr(overlap):
        s = CompositeScorer(overlap=overlap)
        table = np.array([[s.components(t)[n] for n in COMPONENTS] for t in texts])
        return np.corrcoef(table.T)[0, 1]

    low, high = corr(0.0), corr(1.0)
    assert high > low + 0.3, (low, high)


def test_plain_reviews_hold_no_praise_stay_fluent_and_leave_the_mixed_corpus_unchanged():
    """env.reviews=plain: the constrained task's SFT data states facts with rare praise (so the
    praise proxy point lies well above the SFT policy), in the grammar's own bigrams; the
    default corpus and the tokenizer's text are what they were."""
    from envs.text import ReviewEnv, corpus

    plain, mixed = ReviewEnv(reviews="plain"), ReviewEnv()
    scorer = CompositeScorer()
    texts = [r for _, r in plain.demonstrations(2000, seed=0)]
    assert 0.0 < np.mean([scorer.components(t)["praise"] for t in texts]) < 0.03  # rare: RL can still find praise
    assert np.mean([scorer.components(t)["detail"] for t in texts]) > 0.15  # the aspects are still named
    _, bigrams = corpus.fluency_tables()
    assert all(b in bigrams for t in texts for ws in corpus.sentences(t) for b in zip(ws, ws[1:]))
    praised = np.mean([scorer.components(r)["praise"] for _, r in mixed.demonstrations(2000, seed=0)])
    assert praised > 0.05
    assert not any(v in t.split() for t in texts for v in corpus.VERBS["pos"])  # no verbs of liking
    assert mixed.demonstrations(50, seed=3) == corpus.demonstrations(mixed.prompts, 50, 3)
    assert plain.corpus(50, seed=1) == mixed.corpus(50, seed=1)  # one tokenizer for both styles
    assert "reviews" not in mixed.fingerprint() and plain.fingerprint()["reviews"] == "plain"
    with pytest.raises(ValueError, match="valid choices: mixed, plain"):
        ReviewEnv(reviews="formal")
    with pytest.raises(ConfigError, match="plain"):
        validate(compose_cfg(["env.reviews=formal"]))


def test_thresholds_from_list_or_file(tmp_path):
    assert load_thresholds([0.1, 0.2], COMPONENTS) == [0.1, 0.2]
    with pytest.raises(ValueError, match="one value per component"):
        load_thresholds([0.1], COMPONENTS)
    path = tmp_path / "pp.json"
    path.write_text(json.dumps({"thresholds": {"detail": 0.3, "praise": 0.1}}))
    assert load_thresholds(str(path), COMPONENTS) == [0.1, 0.3]  # ordered by component name, not file order
    with pytest.raises(FileNotFoundError, match="rlhf.proxy_points"):
        load_thresholds(str(tmp_path / "missing.json"), COMPONENTS)


def test_config_errors_name_the_valid_choices():
    with pytest.raises(ConfigError, match="valid choice: reward=composite"):
        validate(compose_cfg(["algo=constrained_ppo", "algo.thresholds=[0.1,0.2]"]))
    with pytest.raises(ConfigError, match="needs algo.thresholds"):
        validate(compose_cfg(["algo=constrained_ppo", "reward=composite"]))
    with pytest.raises(ConfigError, match="valid choices: mu, xi, all"):
        validate(compose_cfg(["algo=constrained_ppo", "reward=composite", "algo.thresholds=[0.1,0.2]",
                              "algo.form=equal"]))
    with pytest.raises(ConfigError, match=r"one value per component \['praise', 'detail'\]"):
        validate(compose_cfg(["algo=constrained_ppo", "reward=composite", "algo.thresholds=[0.1]"]))
    with pytest.raises(ConfigError, match="no such file; write it with `python -m rlhf.proxy_points"):
        validate(compose_cfg(["algo=constrained_ppo", "reward=composite", "algo.thresholds=/no/such/pp.json"]))
    validate(compose_cfg(["algo=constrained_ppo", "reward=composite", "algo.threshold_search=nelder_mead"]))


def write_fake_runs(tmp_path, peak=(0.15, 0.22)):
    """Three runs' logs (praise only, detail only, sum) whose eval is a known concave quadratic."""
    from torch.utils.tensorboard import SummaryWriter

    rng = np.random.default_rng(0)
    dirs = []
    for name, weights in (("praise", [1.0, 0.0]), ("detail", [0.0, 1.0]), ("sum", [1.0, 1.0])):
        run_dir = tmp_path / name
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "config.yaml").write_text(
            f"reward:\n  name: composite\n  weights: {weights}\n")
        writer = SummaryWriter(str(run_dir))
        for step in range(1, 41):
            x = rng.uniform([0.05, 0.1], [0.4, 0.45])
            y = 1.0 - 3 * (x[0] - peak[0]) ** 2 - 2 * (x[1] - peak[1]) ** 2 - (x[0] - peak[0]) * (x[1] - peak[1])
            writer.add_scalar("composite/praise", x[0], step)
            writer.add_scalar("composite/detail", x[1], step)
            writer.add_scalar("composite/eval", y + rng.normal(0, 1e-4), step)
        writer.close()
        dirs.append(run_dir)
    return dirs


def test_proxy_points_recover_a_known_peak(tmp_path):
    from rlhf.proxy_points import main

    dirs = write_fake_runs(tmp_path)
    out = tmp_path / "pp.json"
    main([*map(str, dirs), "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["thresholds"]["praise"] == pytest.approx(0.15, abs=0.01)
    assert result["thresholds"]["detail"] == pytest.approx(0.22, abs=0.01)
    assert result["joint_fit"]["r2"] > 0.99 and result["joint_fit"]["points"] == 120
    assert result["joint_method"] == "quadratic"  # a concave fit keeps the quadratic's peak
    assert [r["weights"] for r in result["runs"]] == [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    assert load_thresholds(str(out), COMPONENTS) == [result["thresholds"]["praise"], result["thresholds"]["detail"]]


def test_a_joint_fit_without_a_peak_falls_back_to_the_smoothed_surface_over_logged_points():
    """A saddle-shaped quadratic has no proxy point (its box argmax is a corner no run
    visited): the joint estimate is then the logged point where the kernel-smoothed
    evaluation is highest."""
    from rlhf.proxy_points import concave, kernel_argmax, quadratic_features

    assert concave(np.array([0.0, 0.0, 0.0, -1.0, 0.2, -2.0]), 2)  # -x^2 + 0.2xy - 2y^2
    assert not concave(np.array([0.0, 0.0, 0.0, 5.0, -8.5, 1.0]), 2)  # the fourth full run's shape
    assert quadratic_features(np.ones((1, 2))).shape == (1, 6)
    rng = np.random.default_rng(0)
    x = rng.uniform([0.0, 0.1], [0.3, 0.5], size=(300, 2))
    peak = np.array([0.05, 0.25])
    y = -np.abs(x - peak).sum(1) + rng.normal(0, 0.005, len(x))  # a kinked peak, like the composite score
    best, value = kernel_argmax(x, y)
    assert any(np.array_equal(best, row) for row in x)
    assert np.abs(best - peak).max() < 0.04 and value > y.mean()


def lagrange_tail(run_dir):
    scalars = read_scalars(run_dir)
    return {tag: [v for s, v in scalars[tag] if s > 2] for tag in scalars if tag.startswith("lagrange/lambda_")}


def test_multipliers_resume_exactly(train_run):
    common = SMALL + ["algo=constrained_ppo", "reward=composite", "algo.thresholds=[0.2,0.2]",
                      "train.checkpoint_every=2", "algo.lagrange_lr=1.0"]
    straight = train_run(common + ["train.steps=4"], "straight")
    split = train_run(common + ["train.steps=2"], "split")
    train_run(common + ["train.steps=4", f"train.resume={split}"], "split")
    a, b = ckpt.load_checkpoint(ckpt.latest_checkpoint(straight))[0], ckpt.load_checkpoint(ckpt.latest_checkpoint(split))[0]
    assert torch.equal(a["algo_state"]["raw_multipliers"], b["algo_state"]["raw_multipliers"])
    initial = 0.01 * torch.randn(2, generator=torch.Generator().manual_seed(0))  # lambda ~ N(0, 0.01^2) at seed 0
    assert (a["algo_state"]["raw_multipliers"] - initial).abs().min() > 1e-3  # they moved
    tail_a, tail_b = lagrange_tail(straight), lagrange_tail(split)
    assert set(tail_a) == {f"lagrange/lambda_{n}" for n in COMPONENTS}
    for tag in tail_a:
        assert tail_a[tag] == pytest.approx(tail_b[tag], abs=1e-6) and len(tail_a[tag]) == 2
    scalars = read_scalars(straight)
    for name in COMPONENTS:
        for kind in ("constraint", "violation"):
            assert f"lagrange/{kind}_{name}" in scalars


def test_nm_ppo_moves_its_thresholds_within_one_run(train_run):
    run_dir = train_run(SMALL + ["algo=constrained_ppo", "reward=composite", "algo.threshold_search=nelder_mead",
                                 "algo.nm_phases=1", "train.steps=5", "train.checkpoint_every=0"], "nm")
    scalars = read_scalars(run_dir)
    assert [v for _, v in scalars["nm/evaluations"]] == [0, 1, 2, 3, 4]
    praise = [v for _, v in scalars["lagrange/threshold_praise"]]
    detail = [v for _, v in scalars["lagrange/threshold_detail"]]
    assert len({round(v, 6) for v in praise}) >= 4  # a new candidate every phase
    algo = compose_cfg(["algo=constrained_ppo", "reward=composite"]).algo
    for p, d in zip(praise[:3], detail[:3]):  # the initial simplex: N + 1 points drawn in [nm_low, nm_high]
        assert algo.nm_low[0] <= p <= algo.nm_high[0] and algo.nm_low[1] <= d <= algo.nm_high[1]


@pytest.mark.slow
def test_quick_constrained_rlhf_claim_report_with_effects(tmp_path):
    """The quick claim end to end on the rebuilt task (plain-review SFT, detail sweet spot 0.3):
    proxy points written once from the identification runs, six effects with intervals, each
    held-out difference recomputed from the eval samples under the run's own sweet spots."""
    import re

    from rlhf.reproduce import RunResult, RunSpec, run_claim
    from rlhf.reproduce.claims.constrained_rlhf import held_out_eval

    out = tmp_path / "claim"
    verdict = run_claim("constrained_rlhf", quick=True, out=out)
    report = (out / "report.md").read_text()
    line = re.search(r"\*\*Verdict:\*\* (NOT REPRODUCED|REPRODUCED|INCONCLUSIVE): (.+)", report)
    assert line and line.group(1) == verdict.word
    effects = re.findall(r"^- ([^:]+): ([+-][\d.]+) \[95% CI", report, flags=re.M)
    assert len(effects) == 6 and effects[5][0].startswith("untuned PPO (1, 1) final KL - xi-PPO final KL")
    assert "Multipliers (squashed, first -> last" in report
    from omegaconf import OmegaConf
    run_cfg = OmegaConf.load(out / "runs" / "xi-PPO" / "config.yaml")
    assert run_cfg.env.reviews == "plain" and list(run_cfg.reward.eval_sweet_spots) == [0.15, 0.3]
    assert json.loads((out / "runs" / "proxy_points.json").read_text())["thresholds"].keys() == {"praise", "detail"}

    def mean_eval(name):
        return sum(held_out_eval(RunResult(RunSpec(name, "", []), out / "runs" / name, {}, 0.0)).values()) / 8

    tuned = re.search(r"tuned PPO = weights \(([\d.]+), ([\d.]+)\)", report)
    names = {(1.0, 1.0): "ppo-sum", (0.3, 0.3): "ppo-sum-x0.3", (0.1, 0.1): "ppo-sum-x0.1"}
    base = names[(float(tuned.group(1)), float(tuned.group(2)))]
    assert float(effects[0][1]) == pytest.approx(mean_eval("xi-PPO") - mean_eval(base), abs=1e-3)
    assert float(effects[2][1]) == pytest.approx(mean_eval("xi-PPO") - mean_eval("ppo-sum"), abs=1e-3)
