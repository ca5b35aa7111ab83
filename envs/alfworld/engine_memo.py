"""Memos for TextWorld's PDDL engine (the engine ALFWorld's games run in): the same answers,
computed once. Measured on a multi-turn PPO phase of 16 ALFWorld episodes (docs/alfworld.md,
"Speed"): TextWorld spent ~60 ms of a ~100 ms step deriving the admissible commands' text and
~0.25 s of every reset translating the same PDDL problem four times. Later, on resets of games
not played before in the process (every evaluation, most of an RL run's): ~120 of ~195 ms a
reset translated the game's problem and ~25 ms parsed its grammar.

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
FORMAT = 1  # of the memo files on disk (part of their key)


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
            return zlib.decompress(self.path(key).read_bytes())
        except (OSError, zlib.error):  # absent, or damaged (zlib checks its checksum): a miss
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


def memoize_function(module, name: str, key, kept: int, folder: str | Path | None, kind: str, package: str) -> None:
    """Replace the pure function `module.name` by its memo: results pickled (every caller gets
    fresh objects, as from a fresh call), the `kept` most recent in the process and, given a
    folder, all of them on disk under folder/kind (salted with `package`'s version). The
    original stays reachable as `.unmemoized` and is looked up at call time (tests replace it).
    Installing again only points the memo at the new folder."""
    from importlib.metadata import version

    def store():
        return None if folder is None else DiskMemo(Path(folder) / kind, version(package))

    current = getattr(module, name)
    if getattr(current, "memoized", False):
        if folder is not None:
            current.store = store()
        return
    memo = OrderedDict()

    def function(*args, **kwargs):
        return pickle.loads(memoized(lambda: function.unmemoized(*args, **kwargs), key(*args, **kwargs), memo, kept,
                                     function.store))

    function.memoized, function.memo, function.store, function.unmemoized = True, memo, store(), current
    setattr(module, name, function)


def memoize_translation(folder: str | Path | None = None) -> None:
    """Every `PddlState` translates its PDDL problem to SAS twice (plain and optimized for the
    planner), and TextWorld builds a `PddlState` both when it loads a game and when it resets
    it, so a reset translated the same problem four times. The translation is a pure function of
    (domain, problem, flags): memoized, in the process and (given a folder) on disk, so a game is
    translated once across processes (evaluations, seeds, claims). The caller's sys.argv is
    restored after a translation (fast_downward sets it to its own for its option parser)."""
    import fast_downward

    if not getattr(fast_downward.pddl2sas, "memoized", False):
        translate = fast_downward.pddl2sas

        def keeping_argv(domain: str, problem: str, verbose: bool = False, optimize=False):
            argv = sys.argv
            try:
                return translate(domain, problem, verbose=verbose, optimize=optimize)
            finally:
                sys.argv = argv

        fast_downward.pddl2sas = keeping_argv  # textworld's PddlState calls it as fast_downward.pddl2sas

    def key(domain: str, problem: str, verbose: bool = False, optimize=False):
        return (domain, problem, bool(verbose), bool(optimize))

    memoize_function(fast_downward, "pddl2sas", key, TRANSLATIONS_KEPT, folder, "translations", "fast_downward_textworld")


def memoize_grammar(folder: str | Path | None = None) -> None:
    """Loading a game builds its `GameLogic`, which parses the game's grammar file with tatsu
    (~25 ms; each game's grammar differs in its task line): memoized like the translations, so
    each load still gets its own GameLogic, actions and grammar."""
    from textworld.envs.pddl import logic

    def key(*args, **kwargs):
        return (args, tuple(sorted(kwargs.items())))

    # GameLogic.__init__ looks _parse_and_convert up in its module
    memoize_function(logic, "_parse_and_convert", key, GRAMMARS_KEPT, folder, "grammars", "textworld")


def install(folder: str | Path | None = None) -> None:
    """The memos above; `folder` keeps the translations and grammar parses across processes."""
    memoize_commands()
    memoize_translation(folder)
    memoize_grammar(folder)
