"""Memos for TextWorld's PDDL engine (the engine ALFWorld's games run in): the same answers,
computed once. Measured on a multi-turn PPO phase of 16 ALFWorld episodes (docs/alfworld.md,
"Speed"): TextWorld spent ~60 ms of a ~100 ms step deriving the admissible commands' text and
~0.25 s of every reset translating the same PDDL problem four times.

Kept apart from generator.py on purpose: the generated games' cache key is that file's source,
and these memos change no game."""
from __future__ import annotations

import pickle
import re
import sys
from collections import OrderedDict

TRANSLATIONS_KEPT = 64  # ~170 KB each: the games most recently loaded
NAMES: dict[str, frozenset[str]] = {}  # command template -> the identifiers it contains


def memoize_commands() -> None:
    """TextWorld's PDDL engine derives the text of every admissible command from the grammar at
    every step (`PddlEnv._gather_infos`), deep-copying the derivation context for each symbol:
    ~3 ms a command. The derived text depends only on the command's template and the game
    objects bound to the placeholders it names (ALFWorld's command templates have no grammar
    nonterminals; the one conditional, "go to", queries `receptacleAtLocation`, which the domain
    marks constant), so it is memoized per game: the memo lives on the game's `GameLogic`, which
    TextWorld builds anew when a game is loaded. tests/test_alfworld.py compares the admissible
    commands with and without the memo along planner episodes."""
    from textworld.envs.pddl import pddl

    if getattr(pddl.PddlEnv._gather_infos, "memoized", False):
        return
    gather = pddl.PddlEnv._gather_infos

    class CommandMemo:
        def __init__(self, grammar, memo: dict):
            self.grammar, self.memo = grammar, memo

        def derive(self, start, context):
            named = NAMES.get(start)
            if named is None:  # the placeholders the template can read (a template's names, parsed once)
                named = NAMES[start] = frozenset(re.findall(r"[A-Za-z_]\w*", start))
            key = (start, tuple(sorted((ph.name, var.name) for ph, var in context["mapping"].items() if ph.name in named)))
            if key not in self.memo:
                self.memo[key] = self.grammar.derive(start, context)
            return self.memo[key]

    def gather_infos(self):
        logic = self._logic
        grammar, memo = logic.grammar, logic.__dict__.setdefault("_command_memo", {})
        logic.grammar = CommandMemo(grammar, memo)  # _gather_infos derives only command templates
        try:
            gather(self)
        finally:
            logic.grammar = grammar

    gather_infos.memoized = True
    gather_infos.unmemoized = gather
    pddl.PddlEnv._gather_infos = gather_infos


def memoize_translation() -> None:
    """Every `PddlState` translates its PDDL problem to SAS twice (plain and optimized for the
    planner), and TextWorld builds a `PddlState` both when it loads a game and when it resets
    it, so a reset translated the same problem four times. The translation is a pure function of
    (domain, problem, flags); the memo keeps the most recent ones pickled, so every caller gets
    its own copy of the task objects, as from a fresh translation. The caller's sys.argv is
    restored after a translation (fast_downward sets it to its own for its option parser)."""
    import fast_downward
    from textworld.envs.pddl import logic

    if getattr(logic.fast_downward.pddl2sas, "memoized", False):
        return
    translate, memo = fast_downward.pddl2sas, OrderedDict()

    def pddl2sas(domain: str, problem: str, verbose: bool = False, optimize=False):
        key = (domain, problem, bool(verbose), bool(optimize))
        if key in memo:
            memo.move_to_end(key)
        else:
            argv = sys.argv  # fast_downward's translator overwrites sys.argv for its option parser
            try:
                memo[key] = pickle.dumps(translate(domain, problem, verbose=verbose, optimize=optimize))
            finally:
                sys.argv = argv
            while len(memo) > TRANSLATIONS_KEPT:
                memo.popitem(last=False)
        return pickle.loads(memo[key])

    pddl2sas.memoized, pddl2sas.memo = True, memo
    pddl2sas.unmemoized = translate
    fast_downward.pddl2sas = pddl2sas  # textworld's PddlState calls it as fast_downward.pddl2sas


def install() -> None:
    memoize_commands()
    memoize_translation()
