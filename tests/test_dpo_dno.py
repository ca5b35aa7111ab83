"""algo=dpo and algo=dno end to end on the tiny text task: every loss trains and moves the
policy the right way on its own data, Curry-DPO stages, JSONL data, reference caching,
checkpoint/resume (per-optimizer-step curves included), config errors; DNO iterations log
their win rates, write their held-out samples and keep every iterate (the quick claim:
tests/test_claim_dno.py)."""
import json

import pytest
import torch

from agents.models import load_lm
from rlhf.config import ConfigError, validate
from rlhf.logger import read_scalars
from rlhf.preference.losses import LOSSES
from tests.conftest import SMALL, compose_cfg

DPO_SMALL = [*SMALL, "algo=dpo", "algo.prompts=48", "algo.epochs=1", "algo.batch_size=16", "algo.lr=1e-3",
             "threads=2"]


def final_weights(run_dir):
    state = torch.load(sorted((run_dir / "checkpoints").glob("step_*"))[-1] / "policy.pt", weights_only=True)
    return state


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains_and_separates_chosen_from_rejected(train_run, loss):
    """Two epochs per loss: the run finishes and logs dpo/* and the held-out eval; in the
    second epoch (pairs already seen once) the implicit reward ranks chosen above rejected on
    most pairs (LiPO: its listwise loss falls)."""
    extra = ["algo.f_divergence=forward_kl"] if loss == "fdpo" else []
    run_dir = train_run([*DPO_SMALL, "algo.epochs=2", f"algo.loss={loss}", *extra], name=loss)
    scalars = read_scalars(run_dir)
    assert "eval/gold" in scalars and "eval/kl" in scalars
    if loss == "lipo":
        assert scalars["dpo/loss"][1][1] < scalars["dpo/loss"][0][1]
    else:
        assert scalars["dpo/rewards_accuracy"][1][1] > 0.5, f"{loss}: chosen should beat rejected after an epoch"


def test_curriculum_iterative_runs_one_stage_per_pair_rank(train_run):
    run_dir = train_run([*DPO_SMALL, "algo.curriculum=iterative", "algo.responses_per_prompt=3"], name="curry")
    stages = [value for _, value in read_scalars(run_dir)["dpo/stage"]]
    assert stages == [0.0, 1.0]  # K = 3: (R1, R3) then (R1, R2)
    last = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    assert (last / "ref.pt").exists()  # the stage-2 reference (policy after stage 1) is checkpointed


def test_jsonl_data_trains(train_run, tmp_path):
    path = tmp_path / "prefs.jsonl"
    rows = [{"prompt": "we stayed at the inn last week.", "chosen": " the room was great.", "rejected": " the room was dirty."},
            {"prompt": "i saw the comedy on friday.", "responses": [" it was fun.", " it was awful.", " it was ok."],
             "scores": [2, 0, 1]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    run_dir = train_run([*DPO_SMALL, f"algo.data={path}", "algo.epochs=3", "algo.batch_size=2"], name="jsonl")
    assert len(read_scalars(run_dir)["dpo/loss"]) == 3


def test_resume_is_exact(train_run):
    whole = train_run([*DPO_SMALL, "algo.epochs=2"], name="whole")
    half_ckpt = whole / "checkpoints" / "step_000001"  # as if the run had stopped after epoch 1
    resumed = train_run([*DPO_SMALL, "algo.epochs=2", f"train.resume={half_ckpt}"], name="resumed")
    a, b = final_weights(whole), final_weights(resumed)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # the per-optimizer-step curve is whole in the resumed run too: 48 pairs / 16 = 3 steps per epoch
    steps_whole, steps_resumed = read_scalars(whole)["dpo_step/loss"], read_scalars(resumed)["dpo_step/loss"]
    assert [x for x, _ in steps_whole] == [1, 2, 3, 4, 5, 6]
    # a resume re-writes the rows at x > epochs done (in a resumed run dir TensorBoard purges them)
    assert [x for x, _ in steps_resumed] == [2, 3, 4, 5, 6]
    assert [v for _, v in steps_resumed] == pytest.approx([v for _, v in steps_whole[1:]], abs=1e-6)


def test_reference_logps_are_computed_once_per_stage(train_run, monkeypatch):
    from rlhf.algos import dpo

    calls = []
    original = dpo.reference_logps
    monkeypatch.setattr(dpo, "reference_logps", lambda *a, **k: calls.append(1) or original(*a, **k))
    train_run([*DPO_SMALL, "algo.epochs=2"], name="refcache")
    assert len(calls) == 1  # one no-grad pass for the stage, reused by both epochs


def test_bad_dpo_config_names_the_choices():
    with pytest.raises(ConfigError, match="valid choices: dpo, ipo, simpo"):
        validate(compose_cfg(["algo=dpo", "algo.loss=kto"]))
    with pytest.raises(ConfigError, match="valid choices: none, iterative, single_run"):
        validate(compose_cfg(["algo=dpo", "algo.curriculum=hard_first"]))
    with pytest.raises(ConfigError, match="valid choices: gold, intransitive"):
        validate(compose_cfg(["algo=dno", "algo.oracle=majority"]))
    with pytest.raises(ConfigError, match="algo.pairs=spin pairs the teacher"):
        validate(compose_cfg(["algo=dno", "algo.teacher=false", "algo.pairs=spin"]))
    with pytest.raises(ConfigError, match="algo.data=/no/such/prefs.jsonl is not a file"):
        validate(compose_cfg(["algo=dpo", "algo.data=/no/such/prefs.jsonl"]))


def test_dno_iterations_log_win_rates_and_pairs(train_run):
    run_dir = train_run([*SMALL, "algo=dno", "algo.iterations=2", "algo.prompts_per_iteration=16", "algo.eval_prompts=16",
                         "algo.eval_samples=2", "algo.lr=1e-3"], name="dno")
    no_teacher = read_scalars(train_run([*SMALL, "algo=dno", "algo.iterations=1", "algo.prompts_per_iteration=16",
                                         "algo.eval_prompts=8", "algo.eval_samples=2", "algo.teacher=false"], name="dno-nt"))
    assert no_teacher["dno/student_beats_teacher"][-1][1] == 0.0  # no teacher, so no student > teacher pair
    scalars = read_scalars(run_dir)
    curve = scalars["dno/win_rate_vs_initial"]
    assert [step for step, _ in curve] == [1, 2, 3]
    assert curve[0][1] == pytest.approx(0.5)  # pi_1 against itself, same samples
    assert all(value > 0 for _, value in scalars["dno/pairs"])
    # checkpoint t holds iterate pi_{t+1}; every iterate is kept (keep_checkpoints is 2 by default)
    checkpoints = sorted((run_dir / "checkpoints").glob("step_*"))
    assert [c.name for c in checkpoints] == ["step_000001", "step_000002"]
    hf = load_lm(checkpoints[-1] / "hf").state_dict()
    trained = torch.load(checkpoints[-1] / "policy.pt", weights_only=True)
    assert all(torch.equal(hf[k], trained[k]) for k in trained)  # the HF copy is the trained policy
    final = json.loads((run_dir / "eval" / "step_000002.json").read_text())
    values = [v for _, v in curve]
    assert final["best_iteration"] == values.index(max(values)) + 1
    assert final["dno/win_rate_vs_initial"] == pytest.approx(values[-1])
    # eval/samples_step_<t>.jsonl: pi_{t+1}'s held-out samples; the mean of their per-sample win
    # rates is the logged one (the same number of samples on each prompt)
    for t, (_, value) in enumerate(curve):
        rows = [json.loads(line) for line in (run_dir / "eval" / f"samples_step_{t:06d}.jsonl").read_text().splitlines()]
        assert len(rows) == 16 * 2 and len({r["seed"] for r in rows}) == 16 and all("response" in r for r in rows)
        assert sum(r["win_rate_vs_initial"] for r in rows) / len(rows) == pytest.approx(value, abs=1e-6)
        wins = scalars["dno/win_rate_vs_teacher"][t][1]
        assert sum(r["win_rate_vs_teacher"] for r in rows) / len(rows) == pytest.approx(wins, abs=1e-6)


def test_dno_rejects_overlapping_partitions():
    with pytest.raises(ConfigError, match="partitions must not overlap"):
        validate(compose_cfg(["algo=dno", "algo.iterations=5", "algo.prompts_per_iteration=100"]))


def test_dno_mixed_reference_interpolates_log_probs():
    from rlhf.algos.dno import mixed_reference_logps

    now, initial = torch.tensor([-3.0, -1.0]), torch.tensor([-5.0, -2.0])
    assert mixed_reference_logps(now, initial, 0.0).tolist() == now.tolist()  # Algorithm 2
    assert mixed_reference_logps(now, initial, 1.0).tolist() == initial.tolist()
    assert mixed_reference_logps(now, initial, 0.25).tolist() == pytest.approx([-3.5, -1.25])


@pytest.mark.parametrize("tau", ["-0.01", "0.2"])
def test_dno_ref_mix_tau_outside_zero_to_eta_is_rejected(tau):
    with pytest.raises(ConfigError, match=rf"algo.ref_mix_tau={float(tau)} must lie in \[0, algo.eta=0.1\]"):
        validate(compose_cfg(["algo=dno", f"algo.ref_mix_tau={tau}"]))


def test_dno_regularized_reference_is_wired_into_the_update():
    """Algorithm 4 with tau = eta makes pi_1 the reference: with pi_1 = pi_t the update equals
    Algorithm 2's bit for bit; with a different pi_1 it does not."""
    import random

    from transformers import Qwen2Config, Qwen2ForCausalLM

    from agents.models import frozen_copy
    from rlhf.algos.dno import contrastive_step
    from rlhf.preference.data import Pair

    def tiny(seed):
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(Qwen2Config(vocab_size=24, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32))

    gen = random.Random(0)
    pairs = [Pair([gen.randrange(1, 24) for _ in range(3)], [gen.randrange(1, 24) for _ in range(4)],
                  [gen.randrange(1, 24) for _ in range(5)]) for _ in range(8)]

    def update(tau, initial):
        policy = tiny(0)
        cfg = compose_cfg(["algo=dno", f"algo.ref_mix_tau={tau}", "algo.batch_size=4", "algo.lr=1e-2"])
        contrastive_step(cfg, policy, pairs, 0, random.Random(0), initial)
        return torch.cat([p.detach().flatten() for p in policy.parameters()])

    plain = update(0.0, None)
    assert torch.equal(update(0.1, frozen_copy(tiny(0))), plain)
    assert not torch.allclose(update(0.1, frozen_copy(tiny(1))), plain)
