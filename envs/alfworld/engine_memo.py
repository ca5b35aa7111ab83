"""Memos for TextWorld's PDDL engine (the engine ALFWorld's games run in): the same answers,
computed once. Measured on a multi-turn PPO phase of 16 ALFWorld episodes (docs/alfworld.md,
"Speed"): TextWorld spent ~60 ms of a ~100 ms step deriving the admissible commands' text and
~0.25 s of every reset translating the same PDDL problem four times. Later, on resets of games
not played before in the process (every evaluation, most of an RL run's): ~120 of ~195 ms a
reset translated the game's problem and ~30 ms parsed the grammar every game shares.

Kept apart from generator.py on purpose: the generated games' cache key is that file's source,
and these memos change no game. Nor are they part of the warm start's key (AlfWorldEnv.fingerprint).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import sys
import tempfile
import zlib
from collections import OrderedDict
from pathlib import Path

TRANSLATIONS_KEPT = 64  # ~170 KB each: the games most recently loaded
GRAMMARS_KEPT = 64  # ~19 KB each
NAMES: dict[str, frozenset[str]] = {}  # command template -> the identifiers it contains
FORMAT = 1  # of the translation files on disk (part of their key)


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


class DiskMemo:
    """Pure functions' results kept on disk as zlib-compressed pickles (a translation ~17 KB and
    ~1 ms to read, against ~60 ms to compute), one file per key, written atomically so parallel
    runs can share the folder. The key's hash includes `salt` (the memo's format and the
    versions of the code that computes it). A file that cannot be read counts as a miss."""

    def __init__(self, folder: str | Path, salt: str):
        self.folder, self.salt = Path(folder), f"{FORMAT}|{salt}|".encode()

    def path(self, key: tuple) -> Path:
        digest = hashlib.sha256(self.salt + pickle.dumps(key)).hexdigest()
        return self.folder / digest[:2] / f"{digest}.pkl.z"

    def get(self, key: tuple) -> bytes | None:
        try:
            blob = zlib.decompress(self.path(key).read_bytes())
            pickle.loads(blob)  # a damaged file reads as a miss
            return blob
        except Exception:
            return None

    def put(self, key: tuple, blob: bytes) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(zlib.compress(blob, 1))
        os.replace(tmp, path)


def memoized(compute, key: tuple, memo: OrderedDict, kept: int, store: DiskMemo | None) -> bytes:
    """compute()'s pickled result for `key`: from the process's memo (the `kept` most recent),
    else from `store` on disk, else computed (and then kept in both)."""
    if key in memo:
        memo.move_to_end(key)
        return memo[key]
    blob = store.get(key) if store is not None else None
    if blob is None:
        blob = pickle.dumps(compute())
        if store is not None:
            store.put(key, blob)
    memo[key] = blob
    while len(memo) > kept:
        memo.popitem(last=False)
    return blob


def package_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def memoize_translation(folder: str | Path | None = None) -> None:
    """Every `PddlState` translates its PDDL problem to SAS twice (plain and optimized for the
    planner), and TextWorld builds a `PddlState` both when it loads a game and when it resets
    it, so a reset translated the same problem four times. The translation is a pure function of
    (domain, problem, flags); the memo keeps the most recent ones pickled, so every caller gets
    its own copy of the task objects, as from a fresh translation, and (given a folder) every
    translation on disk, so a game is translated once across processes (evaluations, seeds,
    claims). The caller's sys.argv is restored after a translation (fast_downward sets it to its
    own for its option parser)."""
    import fast_downward

    def store():
        return None if folder is None else DiskMemo(Path(folder) / "translations", package_version("fast_downward_textworld"))

    if getattr(fast_downward.pddl2sas, "memoized", False):
        if folder is not None:
            fast_downward.pddl2sas.store = store()
        return
    memo = OrderedDict()

    def pddl2sas(domain: str, problem: str, verbose: bool = False, optimize=False):
        def compute():
            argv = sys.argv  # fast_downward's translator overwrites sys.argv for its option parser
            try:
                return pddl2sas.unmemoized(domain, problem, verbose=verbose, optimize=optimize)
            finally:
                sys.argv = argv

        key = (domain, problem, bool(verbose), bool(optimize))
        return pickle.loads(memoized(compute, key, memo, TRANSLATIONS_KEPT, pddl2sas.store))

    pddl2sas.memoized, pddl2sas.memo, pddl2sas.store = True, memo, store()
    pddl2sas.unmemoized = fast_downward.pddl2sas  # read at call time (tests replace it)
    fast_downward.pddl2sas = pddl2sas  # textworld's PddlState calls it as fast_downward.pddl2sas


def memoize_grammar(folder: str | Path | None = None) -> None:
    """Loading a game builds its `GameLogic`, which parses the game's grammar file with tatsu
    (~25 ms; each game's grammar differs in its task line). The parse is memoized like the
    translations (pickled, so each load still gets its own GameLogic, actions and grammar)."""
    from textworld.envs.pddl import logic

    def store():
        return None if folder is None else DiskMemo(Path(folder) / "grammars", package_version("textworld"))

    if getattr(logic._parse_and_convert, "memoized", False):
        if folder is not None:
            logic._parse_and_convert.store = store()
        return
    memo = OrderedDict()

    def parse_and_convert(*args, **kwargs):
        def compute():
            return parse_and_convert.unmemoized(*args, **kwargs)

        key = (args, tuple(sorted(kwargs.items())))
        return pickle.loads(memoized(compute, key, memo, GRAMMARS_KEPT, parse_and_convert.store))

    parse_and_convert.memoized, parse_and_convert.memo, parse_and_convert.store = True, memo, store()
    parse_and_convert.unmemoized = logic._parse_and_convert  # read at call time (tests replace it)
    logic._parse_and_convert = parse_and_convert  # GameLogic.__init__ looks it up in its module


def install(folder: str | Path | None = None) -> None:
    """The memos above; `folder` keeps the translations and grammar parses across processes."""
    memoize_commands()
    memoize_translation(folder)
    memoize_grammar(folder)
