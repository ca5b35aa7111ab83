"""`env=alfworld`: ALFWorld household tasks (Shridhar et al. 2021) through ALFWorld's own
`AlfredTWEnv`, multi-turn.

Games: by default generated offline by `envs/alfworld/generator.py` in ALFWorld's exact
`game.tw-pddl` format (spec: environments.md §3) and cached under `cache_dir/games/<hash>/` in
ALFWorld's folder layout (`train/`, `valid_seen/`, `valid_unseen/`). With `data_dir=<path>` the
same adapter plays a real ALFWorld release instead (`$ALFWORLD_DATA/json_2.1.1`, the folder that
holds `train/`, `valid_seen/`, `valid_unseen/`); nothing is generated then.

The game runs in `AlfredTWEnv(config, split).init_env(batch_size=1)`, i.e. with ALFWorld's own
AlfredDemangler / AlfredInfos wrappers and, on the train split of an env built with expert=True
(the one that plays the demonstrations), the AlfredExpert wrapper (`expert_type` handcoded or
planner), as AlfredTWEnv sets them up (with the expert's type passed
by keyword: `alfred_expert_by_keyword`). Splits: `train` plays
the training games; `eval` plays `valid_seen` (eval_on=seen) or `valid_unseen` (eval_on=unseen).
On the eval split `reset(seed)` takes game `seed mod len`, so seeds 0..n-1 score n distinct
games; on the train split a seed draws a game at random.

Text: reset returns ALFWorld's intro ("-= Welcome to TextWorld, ALFRED! =- ... Your task is to:
...") followed by the admissible commands and "\\nAction:"; the answer is one command (a leading
space is expected, as in env=games). Each step returns the game's feedback, again followed by the
admissible commands.

Answers: stripped, lower-cased, whitespace collapsed, a trailing period dropped. If the result is
one of the admissible commands it is played. Otherwise the answer is *invalid*: it is not sent to
the game, the observation is "Nothing happens." (what ALFWorld's engine answers to a command it
cannot execute), it is counted (reward component `invalid`, info["valid"]=False), it uses up one
step of the step limit, and `invalid_penalty` is subtracted from gold.

Constrained decoding (`constrain_actions`): the answer is decoded constrained to the
admissible commands (`allowed_actions`, see rlhf.rollout.runner): the policy then acts with
pi(command | history) renormalized over the commands the game accepts now, as agents that score
the admissible commands with an LM do (e.g. Ahn et al. 2022, SayCan, §3), so no answer is invalid.

Task reminder (`remind_task`): each later observation repeats the intro's "Your task is to: ..."
line just before the admissible commands / "Action:", so the goal sits next to every answer (a
prompt-format choice; the game is unchanged).

Step limit: the episode ends after `max_steps` answers (valid or not), or when the task is won.

Reward components (a dict per step; sums over the episode are what gets logged):
  gold     1 on the step that completes the task, minus invalid_penalty for an invalid answer and
           step_penalty per step
  success  1 on the step that completes the task (episode sum = success rate)
  invalid  1 per invalid answer (episode sum = number of invalid answers)
  steps    1 per answer (episode sum = episode length)
  invalid_rate  the change in (invalid answers / answers) this step (episode sum = its invalid rate)
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import time
from pathlib import Path
from typing import Any

from envs.base import EnvConfigError, TextEnv, register

TASK_IDS = {"pick_and_place_simple": 1, "look_at_obj_in_light": 2, "pick_clean_then_place_in_recep": 3,
            "pick_heat_then_place_in_recep": 4, "pick_cool_then_place_in_recep": 5, "pick_two_obj_and_place": 6}
SPLIT_MODE = {"train": "train", "seen": "eval_in_distribution", "unseen": "eval_out_of_distribution"}
INVALID_FEEDBACK = "Nothing happens."
EOS = "<|endoftext|>"
DEMO_FORMAT = 1  # bump when the text of expert episodes changes (their cache key)


@contextlib.contextmanager
def alfred_expert_by_keyword():
    """While AlfredTWEnv.init_env runs, its `AlfredExpert(expert_type)` gets the type by keyword.

    alfworld 0.4.2 calls `AlfredExpert(expert_type)`, whose first parameter is `env`: the type
    string is taken as the wrapped env and the expert stays at its default, handcoded, whatever
    `env.expert_type` says (measured: "planner" played the hand-coded search, step for step).
    This swaps in a subclass that takes the type as its first argument, for the call only."""
    from alfworld.agents.environment import alfred_tw_env

    original = alfred_tw_env.AlfredExpert

    class ExpertByType(original):
        def __init__(self, expert_type: str = "handcoded"):
            super().__init__(expert_type=expert_type)

    alfred_tw_env.AlfredExpert = ExpertByType
    try:
        yield
    finally:
        alfred_tw_env.AlfredExpert = original


def _prepare_dirs(cache_dir: Path) -> None:
    """alfworld creates $ALFWORLD_DATA on import (default ~/.cache/alfworld): keep it in our cache."""
    os.environ.setdefault("ALFWORLD_DATA", str(cache_dir / "alfworld_data"))
    Path(os.environ["ALFWORLD_DATA"]).mkdir(parents=True, exist_ok=True)


def normalize(text: str) -> str:
    answer = " ".join(text.strip().lower().split())
    return answer[:-1].rstrip() if answer.endswith(".") else answer


@register("alfworld")
class AlfWorldEnv(TextEnv):
    """ALFWorld through AlfredTWEnv; see the module docstring for text, parsing and rewards."""

    eval_temperature = 0.0

    def __init__(self, split: str = "train", eval_on: str = "seen", data_dir: str | None = None,
                 cache_dir: str = ".cache/alfworld", num_train: int = 100, num_seen: int = 20, num_unseen: int = 20,
                 task_types=tuple(TASK_IDS), unseen_fraction: float = 0.2, distractors=(4, 10), gen_seed: int = 0,
                 max_steps: int = 30, expert_type: str = "handcoded", show_admissible: bool = False,
                 constrain_actions: bool = False, remind_task: bool = False, corpus_episodes: int = 50,
                 demo_games: int | None = None, invalid_penalty: float = 0.0, step_penalty: float = 0.0,
                 max_turns: int | None = None, expert: bool = False, **_: Any):
        if split not in ("train", "eval"):
            raise EnvConfigError(f"env split '{split}' unknown; valid choices: train, eval")
        if eval_on not in ("seen", "unseen"):
            raise EnvConfigError(f"env.eval_on={eval_on!r}; valid choices: seen, unseen")
        if expert_type not in ("planner", "handcoded"):
            raise EnvConfigError(f"env.expert_type={expert_type!r}; valid choices: planner, handcoded")
        task_types = [task_types] if isinstance(task_types, str) else list(task_types)
        for t in task_types:
            if t not in TASK_IDS:
                raise EnvConfigError(f"env.task_types: unknown task '{t}'; valid choices: {', '.join(TASK_IDS)}")
        if int(max_steps) < 1:
            raise EnvConfigError(f"env.max_steps={max_steps} must be >= 1")
        if demo_games is not None and (int(demo_games) < 1 or (data_dir is None and int(demo_games) > int(num_train))):
            raise EnvConfigError(f"env.demo_games={demo_games}: valid choices are null (every training game) or "
                                 f"1..env.num_train={num_train}")
        self.split, self.eval_on = split, eval_on
        self.cache_dir = Path(cache_dir).expanduser().resolve()
        self.task_types = task_types
        self.max_steps = self.max_turns = int(max_steps)
        self.expert_type, self.show_admissible = expert_type, bool(show_admissible)
        self.constrain_actions, self.remind_task = bool(constrain_actions), bool(remind_task)
        self.invalid_penalty, self.step_penalty = float(invalid_penalty), float(step_penalty)
        self.data_dir = data_dir
        self.expert = bool(expert)  # attach ALFWorld's expert (train split): only playing it needs its plan
        self.corpus_episodes = int(corpus_episodes)
        self.demo_games = None if demo_games is None else int(demo_games)
        _prepare_dirs(self.cache_dir)
        from envs.alfworld.generator import GenSettings

        self.gen = GenSettings(num_train=int(num_train), num_seen=int(num_seen), num_unseen=int(num_unseen),
                               task_types=tuple(task_types), unseen_fraction=float(unseen_fraction),
                               distractors=tuple(int(x) for x in distractors), seed=int(gen_seed))
        self._gym = None
        self.game_files: list[str] = []
        self._first_generated: dict[int, list[str]] = {}  # among -> the first `among` generated training games
        self._state: dict[str, Any] | None = None

    # --- games ------------------------------------------------------------------------------
    def root(self) -> Path:
        """The folder holding train/, valid_seen/, valid_unseen/ (generated on first use)."""
        if self.data_dir:
            root = Path(os.path.expandvars(str(self.data_dir))).expanduser()
            if not root.is_dir():
                raise EnvConfigError(f"env.data_dir={self.data_dir!r} is not a folder (want ALFWorld's json_2.1.1)")
            return root
        from envs.alfworld.generator import ensure_games

        return ensure_games(self.cache_dir, self.gen)

    def alfred_config(self, root: Path) -> dict[str, Any]:
        """The config dict AlfredTWEnv reads (its base_config.yaml is not shipped in the wheel)."""
        return {"env": {"goal_desc_human_anns_prob": 0.0, "task_types": [TASK_IDS[t] for t in self.task_types],
                        "domain_randomization": False, "expert_type": self.expert_type},
                "dataset": {"data_path": str(root / "train"), "eval_id_data_path": str(root / "valid_seen"),
                            "eval_ood_data_path": str(root / "valid_unseen"), "num_train_games": -1,
                            "num_eval_games": -1},
                # AlfredTWEnv attaches its expert (and so, for the planner, a fresh plan at every step: ~35 ms)
                # only for "dagger" training on the train split; "dqn" plays the same games without it
                "general": {"training_method": "dagger" if self.expert else "dqn"},
                "dagger": {"training": {"max_nb_steps_per_episode": self.max_steps}},
                "rl": {"training": {"max_nb_steps_per_episode": self.max_steps}}}

    def mode(self) -> str:
        return SPLIT_MODE["train" if self.split == "train" else self.eval_on]

    def _ensure(self):
        if self._gym is not None:
            return self._gym
        from alfworld.agents.environment.alfred_tw_env import AlfredTWEnv

        from envs.alfworld import engine_memo
        from envs.alfworld.generator import memoize_textgen

        memoize_textgen()
        engine_memo.install(self.cache_dir / "memo")
        root = self.root()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            alf = AlfredTWEnv(self.alfred_config(root), train_eval=self.mode())
            alf.game_files = sorted(alf.game_files)  # os.walk order is the file system's
            if not alf.game_files:
                raise EnvConfigError(f"no ALFWorld games for split {self.mode()} under {root}")
            with alfred_expert_by_keyword():
                self._gym = alf.init_env(batch_size=1)
        self.game_files = list(alf.game_files)
        return self._gym

    def game_for(self, seed: int, among: int | None = None) -> str:
        """The game an episode seed plays: eval splits in order, training games drawn by the seed
        (from the first `among` generated ones when given: the expert demonstrations' games)."""
        self._ensure()
        if self.split == "eval":
            return self.game_files[seed % len(self.game_files)]
        if among is None:
            return random.Random(seed).choice(self.game_files)
        if among not in self._first_generated:  # generation order: the trial seed in the folder name grows with it
            by_generation = sorted(self.game_files, key=lambda f: Path(f).parent.name)
            self._first_generated[among] = sorted(by_generation[:among])
        return random.Random(seed).choice(self._first_generated[among])

    # --- episode ----------------------------------------------------------------------------
    def reset(self, seed: int, among: int | None = None) -> str:
        env = self._ensure()
        gamefile = self.game_for(seed, among)
        env.gamefiles = [gamefile]  # the batch env cycles through `gamefiles`: play this one
        env.seed(seed % 2**32)  # numpy seeds are 32-bit; eval seeds start at a large offset
        obs, infos = env.reset()
        info = {k: v[0] for k, v in infos.items()}
        intro = obs[0].strip()
        task = next((line for line in intro.splitlines() if line.startswith("Your task is to:")), "")
        self._state = {"gamefile": gamefile, "steps": 0, "invalid": 0, "won": False, "done": False, "info": info,
                       "rate": 0.0, "task": task}
        return intro + self.menu(info)

    def menu(self, info: dict[str, Any]) -> str:
        cmds = self.admissible(info)
        shown = f"\nAvailable actions: {', '.join(cmds)}." if self.show_admissible else ""
        return shown + "\nAction:"

    @staticmethod
    def admissible(info: dict[str, Any]) -> list[str]:
        return [c for c in info.get("admissible_commands") or [] if c != "help"]

    def allowed_actions(self) -> list[str] | None:
        """With constrain_actions: the admissible commands as answers (leading space, as the
        demonstrations write them); None (free text) otherwise."""
        if not self.constrain_actions or self._state is None or self._state["done"]:
            return None
        return [" " + c for c in self.admissible(self._state["info"])]

    def expert_action(self) -> str | None:
        """The next action of ALFWorld's expert (train split only, as AlfredTWEnv attaches it; the
        env must be built with expert=True)."""
        if not self.expert:
            raise RuntimeError("expert_action() needs AlfWorldEnv(..., expert=True): without it ALFWorld's "
                               "expert is not attached (RL rollouts do not pay for its plan)")
        plan = (self._state or {}).get("info", {}).get("extra.expert_plan") or []
        return plan[0] if plan else None

    def step(self, action_text: str):
        st = self._state
        if st is None:
            raise RuntimeError("step() called before reset()")
        if st["done"]:
            raise RuntimeError("step() called after the episode ended")
        command = normalize(action_text)
        valid = command in (st["info"].get("admissible_commands") or [])
        st["steps"] += 1
        won = False
        if valid:
            obs, _, dones, infos = self._gym.step([command])
            st["info"] = {k: v[0] for k, v in infos.items()}
            won = bool(st["info"].get("won"))
            feedback, game_done = obs[0].strip(), bool(dones[0])
        else:
            st["invalid"] += 1
            feedback, game_done = INVALID_FEEDBACK, False
        st["won"] = won
        done = won or game_done or st["steps"] >= self.max_steps
        st["done"] = done
        gold = float(won) - (0.0 if valid else self.invalid_penalty) - self.step_penalty
        rate = st["invalid"] / st["steps"]  # telescoping: the episode's sum is its invalid rate so far
        reward = {"gold": gold, "success": float(won), "invalid": float(not valid), "steps": 1.0,
                  "invalid_rate": rate - st["rate"]}
        st["rate"] = rate
        info = {"valid": valid, "won": won, "command": command, "steps": st["steps"], "gamefile": st["gamefile"],
                "truncated": done and not won}
        reminder = "\n" + st["task"] if self.remind_task and st["task"] else ""
        observation = None if done else "\n" + feedback + reminder + self.menu(st["info"])
        return observation, reward, done, info

    # --- warm start -------------------------------------------------------------------------
    def expert_episodes(self, n: int, seed: int, admissible: bool = False,
                        games: int | None = None) -> list[list[tuple]]:
        """n won episodes of ALFWorld's expert (`expert_type`) on training games, each a list of
        (observation, command) turns: the intro then each feedback, with the command played
        after it; with `admissible`, (observation, command, the admissible commands then) — what
        a policy decoding under `constrain_actions` could have answered. `games`: play only the first
        that many generated training games (env.demo_games). Cached as JSON beside
        the games (keyed by n, seed and the settings that shape the text), so a new model or SFT
        budget reuses them: an expert step costs ~0.1 s."""
        env = self if self.split == "train" and self.expert else AlfWorldEnv(split="train", expert=True,
                                                                              **self._settings())
        shape = {"remind_task": True} if self.remind_task else {}  # (absent when off: earlier caches stay valid)
        shape |= {"admissible": True} if admissible else {}
        shape |= {"games": games} if games is not None else {}
        key = hashlib.sha256(json.dumps({"n": n, "seed": seed, "expert": self.expert_type, "max_steps": self.max_steps,
                                         "show_admissible": self.show_admissible, "format": DEMO_FORMAT, **shape},
                                        sort_keys=True).encode()).hexdigest()[:16]
        path = env.root() / "expert" / f"{key}.json"
        if path.exists():
            return [[tuple(turn) for turn in ep] for ep in json.loads(path.read_text())]
        rng = random.Random(seed)
        episodes: list[list[tuple[str, str]]] = []
        start, played = time.time(), 0
        while len(episodes) < n:
            if played and played % 25 == 0:
                print(f"[alfworld] expert episodes: {played} played, {len(episodes)}/{n} won "
                      f"({time.time() - start:.0f}s)", flush=True)
            played += 1
            observation, turns, done, info = env.reset(rng.randrange(2**31), games), [], False, {}
            while not done:
                action = env.expert_action()
                if action is None:
                    break
                turns.append((observation, action, self.admissible(env._state["info"])) if admissible
                             else (observation, action))
                observation, _, done, info = env.step(action)
            if info.get("won"):
                episodes.append(turns)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(episodes))
        tmp.replace(path)
        return episodes

    def demonstrations(self, n: int, seed: int) -> list[tuple[str, str]]:
        """One SFT pair per won expert episode: the whole transcript up to the expert's last
        command (each earlier command followed by EOS, exactly as a rollout lays the turns out)
        and that last command. SFT's loss covers prompt and response, so one pair trains every
        turn of the episode once (per-turn pairs would repeat each prefix once per turn)."""
        pairs = []
        for turns in self.expert_episodes(n, seed, games=self.demo_games):
            text = turns[0][0]
            for (_, action), (observation, _) in zip(turns, turns[1:]):
                text += " " + action + EOS + observation
            pairs.append((text, " " + turns[-1][1]))
        return pairs

    def demonstration_turns(self, n: int, seed: int) -> list[list[tuple[str, bool]]]:
        """The same won expert episodes as (text, is_action) pieces, for SFT on the actions only
        (`env.sft.loss_on=actions`): each observation, then the command played after it."""
        return [[piece for observation, action in turns for piece in ((observation, False), (" " + action, True))]
                for turns in self.expert_episodes(n, seed, games=self.demo_games)]

    def corpus(self, n: int, seed: int) -> list[str]:
        """The tokenizer's corpus: transcripts of at most `corpus_episodes` expert episodes (an
        episode is ~30 SFT-pairs' worth of text, and expert steps cost ~0.1 s)."""
        return [p + r for p, r in self.demonstrations(min(int(n), self.corpus_episodes), seed)]

    def _settings(self) -> dict[str, Any]:
        g = self.gen
        return {"eval_on": self.eval_on, "data_dir": self.data_dir, "cache_dir": str(self.cache_dir),
                "num_train": g.num_train, "num_seen": g.num_seen, "num_unseen": g.num_unseen,
                "task_types": list(g.task_types), "unseen_fraction": g.unseen_fraction,
                "distractors": list(g.distractors), "gen_seed": g.seed, "max_steps": self.max_steps,
                "expert_type": self.expert_type, "show_admissible": self.show_admissible,
                "invalid_penalty": self.invalid_penalty, "step_penalty": self.step_penalty,
                "constrain_actions": self.constrain_actions, "remind_task": self.remind_task,
                "corpus_episodes": self.corpus_episodes,
                **({"demo_games": self.demo_games} if self.demo_games is not None else {})}

    def fingerprint(self) -> dict[str, Any]:
        here = Path(__file__).parent
        # engine_memo.py is left out: its memos change no game, command or plan (tests/test_alfworld.py)
        files = sorted(p for p in here.glob("*.py") if p.name != "engine_memo.py")
        source = hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()[:16]
        # what shapes the demonstrations and the tokenizer's corpus (the warm start's cache key);
        # the eval split, the reward's penalties and the decoding constraint do not
        out = {k: v for k, v in self._settings().items()
               if k not in ("cache_dir", "eval_on", "invalid_penalty", "step_penalty", "constrain_actions")}
        return {"name": self.name, **out, "source": source}

