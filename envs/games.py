"""`env=games`: finitely repeated 2x2 matrix games against fixed strategies (Akata et al.,
"Playing repeated games with Large Language Models").

One episode is one game of `rounds` rounds. reset(seed) draws a game from `games` and an
opponent from `opponents` (both from the seed, so the samples of one prompt share them) and
shows the rules; each step takes the agent's answer for one round and returns the round's
outcome plus the next round's question. The transcript accumulates in the policy's context
(the episode runner appends each observation as masked tokens), so the history is always in
view.

Games are data (GAMES): the two options and the payoff matrix in the agent's frame, plus which
option means "cooperate" (C) for each player. Every game here is symmetric once written in C/D
terms, so it is also an `axelrod.Game(r, s, t, p)`, and axelrod's strategies (which speak only C
and D) play it through that adapter. For the Battle of the Sexes, C means "go to the other
player's favourite" and D "insist on my own": Tit For Tat then accommodates after being
accommodated, Alternator takes turns, Defector always insists.

Answers: the text is stripped; if it equals an option label (case-insensitive), or its first
word does, that option is played. Anything else is *invalid*: it is counted (info["valid"],
reward component `invalid`), the move played is `invalid_move` in C/D terms (default D: defect
in the Prisoner's Dilemma, insist on one's own favourite in the Battle of the Sexes), and
`invalid_penalty` is subtracted from the optimized reward. It never ends or crashes the episode.

Reward components (a dict per round; sums over the episode are logged as env/games/<name>):
  gold         what `reward=gold` optimizes: the round's payoff * reward_scale (reward_timing
               `round`), or 0 until the last round, which gets the mean payoff per round *
               reward_scale (`end`); minus invalid_penalty for an invalid answer
  payoff       the agent's payoff this round (episode sum = total payoff)
  opponent_payoff  the opponent's payoff this round
  cooperation  1/rounds when the agent played C (episode sum = cooperation rate)
  invalid      1/rounds when the answer was invalid (episode sum = invalid-answer rate)
  rounds       1 per round played (episode sum = rounds played; < rounds means the context ran out)
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envs.base import TextEnv, register

C, D = "C", "D"


# --------------------------------------------------------------------------------------------
# games as data


@dataclass(frozen=True)
class GameSpec:
    name: str
    title: str
    options: tuple[str, str]  # what option 0 / 1 mean, in the agent's frame (documentation)
    payoffs: tuple[tuple[tuple[float, float], ...], ...]  # payoffs[agent option][opponent option] = (agent, opponent)
    agent_c: int  # the agent's option that counts as C (seen from the opponent)
    opponent_c: int  # the option (in the agent's frame) that the opponent picks when it plays C

    def agent_cd(self, option: int) -> str:
        return C if option == self.agent_c else D

    def opponent_option(self, move: str) -> int:
        return self.opponent_c if move == C else 1 - self.opponent_c

    def opponent_cd(self, option: int) -> str:
        return C if option == self.opponent_c else D

    def agent_option(self, move: str) -> int:
        return self.agent_c if move == C else 1 - self.agent_c

    def score(self, agent_option: int, opponent_option: int) -> tuple[float, float]:
        return self.payoffs[agent_option][opponent_option]

    def rpst(self) -> tuple[float, float, float, float]:
        """(R, P, S, T) of the game in C/D terms, from the agent's side (axelrod's order)."""
        def agent(a, b):
            return self.score(self.agent_option(a), self.opponent_option(b))[0]
        return agent(C, C), agent(D, D), agent(C, D), agent(D, C)

    def is_symmetric(self) -> bool:
        """The opponent's payoff for (its move, agent's move) equals the agent's for the same moves."""
        for a in (C, D):
            for b in (C, D):
                opp = self.score(self.agent_option(a), self.opponent_option(b))[1]
                mine = self.score(self.agent_option(b), self.opponent_option(a))[0]
                if opp != mine:
                    return False
        return True


GAMES: dict[str, GameSpec] = {
    # Prisoner's Dilemma with axelrod's default payoffs R=3, S=0, T=5, P=1.
    "pd": GameSpec("pd", "Prisoner's Dilemma", ("cooperate", "defect"),
                   (((3, 3), (0, 5)), ((5, 0), (1, 1))), agent_c=0, opponent_c=0),
    # Battle of the Sexes (Akata et al.: 10 / 7 / 0): option 0 is the agent's favourite.
    "bos": GameSpec("bos", "Battle of the Sexes", ("agent's favourite", "other's favourite"),
                    (((10, 7), (0, 0)), ((0, 0), (7, 10))), agent_c=1, opponent_c=0),
    # Stag Hunt: R=4 > T=3 >= P=2 > S=1 (payoff dominance vs risk dominance).
    "sh": GameSpec("sh", "Stag Hunt", ("stag", "hare"),
                   (((4, 4), (1, 3)), ((3, 1), (2, 2))), agent_c=0, opponent_c=0),
    # Chicken (Hawk-Dove): T=5 > R=3 > S=1 > P=0.
    "chicken": GameSpec("chicken", "Chicken", ("swerve", "straight"),
                        (((3, 3), (1, 5)), ((5, 1), (0, 0))), agent_c=0, opponent_c=0),
}


# --------------------------------------------------------------------------------------------
# axelrod opponents


def import_axelrod():
    """Import axelrod and undo its process-wide switch of multiprocessing to 'spawn'
    (axelrod/tournament.py calls set_start_method('spawn', force=True) on import), which
    makes other code that starts processes hang."""
    import multiprocessing as mp

    before = mp.get_start_method(allow_none=True)
    import axelrod

    mp.set_start_method(before or "fork", force=True)
    return axelrod


# Well-known strategies offered by name (any other axelrod strategy class name works too).
STRATEGIES = ("TitForTat", "Grudger", "Alternator", "Defector", "Cooperator", "Random", "SuspiciousTitForTat",
              "WinStayLoseShift", "TitFor2Tats", "GrimTrigger")
ALIASES = {"GrimTrigger": "Grudger", "TFT": "TitForTat", "WSLS": "WinStayLoseShift", "Pavlov": "WinStayLoseShift",
           "STFT": "SuspiciousTitForTat"}


def strategy_class(name: str):
    axl = import_axelrod()
    cls_name = ALIASES.get(name, name)
    cls = getattr(axl, cls_name, None)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, axl.Player)) or cls is axl.Player:
        raise ValueError(f"unknown opponent '{name}'; valid choices: {', '.join(STRATEGIES)} "
                         "(or any axelrod strategy class name)")
    return cls


def axelrod_seed(seed: int) -> int:
    """The seed axl.Match(players, seed=seed % 2**32) gives the second player when the first one
    is deterministic (Match draws one seed per stochastic player, in order)."""
    import_axelrod()
    from axelrod.random_ import RandomGenerator

    return RandomGenerator(seed=seed % 2**32).random_seed_int()


class AxelrodOpponent:
    """An axelrod strategy stepped one round at a time, exactly as axl.Match steps it."""

    def __init__(self, name: str, game: GameSpec, rounds: int, seed: int):
        axl = import_axelrod()
        self.name = name
        self.player = strategy_class(name)()
        self.me = axl.Player()  # carries the agent's history in C/D terms
        r, p, s, t = game.rpst()
        self.player.set_match_attributes(length=rounds, game=axl.Game(r=r, s=s, t=t, p=p), noise=0)
        self.player.set_seed(axelrod_seed(seed))

    def move(self) -> str:
        return str(self.player.strategy(self.me))

    def update(self, own: str, agent: str) -> None:
        axl = import_axelrod()
        own_a, agent_a = axl.Action.from_char(own), axl.Action.from_char(agent)
        self.me.update_history(agent_a, own_a)
        self.player.update_history(own_a, agent_a)


class ExternalOpponent:
    """The opponent's move is set from outside before each step (LLM vs LLM play)."""

    name = "external"

    def __init__(self):
        self.next_move: str | None = None

    def move(self) -> str:
        if self.next_move is None:
            raise RuntimeError("ExternalOpponent: set next_move before step()")
        move, self.next_move = self.next_move, None
        return move

    def update(self, own: str, agent: str) -> None:
        pass


# --------------------------------------------------------------------------------------------
# the environment


@dataclass
class Round:
    agent: int  # option played (agent's frame), after the invalid-answer rule
    opponent: int
    agent_payoff: float
    opponent_payoff: float
    valid: bool
    answer: str


@dataclass
class GameRecord:
    game: str
    opponent: str
    labels: tuple[str, str]
    rounds: list[Round] = field(default_factory=list)

    def moves(self) -> tuple[list[str], list[str]]:
        """(agent, opponent) moves in C/D terms."""
        g = GAMES[self.game]
        return [g.agent_cd(r.agent) for r in self.rounds], [g.opponent_cd(r.opponent) for r in self.rounds]


def parse_answer(text: str, labels: tuple[str, str]) -> int | None:
    """The option an answer names, or None (invalid). Exact label or the first word, any case."""
    lowered = [label.lower() for label in labels]
    answer = text.strip().lower()
    if answer in lowered:
        return lowered.index(answer)
    words = re.findall(r"[^\W_]+", answer)
    if words and words[0] in lowered:
        return lowered.index(words[0])
    return None


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


@register("games")
class RepeatedGameEnv(TextEnv):
    """A finitely repeated 2x2 game; see the module docstring for text, parsing and rewards."""

    def __init__(self, split: str = "train", games=("pd",), opponents=("TitForTat",), opponent_weights=(),
                 rounds: int = 5, labels=("J", "F"), randomize_labels: bool = False,
                 label_pool=("J", "F", "K", "Q", "X", "Y", "P", "R"), payoff_format: str = "compact",
                 reward_timing: str = "round", reward_scale: float = 1.0, invalid_move: str = "D",
                 invalid_penalty: float = 1.0, max_turns: int | None = None, opponent=None, **_: Any):
        self.split = split
        self.games = _as_list(games)
        for g in self.games:
            if g not in GAMES:
                raise ValueError(f"unknown game '{g}'; valid choices: {', '.join(GAMES)}")
        self.opponent_names = _as_list(opponents)
        if not self.opponent_names and opponent is None:
            raise ValueError("env.opponents is empty; give at least one strategy, e.g. [TitForTat]")
        for name in self.opponent_names:
            strategy_class(name)  # fails now, naming the valid choices
        self.opponent_weights = [float(w) for w in _as_list(opponent_weights)]
        if self.opponent_weights and len(self.opponent_weights) != len(self.opponent_names):
            raise ValueError(f"env.opponent_weights has {len(self.opponent_weights)} entries for "
                             f"{len(self.opponent_names)} opponents")
        self.rounds = int(rounds)
        if self.rounds < 1:
            raise ValueError(f"env.rounds={rounds} must be >= 1")
        for game in self.games:  # some strategies need a game shape others lack (ZDExtort2: a PD)
            for name in self.opponent_names:
                try:
                    AxelrodOpponent(name, GAMES[game], self.rounds, 0).move()
                except Exception as err:  # noqa: BLE001 - axelrod raises bare ValueErrors here
                    raise ValueError(f"env.opponents: {name} cannot play game '{game}' ({type(err).__name__}"
                                     f"{': ' + str(err) if str(err) else ''}); drop it or the game from "
                                     f"env.games={self.games}") from None
        self.max_turns = self.rounds
        self.labels = tuple(str(x) for x in labels)
        self.label_pool = tuple(str(x) for x in label_pool)
        self.randomize_labels = bool(randomize_labels)
        if len(self.labels) != 2 or len({x.lower() for x in self.labels}) != 2:
            raise ValueError(f"env.labels={list(self.labels)}: need two distinct labels")
        if len({x.lower() for x in self.label_pool}) < 2:
            raise ValueError(f"env.label_pool={list(self.label_pool)}: need two or more distinct labels")
        for label in (*self.labels, *self.label_pool):
            if not re.fullmatch(r"[^\W_]+", label):
                raise ValueError(f"env label {label!r} must be a single word (letters/digits)")
        if payoff_format not in ("compact", "sentences"):
            raise ValueError(f"env.payoff_format={payoff_format!r}; valid choices: compact, sentences")
        if reward_timing not in ("round", "end"):
            raise ValueError(f"env.reward_timing={reward_timing!r}; valid choices: round, end")
        if invalid_move not in (C, D):
            raise ValueError(f"env.invalid_move={invalid_move!r}; valid choices: C, D")
        self.payoff_format, self.reward_timing = payoff_format, reward_timing
        self.reward_scale, self.invalid_move = float(reward_scale), str(invalid_move)
        self.invalid_penalty = float(invalid_penalty)
        self.fixed_opponent = opponent  # an opponent object (e.g. ExternalOpponent) instead of sampling one
        self.record: GameRecord | None = None
        self.game: GameSpec | None = None
        self.opponent = None

    # --- episode ----------------------------------------------------------------------------
    def reset(self, seed: int) -> str:
        rng = random.Random(seed)
        self.game = GAMES[rng.choice(self.games)]
        if self.fixed_opponent is not None:
            self.opponent = self.fixed_opponent
        else:
            name = (rng.choices(self.opponent_names, weights=self.opponent_weights)[0] if self.opponent_weights
                    else rng.choice(self.opponent_names))
            self.opponent = AxelrodOpponent(name, self.game, self.rounds, seed)
        labels = self.labels
        if self.randomize_labels:
            labels = tuple(rng.sample(self.label_pool, 2))
        self.record = GameRecord(self.game.name, self.opponent.name, labels)
        return self.intro() + self.question()

    def resolve(self, action_text: str) -> tuple[int, bool]:
        """(option played, answer was valid) under the invalid-answer rule."""
        option = parse_answer(action_text, self.record.labels)
        return (self.game.agent_option(self.invalid_move), False) if option is None else (option, True)

    def step(self, action_text: str):
        if self.record is None:
            raise RuntimeError("step() called before reset()")
        if len(self.record.rounds) >= self.rounds:
            raise RuntimeError("step() called after the game ended")
        game = self.game
        opponent_move = self.opponent.move()  # decided from past rounds only (simultaneous moves)
        agent, valid = self.resolve(action_text)
        opponent = game.opponent_option(opponent_move)
        mine, theirs = game.score(agent, opponent)
        self.opponent.update(opponent_move, game.agent_cd(agent))
        self.record.rounds.append(Round(agent, opponent, mine, theirs, valid, action_text))
        done = len(self.record.rounds) >= self.rounds
        if self.reward_timing == "round":
            gold = mine * self.reward_scale
        else:
            gold = (sum(r.agent_payoff for r in self.record.rounds) / self.rounds * self.reward_scale) if done else 0.0
        reward = {"gold": gold - (0.0 if valid else self.invalid_penalty), "payoff": float(mine),
                  "opponent_payoff": float(theirs), "cooperation": float(game.agent_cd(agent) == C) / self.rounds,
                  "invalid": float(not valid) / self.rounds, "rounds": 1.0}
        info = {"game": game.name, "opponent": self.opponent.name, "round": len(self.record.rounds),
                "agent_option": agent, "opponent_option": opponent, "agent_move": game.agent_cd(agent),
                "opponent_move": opponent_move, "valid": valid, "labels": self.record.labels}
        observation = self.outcome(self.record.rounds[-1]) + ("" if done else self.question())
        return (None if done else observation), reward, done, info

    # --- text -------------------------------------------------------------------------------
    # Token boundaries are chosen so that encoding a whole transcript equals encoding its pieces
    # one by one as the runner does: answers are " <label>" (leading space), observations start
    # with a newline, and the EOS that ends each answer is a special token.
    def display_labels(self) -> list[tuple[int, str]]:
        """(option, label) in display order: sorted by label, so the order reveals nothing."""
        return sorted(enumerate(self.record.labels), key=lambda x: x[1].lower())

    def intro(self) -> str:
        labels = self.record.labels
        shown = self.display_labels()
        names = " or ".join(label for _, label in shown)
        head = f"{self.rounds} rounds. Each round you and the other player pick {names}."
        if self.payoff_format == "compact":
            cells = [f"{labels[a]}{labels[b]} {_num(self.game.score(a, b)[0])},{_num(self.game.score(a, b)[1])}"
                     for a, _ in shown for b, _ in shown]
            table = "\nPoints (you,other): " + " ".join(cells)
        else:
            table = "".join(f"\nIf you pick {labels[a]} and they pick {labels[b]}: you get "
                            f"{_num(self.game.score(a, b)[0])}, they get {_num(self.game.score(a, b)[1])}."
                            for a, _ in shown for b, _ in shown)
        return head + table

    def question(self) -> str:
        return f"\nRound {len(self.record.rounds) + 1}:"

    def outcome(self, r: Round) -> str:
        flag = "" if r.valid else " Invalid answer."
        return f"\nOther: {self.record.labels[r.opponent]}.{flag} Points {_num(r.agent_payoff)},{_num(r.opponent_payoff)}."

    # --- warm start -------------------------------------------------------------------------
    def demonstrations(self, n: int, seed: int) -> list[tuple[str, str]]:
        """Whole games with uniformly random valid answers against a broad pool of strategies,
        on every game (whatever env.games / env.opponents a run trains on, so every run of one
        text format shares one warm start and the initial policy is about 50/50). The prompt
        holds the transcript with each earlier answer followed by EOS, as in a rollout; the
        response is the last answer."""
        eos = "<|endoftext|>"
        rng = random.Random(seed)
        env = RepeatedGameEnv(games=list(GAMES), opponents=list(DEMO_OPPONENTS), rounds=self.rounds,
                              labels=self.labels, randomize_labels=self.randomize_labels, label_pool=self.label_pool,
                              payoff_format=self.payoff_format)
        pairs = []
        for _ in range(n):
            text = env.reset(rng.randrange(2**31))
            last = rng.randint(1, self.rounds)  # vary the length so early rounds are not underweighted
            for k in range(last):
                answer = " " + env.record.labels[rng.randrange(2)]
                if k == last - 1:
                    pairs.append((text, answer))
                    break
                observation, _, _, _ = env.step(answer)
                text += answer + eos + observation
        return pairs

    def fingerprint(self) -> dict[str, Any]:
        source = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
        return {"name": self.name, "rounds": self.rounds, "labels": list(self.labels),
                "randomize_labels": self.randomize_labels, "label_pool": list(self.label_pool),
                "payoff_format": self.payoff_format, "source": source}


DEMO_OPPONENTS = ("TitForTat", "Grudger", "Alternator", "Defector", "Cooperator", "Random", "SuspiciousTitForTat",
                  "WinStayLoseShift")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
