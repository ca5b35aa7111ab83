"""env=alfworld: the offline game generator and the adapter on ALFWorld's own AlfredTWEnv
(envs/alfworld; spec: environments.md §3). Needs the `alfworld` extra."""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

pytest.importorskip("alfworld", reason="needs the alfworld extra: pip install -e '.[alfworld]'")

from envs.alfworld import EOS, AlfWorldEnv  # noqa: E402
from envs.alfworld import generator as gen  # noqa: E402

pytestmark = pytest.mark.slow  # generating and planner-checking the games takes ~30 s on 2 cores

SETTINGS = dict(num_train=6, num_seen=2, num_unseen=2)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("alfworld_cache")


@pytest.fixture(scope="module")
def root(cache):
    return gen.ensure_games(cache, gen.GenSettings(**SETTINGS))


def make(cache, **kw):
    return AlfWorldEnv(cache_dir=str(cache), **SETTINGS, **{"show_admissible": True, **kw})


def games(root: Path, folder: str) -> list[Path]:
    return sorted((root / folder).rglob("game.tw-pddl"))


def test_every_generated_game_is_solved_by_the_planner(root):
    files = [f for folder in gen.SPLIT_DIRS.values() for f in games(root, folder)]
    assert len(files) == sum(SETTINGS.values())
    for f in files:
        data = json.loads(f.read_text())
        assert data["solvable"] is True and set(data) == {"pddl_domain", "grammar", "pddl_problem", "solvable"}
        assert "UNKNOWN GOAL" not in data["grammar"]
        plan = gen.planner_plan(f, 150)
        assert plan, f"planner did not win {f}"
        # the planner sees the full state: no search, so never the hand-coded expert's opening "look"
        # (alfworld's AlfredExpert("planner") silently ran the hand-coded expert)
        assert plan[0] != "look" and plan == gen.planner_plan(f, 150)


def test_splits_are_disjoint(root):
    def goals(folder):
        return {f.parent.parent.name.rsplit("-", 1)[0] for f in games(root, folder)}

    def rooms(folder):
        return {f.parent.parent.name.rsplit("-", 1)[1] for f in games(root, folder)}

    def problems(folder):
        return {json.loads(f.read_text())["pddl_problem"].split("\n", 3)[3] for f in games(root, folder)}

    assert not goals("valid_unseen") & goals("train")
    assert not rooms("valid_unseen") & rooms("train")
    assert rooms("valid_unseen") <= set(gen.UNSEEN_ROOMS)
    assert not problems("train") & problems("valid_seen")
    assert not problems("train") & problems("valid_unseen")
    seen, unseen = gen.goal_split(gen.all_goals(), 0.2, 0)
    assert not set(seen) & set(unseen) and unseen


def test_generation_is_deterministic_given_the_seed(tmp_path):
    s = gen.GenSettings(num_train=3, seed=5)
    goals = gen.all_goals(s.task_types)
    a = gen.generate_split(tmp_path / "a", "train", 3, goals, gen.ROOMS, s, check=False)
    b = gen.generate_split(tmp_path / "b", "train", 3, goals, gen.ROOMS, s, check=False)
    c = gen.generate_split(tmp_path / "c", "train", 3, goals, gen.ROOMS, gen.GenSettings(num_train=3, seed=6),
                           check=False)
    text = lambda files: [f.read_text() for f in files]  # noqa: E731
    assert text(a) == text(b)
    assert text(a) != text(c)
    assert gen.settings_key(s) != gen.settings_key(gen.GenSettings(num_train=3, seed=6))


def test_planner_expert_through_the_env_wins_every_training_game(cache, root):
    """env.expert_type=planner reaches AlfredTWEnv's expert wrapper (alfworld 0.4.2 drops it:
    alfred_expert_by_keyword) and plays the generator's planner plan, winning every game."""
    env = make(cache, expert_type="planner", max_steps=150, expert=True)
    env.reset(0)
    assert len(env.game_files) == SETTINGS["num_train"]
    for gamefile in env.game_files:
        seed = next(s for s in range(10_000) if env.game_for(s) == gamefile)
        won, actions = play_expert(env, seed)
        assert won, f"planner did not win {gamefile}"
        assert actions == gen.planner_plan(gamefile, 150)  # not the hand-coded search (which opens with "look")


def play_expert(env, seed: int) -> tuple[bool, list[str]]:
    prompt = env.reset(seed)
    assert "Your task is to:" in prompt and "Available actions:" in prompt and prompt.endswith("Action:")
    done, success, steps, actions = False, 0.0, 0, []
    while not done:
        action = env.expert_action()
        assert action is not None
        actions.append(action)
        obs, reward, done, info = env.step(" " + action)
        assert info["valid"] and reward["invalid"] == 0.0
        success += reward["success"]
        steps += 1
    assert steps <= env.max_steps and success == float(info["won"]) and info["truncated"] != info["won"]
    return bool(info["won"]), actions


def test_handcoded_expert_plays_through_the_env(cache):
    random.seed(0)  # the hand-coded expert falls back on random.choice (the global RNG) among admissible commands
    env = make(cache, expert_type="handcoded", max_steps=60, expert=True)
    env.reset(0)

    def won(seed: int) -> bool:
        env.reset(seed)
        done, info = False, {}
        while not done:
            _, _, done, info = env.step(env.expert_action())
        return bool(info["won"])

    # the hand-coded expert's heuristics may miss a game (spec §3: 19/20) and its random fallback
    # differs run to run: up to 3 tries per game
    wins = sum(any(won(seed) for _ in range(3)) for seed in range(3))
    assert wins >= 2


def test_invalid_answer_is_nothing_happens_and_counted(cache):
    env = make(cache, invalid_penalty=0.5)
    prompt = env.reset(1)
    obs, reward, done, info = env.step(" dance with the fridge")
    assert obs.startswith("\nNothing happens.") and not done
    assert reward == {"gold": -0.5, "success": 0.0, "invalid": 1.0, "steps": 1.0, "invalid_rate": 1.0}
    assert info["valid"] is False
    assert obs.split("Available actions:")[1] == prompt.split("Available actions:")[1]  # state unchanged
    _, reward, _, info = env.step("  LOOK. ")  # normalized to an admissible command
    assert info["valid"] and reward["invalid"] == 0.0


def test_step_limit_ends_the_episode(cache):
    env = make(cache, max_steps=3)
    env.reset(2)
    results = [env.step("look") for _ in range(2)] + [env.step("nonsense")]
    assert [r[2] for r in results] == [False, False, True]
    assert results[-1][0] is None and results[-1][3]["truncated"]
    assert sum(r[1]["success"] for r in results) == 0.0
    with pytest.raises(RuntimeError):
        env.step("look")


def test_eval_splits_and_demonstrations(cache):
    seen, unseen = make(cache, split="eval"), make(cache, split="eval", eval_on="unseen")
    seen.reset(0)
    unseen.reset(0)
    assert len(seen.game_files) == SETTINGS["num_seen"] and len(unseen.game_files) == SETTINGS["num_unseen"]
    assert [seen.game_for(s) for s in range(2)] == seen.game_files  # eval seeds 0..n-1: n distinct games
    assert "/valid_unseen/" in unseen.game_files[0]
    pairs = seen.demonstrations(3, seed=0)  # drawn from the train split: one pair per won expert episode
    assert len(pairs) == 3
    for prompt, response in pairs:
        assert prompt.endswith("Action:") and response.startswith(" ")
        shown = prompt.rsplit("Available actions: ", 1)[1].rsplit(".\nAction:", 1)[0].split(", ")
        assert response.strip() in shown  # the last command is admissible where it is played
        turns = prompt.split(EOS)
        assert len(turns) >= 2 and "Your task is to:" in turns[0]
        for turn in turns[:-1]:  # every earlier turn ends with the command the expert played there
            assert turn.rsplit("Action: ", 1)[1] in turn.rsplit("Available actions: ", 1)[1]
    assert pairs == seen.demonstrations(3, seed=0)


def test_invalid_rate_component_sums_to_the_episode_rate(cache):
    env = make(cache, max_steps=5)
    env.reset(4)
    answers = ["look", "fly away", "look", "fly away", "fly away"]
    total = sum(env.step(a)[1]["invalid_rate"] for a in answers)
    assert total == pytest.approx(3 / 5)


def test_observation_tokens_carry_no_loss_in_an_alfworld_episode(cache):
    """The shared multi-turn runner on ALFWorld: an engine that answers with the expert's
    commands wins; the masked spans are exactly the env's text (intro, then each feedback)."""
    from rlhf.rollout.engine import Completion, SamplingParams
    from rlhf.rollout.runner import EpisodeRunner
    from rlhf.warmstart import train_tokenizer

    env = make(cache, show_admissible=False, max_steps=60, expert=True)
    tokenizer = train_tokenizer([p + r for p, r in env.demonstrations(2, seed=1)], 400)
    seen: list[str] = []

    class Expert:  # an engine whose "policy" is ALFWorld's expert
        def generate(self, prompts, sampling):
            ids = tokenizer(" " + env.expert_action(), add_special_tokens=False)["input_ids"]
            return [Completion(ids + [tokenizer.eos_token_id], [-0.5] * (len(ids) + 1), "stop")]

    real_reset, real_step = env.reset, env.step

    def reset(seed):
        seen.append(real_reset(seed))
        return seen[-1]

    def step(text):
        out = real_step(text)
        if out[0] is not None:
            seen.append(out[0])
        return out

    env.reset, env.step = reset, step
    episode = EpisodeRunner(Expert(), tokenizer, SamplingParams(max_new_tokens=16), max_turns=60).run([env], [3])[0]
    assert episode.done and episode.infos[-1]["won"] and all(info["valid"] for info in episode.infos)
    spans, current, flag = [], [], episode.action_mask[0]
    for tok, m in zip(episode.token_ids, episode.action_mask):
        if m != flag:
            spans.append((flag, current))
            current, flag = [], m
        current.append(tok)
    spans.append((flag, current))
    assert [ids for m, ids in spans if m == 0] == [tokenizer(t, add_special_tokens=False)["input_ids"] for t in seen]
    assert all(lp == 0.0 for lp, m in zip(episode.logprobs, episode.action_mask) if m == 0)
    commands = [tokenizer.decode(ids).replace(EOS, "").strip() for m, ids in spans if m == 1]
    assert commands == [info["command"] for info in episode.infos]  # each generated span is the command played


def test_constrained_answers_are_the_admissible_commands_and_never_invalid(cache):
    """env.constrain_actions: allowed_actions offers the admissible commands (with the leading
    space the demonstrations use) and the runner's constrained decoding of an untrained policy
    only ever plays them; without the setting the answer is free text."""
    from agents.models import build_tiny_lm
    from omegaconf import OmegaConf

    from rlhf.rollout.engine import HFEngine, SamplingParams
    from rlhf.rollout.runner import EpisodeRunner
    from rlhf.warmstart import train_tokenizer

    free = make(cache, show_admissible=False)
    free.reset(0)
    assert free.allowed_actions() is None
    env = make(cache, show_admissible=False, constrain_actions=True, max_steps=8)
    env.reset(0)
    assert env.allowed_actions() == [" " + c for c in env.admissible(env._state["info"])]
    tokenizer = train_tokenizer([p + r for p, r in env.demonstrations(2, seed=1)], 400)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = build_tiny_lm(OmegaConf.create({"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1,
                                            "num_attention_heads": 2, "num_key_value_heads": 1,
                                            "max_position_embeddings": 2048, "tie_word_embeddings": True}), tokenizer)
    envs = [make(cache, show_admissible=False, constrain_actions=True, max_steps=8) for _ in range(2)]
    episodes = EpisodeRunner(HFEngine(model.eval(), tokenizer), tokenizer, SamplingParams(max_new_tokens=24),
                             max_turns=8).run(envs, [1, 2])
    for ep in episodes:
        assert len(ep.infos) == 8 or ep.infos[-1]["won"]
        assert all(info["valid"] for info in ep.infos), [info["command"] for info in ep.infos]
        assert sum(r["invalid"] for r in ep.rewards) == 0
    # a decoding rule: the same warm start serves both
    assert env.fingerprint() == make(cache, show_admissible=False, max_steps=8).fingerprint()


def test_task_reminder_repeats_the_goal_in_every_observation(cache):
    env = make(cache, show_admissible=False, remind_task=True)
    intro = env.reset(0)
    goal = next(line for line in intro.splitlines() if line.startswith("Your task is to:"))
    observation, *_ = env.step(env.admissible(env._state["info"])[0])
    assert observation.endswith("\n" + goal + "\nAction:")
    plain = make(cache, show_admissible=False)
    plain.reset(0)
    assert goal not in plain.step(plain.admissible(plain._state["info"])[0])[0]
    assert env.fingerprint() != plain.fingerprint()  # it shapes the demonstrations: another warm start


# --- training on env=alfworld through the shared loop and the offline rounds -------------------
TRAIN_SMALL = ["env=alfworld", "reward=gold", "env.num_train=6", "env.num_seen=2", "env.num_unseen=2",
               "env.max_steps=12", "env.max_turns=12", "env.corpus_episodes=4", "env.sft.demonstrations=6",
               "env.sft.epochs=2", "model.tokenizer.vocab_size=400", "env.eval_prompts=2", "eval.at_start=false",
               "rollout.max_new_tokens=12", "train.steps=1"]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("rlhf_cache")


@pytest.mark.parametrize("algo", ["ppo", "p3o", "oreo", "rft", "ppo_constrained", "oreo_constrained"])
def test_training_runs_and_logs_alfworld_metrics(train_run, shared_cache, algo):
    from tests.conftest import read_scalars

    extra = {"ppo": ["train.prompts_per_step=2"],
             "ppo_constrained": ["train.prompts_per_step=2", "env.constrain_actions=true", "rollout.max_new_tokens=24"],
             "p3o": ["train.prompts_per_step=2"],  # 2 prompts x 2 samples: pairs of whole episodes
             "oreo": ["algo.prompts=2", "algo.responses_per_prompt=2", "algo.batch_size=6", "algo.epochs=1",
                      "algo.expert_episodes=2"],
             "oreo_constrained": ["algo.prompts=2", "algo.responses_per_prompt=2", "algo.batch_size=6",
                                  "algo.epochs=1", "algo.expert_episodes=2", "env.constrain_actions=true",
                                  "rollout.max_new_tokens=24"],
             "rft": ["algo.prompts=2", "algo.responses_per_prompt=2", "algo.batch_size=4", "algo.epochs=1",
                     "algo.accept_threshold=0"]}[algo]
    base = [o for o in TRAIN_SMALL if not algo.endswith("constrained") or not o.startswith("rollout.max_new_tokens")]
    run_dir = train_run([f"algo={algo.split('_')[0]}", f"cache_dir={shared_cache}", *base, *extra], name=algo)
    scalars = read_scalars(run_dir)
    for name in ("success", "steps", "invalid_rate"):
        assert f"eval/{name}" in scalars, sorted(scalars)
    assert 0.0 <= scalars["eval/invalid_rate"][-1][1] <= 1.0
    assert 1.0 <= scalars["eval/steps"][-1][1] <= 12.0
    if algo in ("ppo", "p3o", "ppo_constrained"):  # the training phase logs the env's components too
        assert {"env/alfworld/success", "env/alfworld/steps", "env/alfworld/invalid_rate"} <= set(scalars)
    if algo == "ppo_constrained":  # every answer admissible; pi_old (the engine's, renormalized) = the trainer's
        assert scalars["env/alfworld/invalid_rate"][-1][1] == 0.0 and scalars["eval/invalid_rate"][-1][1] == 0.0
        assert scalars["rollout/logp_diff_max"][-1][1] < 1e-4
    if algo == "oreo_constrained":  # samples and expert episodes scored under the constraint: no invalid answer
        assert scalars["eval/invalid_rate"][-1][1] == 0.0
        assert all(abs(v) < 1e6 for _, v in scalars["oreo/kl_reg"]) and scalars["oreo/kl_reg"][-1][1] >= 0


def test_suite_scores_an_alfworld_policy_on_alfworld_and_text_beside_its_sft_reference(train_run, shared_cache,
                                                                                          tmp_path):
    """`python -m rlhf.evaluate suite=agent,text`: ALFWorld is an env of the cross-env suite; the
    run's own env keeps the run's settings (its small game set), text takes its defaults."""
    import json

    from rlhf.evaluate import main

    run = train_run(["algo=ppo", f"cache_dir={shared_cache}", *TRAIN_SMALL, "train.prompts_per_step=2"],
                    name="suite-ppo")
    out = tmp_path / "suite"
    main([f"run={run}", "suite=alfworld,text", f"out={out}", "eval.prompts=2", "eval.samples_per_prompt=1"])
    rows = json.loads((out / "suite.json").read_text())
    assert not rows["skipped"], rows["skipped"]
    alf = [r for r in rows["rows"] if r["env"] == "alfworld"]
    assert len(alf) == 2 and {r["baseline"] for r in alf} == {True, False}
    for row in alf:
        assert 0.0 <= row["success"] <= 1.0 and 1.0 <= row["steps"] <= 12.0 and 0.0 <= row["invalid_rate"] <= 1.0
    assert {r["env"] for r in rows["rows"]} == {"alfworld", "text"}


def test_ray_env_workers_log_exactly_what_the_local_launcher_logs(train_run, shared_cache):
    """launcher=ray on env=alfworld: two Ray actors each build their own AlfredTWEnv and play
    their chunk of the phase's episodes; every logged metric (timings aside) equals the local
    launcher's with the same chunks and seeds."""
    from tests.conftest import read_scalars
    from tests.test_ray_launcher import RAY_WORKERS, assert_same_metrics  # sets RAY_AUTH_MODE on import

    common = ["algo=ppo", f"cache_dir={shared_cache}", *TRAIN_SMALL, "train.prompts_per_step=4", "threads=1",
              "launcher.chunk_episodes=2", "rollout.behaviour_as_old_logprobs=false"]  # Ray recomputes pi_old
    local = read_scalars(train_run(common, name="local"))
    ray_run = read_scalars(train_run(common + RAY_WORKERS + ["launcher.num_cpus=2"], name="ray"))
    assert "env/alfworld/steps" in local
    assert_same_metrics(ray_run, local)


def test_expert_lists_lay_out_turns_like_the_runner(cache):
    """Expert episodes as offline samples: commands (mask 1, each ending in EOS) and the next
    observations (mask 0) in the runner's order; decoding the masked spans gives the env's text."""
    from rlhf.offline import expert_lists
    from rlhf.warmstart import train_tokenizer

    env = make(cache, show_admissible=False, max_steps=60, expert=True)
    tokenizer = train_tokenizer([p + r for p, r in env.demonstrations(2, seed=1)], 400)
    (episode,), (lst,) = env.expert_episodes(1, seed=1), expert_lists(env, tokenizer, 1, seed=1)
    ids, mask = lst.responses[0], lst.masks[0]
    assert lst.scores == [1.0] and tokenizer.decode(lst.prompt_ids) == episode[0][0]
    commands = tokenizer.decode([t for t, m in zip(ids, mask) if m]).split(EOS)
    assert [c.strip() for c in commands if c] == [command for _, command in episode]
    observations = tokenizer.decode([t for t, m in zip(ids, mask) if not m])
    assert observations == "".join(obs for obs, _ in episode[1:])


def test_constrained_expert_lists_carry_each_commands_allowed_ids(cache):
    """With constrain_actions, expert episodes also record the admissible commands of each turn,
    and every command token keeps the ids the constraint allowed there: the token itself is
    among them, the EOS closing a command is allowed, observation tokens are free."""
    from rlhf.offline import expert_lists
    from rlhf.warmstart import train_tokenizer

    env = make(cache, show_admissible=False, max_steps=60, constrain_actions=True)
    tokenizer = train_tokenizer([p + r for p, r in env.demonstrations(2, seed=1)], 400)
    (episode,) = env.expert_episodes(1, seed=1, admissible=True)
    assert all(len(turn) == 3 and turn[1] in turn[2] for turn in episode)  # (obs, command, admissible)
    (lst,) = expert_lists(env, tokenizer, 1, seed=1)
    ids, mask, allowed = lst.responses[0], lst.masks[0], lst.allowed[0]
    assert len(allowed) == len(ids)
    for t, (tok, m, ok) in enumerate(zip(ids, mask, allowed)):
        if m:
            assert ok is not None and tok in ok, (t, tok, ok)
        else:
            assert ok is None
    ends = [ok for tok, m, ok in zip(ids, mask, allowed) if m and tok == tokenizer.eos_token_id]
    assert len(ends) == len(episode)
    # some choice is real (more than one id allowed) and some token is forced
    sizes = [len(ok) for ok in allowed if ok is not None]
    assert max(sizes) > 1 and min(sizes) == 1


def test_demo_games_keep_demonstrations_on_the_first_generated_games(cache, root):
    """env.demo_games=N: the expert demonstrations (the warm start) play only the first N
    generated training games, the RL side every training game; a bad N is refused up front."""
    from envs.base import EnvConfigError

    env = make(cache, demo_games=2)
    first = sorted((str(p) for p in games(root, "train")), key=lambda f: Path(f).parent.name)[:2]
    drawn = {env.game_for(s, among=2) for s in range(40)}
    assert drawn == set(first)  # generation order: the trial seed in the folder name
    assert len({env.game_for(s) for s in range(40)}) == SETTINGS["num_train"]
    assert env.fingerprint() != make(cache).fingerprint()  # a different warm start
    assert len(env.demonstrations(2, seed=3)) == 2
    with pytest.raises(EnvConfigError, match="env.demo_games=7"):
        make(cache, demo_games=7)


def test_engine_memos_change_no_game(cache, monkeypatch):
    """engine_memo (the admissible commands' text memoized per game; PDDL translations and grammar
    parses memoized in the process and on disk) changes nothing: the planner's episodes on 4
    training games, replayed with the memos read back from disk alone and then with TextWorld's
    own derivation, translation and parsing, see the same admissible commands and the same expert
    plan at every step. An env built without expert=True computes no plan and says so."""
    import fast_downward
    from textworld.envs.pddl import logic, pddl

    from envs.alfworld import engine_memo

    def admissible(env):
        return sorted(env._state["info"]["admissible_commands"])

    def forget():  # the process's memos; what is on disk stays
        fast_downward.pddl2sas.memo.clear()
        logic._parse_and_convert.memo.clear()

    def play(env, seeds):
        played, lists_per_game = [], []
        for seed in seeds:
            env.reset(seed)
            cmds, lists, done = [], [admissible(env)], False
            while not done:
                cmds.append(env.expert_action())
                _, _, done, _ = env.step(" " + cmds[-1])
                lists.append(admissible(env))
            played.append(cmds)
            lists_per_game.append(lists)
        return played, lists_per_game

    argv = list(sys.argv)
    env = make(cache, expert_type="planner", max_steps=150, expert=True)
    env.game_for(0)  # installs the memos
    seeds = range(4)
    forget()
    played, memoized = play(env, seeds)
    assert pddl.PddlEnv._gather_infos.memoized and fast_downward.pddl2sas.memoized and logic._parse_and_convert.memoized
    assert sys.argv == argv  # fast_downward's translator sets its own; the memo puts the caller's back
    stored = {kind: list((cache / "memo" / kind).rglob("*.pkl.z")) for kind in ("translations", "grammars")}
    assert len(stored["translations"]) >= 2 * len(seeds) and len(stored["grammars"]) >= len(seeds)
    forget()
    with monkeypatch.context() as m:  # every translation and parse is read back from disk
        for memo in (fast_downward.pddl2sas, logic._parse_and_convert):
            m.setattr(memo, "unmemoized", lambda *a, **k: pytest.fail("computed again, not read from disk"))
        assert play(env, seeds) == (played, memoized)
    monkeypatch.setattr(pddl.PddlEnv, "_gather_infos", pddl.PddlEnv._gather_infos.unmemoized)
    monkeypatch.setattr(fast_downward, "pddl2sas", fast_downward.pddl2sas.unmemoized)
    monkeypatch.setattr(logic, "_parse_and_convert", logic._parse_and_convert.unmemoized)
    monkeypatch.setattr(engine_memo, "install", lambda *a: None)  # the next env must not install them again
    plain = make(cache, expert_type="planner", max_steps=150, expert=True)
    for seed, cmds, lists in zip(seeds, played, memoized):
        plain.reset(seed)
        got = [admissible(plain)]
        for cmd in cmds:
            assert plain.expert_action() == cmd
            plain.step(" " + cmd)
            got.append(admissible(plain))
        assert got == lists
    assert not getattr(pddl.PddlEnv._gather_infos, "memoized", False)
    assert not getattr(fast_downward.pddl2sas, "memoized", False)
    assert not getattr(logic._parse_and_convert, "memoized", False)
    assert sum(map(len, played)) > 10 and any(c.startswith("go to") for x in memoized for c in x[0])
    no_expert = make(cache, expert_type="planner")
    no_expert.reset(0)
    assert "extra.expert_plan" not in no_expert._state["info"]
    with pytest.raises(RuntimeError, match="expert=True"):
        no_expert.expert_action()


def test_disk_memo_reads_back_and_recomputes_a_damaged_file(tmp_path):
    """engine_memo.DiskMemo: a result is computed once and read back in a new process memo; a file
    that cannot be read (truncated by a crash, say) counts as a miss and is written again."""
    from collections import OrderedDict

    from envs.alfworld.engine_memo import DiskMemo, memoized

    store, calls = DiskMemo(tmp_path, "v1"), []

    def compute():
        calls.append(1)
        return {"sas": "begin_version 3 end_version"}

    first = memoized(compute, ("domain", "problem"), OrderedDict(), 4, store)
    assert memoized(compute, ("domain", "problem"), OrderedDict(), 4, store) == first and len(calls) == 1
    assert DiskMemo(tmp_path, "v2").get(("domain", "problem")) is None  # another salt, another key
    store.path(("domain", "problem")).write_bytes(b"not zlib")
    assert memoized(compute, ("domain", "problem"), OrderedDict(), 4, store) == first and len(calls) == 2
    assert store.get(("domain", "problem")) == first


def test_value_best_of_plays_alfworld_with_the_oreo_value(train_run, shared_cache, tmp_path):
    """`python -m rlhf.evaluate run=<oreo run> decoding=value_best_of`: the OREO run's own value model
    picks each turn's answer among k constrained samples; episodes end, no answer is invalid, and the
    search reports how many distinct answers it valued per turn (1..k)."""
    import json

    from rlhf.evaluate import main

    run = train_run(["algo=oreo", f"cache_dir={shared_cache}", *TRAIN_SMALL, "algo.prompts=2", "algo.responses_per_prompt=2",
                     "algo.batch_size=6", "algo.epochs=1", "algo.expert_episodes=2", "env.constrain_actions=true",
                     "rollout.max_new_tokens=24"], name="oreo-best-of")
    out = tmp_path / "best_of"
    main([f"run={run}", "decoding=value_best_of", "decoding.k=3", f"out={out}"])
    metrics = json.loads(next((out / "eval").glob("step_*.json")).read_text())
    assert metrics["invalid_rate"] == 0.0 and 1.0 <= metrics["steps"] <= 12.0
    assert 1.0 <= metrics["search/candidates_per_turn"] <= 3.0 and metrics["search/k"] == 3.0
