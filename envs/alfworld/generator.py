"""Seeded generator of ALFWorld household games (Shridhar et al. 2021, "ALFWorld: Aligning Text
and Embodied Environments for Interactive Learning") in ALFWorld's own on-disk format
(docs spec: environments.md §3, "What works offline").

One game is a folder `<split>/<task>-<Object>-None-<Receptacle>-<room>/trial_<seed>/` holding

* `traj_data.json`: `task_type` and `pddl_params`, the only fields ALFWorld reads to write the goal;
* `initial_state.pddl`: a PDDL problem against the packaged `alfred.pddl` domain, with
  ALFRED-style object ids (`Apple|+01.00|+00.90|-02.00` mangled to `Apple_bar__plus_01_dot_00...`);
* `game.tw-pddl`: `{"pddl_domain", "grammar", "pddl_problem", "solvable"}`, the file AlfredTWEnv loads.

The splits mirror ALFWorld's `train` / `valid_seen` / `valid_unseen` folders: seen-eval games
use (task, object, receptacle) goals that also occur in training, in new rooms; unseen-eval
games use goals held out of training altogether (a seeded partition of all goals, see
`goal_split`) and rooms of a layout never used in training (`UNSEEN_ROOMS`). Every game is
played through the planner expert (fast-downward, offline) before it is written as solvable;
a game the planner cannot win is dropped and the next seed is drawn.

Everything is a function of (settings, seed); `ensure_games` caches the games in a folder keyed
by a hash of the settings, this file's source and the alfworld version.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASKS = ("pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
         "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep", "pick_two_obj_and_place")
SPLIT_DIRS = {"train": "train", "seen": "valid_seen", "unseen": "valid_unseen"}

# Rooms: receptacle type -> (min, max) instances. Kitchens carry the appliances the state-change
# tasks need (one fridge, microwave and sink each); bedrooms/living rooms carry a lamp for
# look_at_obj_in_light. "unseen" rooms appear only in the unseen-eval split.
ROOMS: dict[str, dict[str, tuple[int, int]]] = {
    "kitchen": {"CounterTop": (1, 2), "Cabinet": (2, 5), "Drawer": (1, 3), "Fridge": (1, 1), "Microwave": (1, 1),
                "SinkBasin": (1, 1), "StoveBurner": (2, 4), "DiningTable": (0, 1), "GarbageCan": (1, 1), "Shelf": (0, 2)},
    "bedroom": {"Bed": (1, 1), "Desk": (1, 1), "Drawer": (2, 4), "Dresser": (0, 1), "Shelf": (1, 3), "SideTable": (1, 2),
                "GarbageCan": (1, 1)},
    "livingroom": {"Sofa": (1, 1), "ArmChair": (0, 2), "CoffeeTable": (1, 1), "SideTable": (1, 2), "Drawer": (1, 3),
                   "Shelf": (1, 2), "Cabinet": (0, 2), "GarbageCan": (1, 1)},
}
UNSEEN_ROOMS: dict[str, dict[str, tuple[int, int]]] = {
    "kitchenette": {"CounterTop": (2, 3), "Cabinet": (4, 6), "Drawer": (3, 5), "Fridge": (1, 1), "Microwave": (1, 1),
                    "SinkBasin": (1, 1), "StoveBurner": (4, 4), "SideTable": (1, 1), "GarbageCan": (1, 1)},
    "study": {"Desk": (2, 2), "Drawer": (3, 5), "Shelf": (2, 4), "SideTable": (1, 1), "ArmChair": (1, 1),
              "Dresser": (1, 1), "GarbageCan": (1, 1)},
}
KITCHEN_TASKS = {"pick_clean_then_place_in_recep", "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep"}
OPENABLE = {"Fridge", "Cabinet", "Microwave", "Drawer", "Safe", "Box"}
APPLIANCE = {"pick_clean_then_place_in_recep": "SinkBasin", "pick_heat_then_place_in_recep": "Microwave",
             "pick_cool_then_place_in_recep": "Fridge"}
# Object types the goals use (ALFRED's state-change properties decide which tasks fit which).
TASK_OBJECTS = ("Apple", "Potato", "Tomato", "Egg", "Bread", "Lettuce", "Mug", "Cup", "Plate", "Bowl", "Pan", "Pot",
                "Spatula", "Fork", "Spoon", "Knife", "SoapBar", "DishSponge", "Book", "CellPhone", "KeyChain",
                "Pen", "Pencil", "CreditCard", "RemoteControl", "AlarmClock", "Watch", "CD", "Vase", "Newspaper",
                "Candle", "Statue", "Box", "Laptop", "Pillow", "WineBottle", "SprayBottle", "TissueBox")
LAMPS = ("DeskLamp", "FloorLamp")
LAMP_HOSTS = ("Desk", "SideTable", "Dresser", "Shelf", "CoffeeTable")
# Receptacle types the domain names as constants: they are declared in every problem.
DOMAIN_RTYPES = ("SinkBasin", "Microwave", "Fridge")
DOMAIN_OTYPES = ("Knife", "ButterKnife")


def alfworld_tables() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """ALFRED's canContain table and state-change properties, as alfworld packages them."""
    import alfworld.gen.constants as constants

    return constants.VAL_RECEPTACLE_OBJECTS, constants.VAL_ACTION_OBJECTS


@dataclass(frozen=True)
class Goal:
    task: str
    obj: str
    recep: str  # for look_at_obj_in_light: the lamp type

    def key(self) -> str:
        return f"{self.task}-{self.obj}-None-{self.recep}"


def all_goals(task_types=TASKS) -> list[Goal]:
    """Every (task, object, receptacle) goal the domain allows with the rooms above."""
    can, act = alfworld_tables()
    goals = []
    seen_rtypes = sorted({r for room in (*ROOMS.values(), *UNSEEN_ROOMS.values()) for r in room})
    for task in task_types:
        for obj in TASK_OBJECTS:
            if task == "look_at_obj_in_light":
                if any(obj in can.get(h, ()) for h in LAMP_HOSTS):
                    goals.extend(Goal(task, obj, lamp) for lamp in LAMPS)
                continue
            prop = {"pick_clean_then_place_in_recep": "Cleanable", "pick_heat_then_place_in_recep": "Heatable",
                    "pick_cool_then_place_in_recep": "Coolable"}.get(task)
            if prop and obj not in act[prop]:
                continue
            for recep in seen_rtypes:
                if obj in can.get(recep, ()) and recep != APPLIANCE.get(task):
                    goals.append(Goal(task, obj, recep))
    return goals


def goal_split(goals: list[Goal], unseen_fraction: float, split_seed: int) -> tuple[list[Goal], list[Goal]]:
    """(seen, unseen) goals: a seeded shuffle per task holds out `unseen_fraction` of each task's goals."""
    rng = random.Random(split_seed)
    seen, unseen = [], []
    for task in TASKS:
        mine = sorted((g for g in goals if g.task == task), key=Goal.key)
        rng.shuffle(mine)
        k = int(round(len(mine) * unseen_fraction)) if len(mine) > 1 else 0
        unseen += mine[:k]
        seen += mine[k:]
    return seen, unseen


def _rooms_for(goal: Goal, rooms: dict[str, dict[str, tuple[int, int]]]) -> list[str]:
    out = []
    for name, spec in rooms.items():
        if goal.task in KITCHEN_TASKS and not all(a in spec for a in ("Fridge", "Microwave", "SinkBasin")):
            continue
        if goal.task == "look_at_obj_in_light" and not any(h in spec for h in LAMP_HOSTS):
            continue
        if goal.task != "look_at_obj_in_light" and spec.get(goal.recep, (0, 0))[1] == 0:
            continue
        out.append(name)
    return out


def _coord(rng: random.Random) -> str:
    def c():
        v = rng.uniform(-3.0, 3.0)
        return f"{'+' if v >= 0 else '-'}{abs(v):05.2f}"
    return f"{c()}|{c()}|{c()}"


def mangle(text: str) -> str:
    """ALFRED ids to PDDL names, as ALFWorld writes them."""
    table = {"-": "_minus_", "|": "_bar_", "+": "_plus_", ".": "_dot_", ",": "_comma_"}
    return "".join(table.get(ch, ch) for ch in text)


@dataclass
class Scene:
    goal: Goal
    room: str
    receptacles: list[tuple[str, str]] = field(default_factory=list)  # (id, type)
    objects: list[tuple[str, str, str]] = field(default_factory=list)  # (id, type, receptacle id)


def build_scene(goal: Goal, room: str, spec: dict[str, tuple[int, int]], rng: random.Random,
                n_distractors: tuple[int, int]) -> Scene | None:
    can, _ = alfworld_tables()
    counts = {rt: rng.randint(lo, hi) for rt, (lo, hi) in spec.items()}
    if goal.task != "look_at_obj_in_light":
        counts[goal.recep] = max(1, counts.get(goal.recep, 0))
    scene = Scene(goal, room)
    for rt in sorted(counts):
        for _ in range(counts[rt]):
            rid = f"{rt}|{_coord(rng)}" if rt != "SinkBasin" else f"Sink|{_coord(rng)}|SinkBasin"
            scene.receptacles.append((rid, rt))
    if goal.task == "look_at_obj_in_light":
        hosts = [r for r in scene.receptacles if r[1] in LAMP_HOSTS]
        if not hosts:
            return None
        host = rng.choice(hosts)
        scene.objects.append((f"{goal.recep}|{_coord(rng)}", goal.recep, host[0]))

    def place(otype: str, avoid: set[str]) -> bool:
        spots = [r for r in scene.receptacles if otype in can.get(r[1], ()) and r[1] not in avoid]
        if not spots:
            return False
        scene.objects.append((f"{otype}|{_coord(rng)}", otype, rng.choice(spots)[0]))
        return True

    # The target object(s) start outside the goal receptacle type (and outside the appliance).
    avoid = {goal.recep, APPLIANCE.get(goal.task, "")}
    n_target = 2 + rng.randint(0, 1) if goal.task == "pick_two_obj_and_place" else 1 + (rng.random() < 0.3)
    for _ in range(n_target):
        if not place(goal.obj, avoid):
            return None
    others = [o for o in TASK_OBJECTS if o != goal.obj]
    for _ in range(rng.randint(*n_distractors)):
        place(rng.choice(others), set())
    return scene


def problem_pddl(scene: Scene, seed: int) -> str:
    """The PDDL problem, laid out as ALFWorld's generator writes `initial_state.pddl`."""
    import alfworld.gen.goal_library as glib

    can, act = alfworld_tables()
    goal = scene.goal
    otypes = sorted({t for _, t, _ in scene.objects} | set(DOMAIN_OTYPES))
    rtypes = sorted({t for _, t in scene.receptacles} | set(DOMAIN_RTYPES))
    locs = {rid: f"loc|{i + 1}|{(7 * i) % 11}|{i % 4}|30" for i, (rid, _) in enumerate(scene.receptacles)}
    start = "loc|0|0|0|30"
    objects = ["agent1 # agent"]
    objects += [f"{t}Type # otype" for t in otypes] + [f"{t}Type # rtype" for t in rtypes]
    objects += [f"{oid} # object" for oid, _, _ in scene.objects]
    objects += [f"{rid} # receptacle" for rid, _ in scene.receptacles]
    objects += [f"{loc} # location" for loc in sorted(set(locs.values()))] + [f"{start} # location"]
    init = [f"(atLocation agent1 {start})"]
    for rid, rt in scene.receptacles:
        init.append(f"(receptacleType {rid} {rt}Type)")
        if rt in OPENABLE:
            init.append(f"(openable {rid})")
        init.append(f"(receptacleAtLocation {rid} {locs[rid]})")
    for oid, ot, rid in scene.objects:
        init.append(f"(objectType {oid} {ot}Type)")
        init.append(f"(inReceptacle {oid} {rid})")
        init.append(f"(objectAtLocation {oid} {locs[rid]})")
        if ot in LAMPS:
            init.append(f"(toggleable {oid})")
            continue
        init.append(f"(pickupable {oid})")
        for prop, pred in (("Cleanable", "cleanable"), ("Heatable", "heatable"), ("Coolable", "coolable")):
            if ot in act[prop]:
                init.append(f"({pred} {oid})")
    for rt in rtypes:
        for ot in otypes:
            if ot in can.get(rt, ()):
                init.append(f"(canContain {rt}Type {ot}Type)")
    params = dict(obj=goal.obj, recep=goal.recep, toggle=goal.recep if goal.task == "look_at_obj_in_light" else "",
                  mrecep="")
    if goal.task == "look_at_obj_in_light":
        params["recep"] = ""
    goal_pddl = glib.gdict[goal.task]["pddl"].format(**params)
    nl = "\n        "
    text = (f"\n(define (problem plan_trial_{seed})\n    (:domain alfred)\n"
            f"    (:objects\n        {nl.join(mangle(x) for x in objects)}\n        )\n"
            f"    (:init\n        {nl.join(mangle(x) for x in init)}\n        )\n")
    return text.replace(" # ", " - ") + goal_pddl.replace("#", "-")


def traj_data(goal: Goal) -> dict[str, Any]:
    look = goal.task == "look_at_obj_in_light"
    return {"task_type": goal.task,
            "pddl_params": {"object_target": goal.obj, "parent_target": "" if look else goal.recep,
                            "toggle_target": goal.recep if look else "", "mrecep_target": "", "object_sliced": False}}


def game_data(goal: Goal, problem: str, seed: int) -> dict[str, Any]:
    """The `game.tw-pddl` JSON (solvable is set after the planner check)."""
    import alfworld
    from alfworld.agents.utils.misc import add_task_to_grammar

    data = Path(alfworld.__file__).parent / "data"
    state = random.getstate()  # ALFWorld draws the goal template from the global `random`
    try:
        random.seed(seed)
        grammar = add_task_to_grammar((data / "alfred.twl2").read_text(), traj_data(goal))
    finally:
        random.setstate(state)
    return {"pddl_domain": (data / "alfred.pddl").read_text(), "grammar": grammar, "pddl_problem": problem,
            "solvable": False}


def memoize_textgen() -> None:
    """TextWorld's PDDL engine re-parses the same grammar templates (with tatsu) for every
    admissible command at every step. Memoizing the parse (kept pickled, so every call still
    gets fresh symbols to attach its context to) gives byte-identical games 2.5x faster:
    0.217 -> 0.085 s per expert step, measured on loaded cores."""
    import pickle

    import textworld.envs.pddl.textgen as textgen

    if getattr(textgen._parse_and_convert, "memoized", False):
        return
    parse, memo = textgen._parse_and_convert, {}

    def parse_and_convert(text, rule_name="symbols", trace=False):
        key = (text, rule_name, trace)
        if key not in memo:
            memo[key] = pickle.dumps(parse(text, rule_name=rule_name, trace=trace))
        return pickle.loads(memo[key])

    parse_and_convert.memoized = True
    textgen._parse_and_convert = parse_and_convert


def planner_plan(gamefile: str | Path, max_steps: int = 100) -> list[str] | None:
    """Play the game with ALFWorld's planner expert (AlfredExpert, type planner: fast-downward on
    the game's full PDDL state, so it goes straight to the hidden object): the commands that won,
    or None when the planner finds no plan or does not win within max_steps. The type is passed by
    keyword: `AlfredExpert("planner")` binds the string to the wrapper's `env` argument and leaves
    the type at its default, handcoded (see `alfred_expert_by_keyword` in the adapter)."""
    import textworld
    import textworld.gym
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredExpert, AlfredInfos

    memoize_textgen()
    infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile", "expert_plan"])
    env_id = textworld.gym.register_game(str(gamefile), infos, max_episode_steps=max_steps, asynchronous=False,
                                         wrappers=[AlfredDemangler(), AlfredInfos, AlfredExpert(expert_type="planner")])
    env = textworld.gym.make(env_id)
    try:
        _, info = env.reset()
        done, actions = False, []
        while not done and len(actions) < max_steps:
            plan = info.get("extra.expert_plan") or []
            if not plan:
                return None
            actions.append(plan[0])
            _, _, done, info = env.step(plan[0])
        return actions if info.get("won") else None
    except Exception:  # noqa: BLE001 - fast-downward/textworld raise many kinds on a bad problem
        return None
    finally:
        env.close()


@dataclass(frozen=True)
class GenSettings:
    num_train: int = 100
    num_seen: int = 20
    num_unseen: int = 20
    task_types: tuple[str, ...] = ("pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
                                   "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep",
                                   "pick_two_obj_and_place")
    unseen_fraction: float = 0.2
    distractors: tuple[int, int] = (4, 10)
    seed: int = 0
    plan_budget: int = 40  # a game is kept only if the planner expert wins it within this many steps

    def as_dict(self) -> dict[str, Any]:
        return {"num_train": self.num_train, "num_seen": self.num_seen, "num_unseen": self.num_unseen,
                "task_types": list(self.task_types), "unseen_fraction": self.unseen_fraction,
                "distractors": list(self.distractors), "seed": self.seed,
                "plan_budget": self.plan_budget}


def settings_key(settings: GenSettings) -> str:
    import alfworld

    blob = json.dumps({"settings": settings.as_dict(), "source": Path(__file__).read_text(),
                       "alfworld": getattr(alfworld, "__version__", "?")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def generate_split(root: Path, split: str, n: int, goals: list[Goal], rooms: dict, settings: GenSettings,
                   check: bool = True) -> list[Path]:
    """Write n solvable games of one split under root/<ALFWorld split folder>/."""
    base = {"train": 0, "seen": 1, "unseen": 2}[split]
    out_dir = root / SPLIT_DIRS[split]
    written: list[Path] = []
    by_task = {t: [g for g in goals if g.task == t] for t in settings.task_types}
    tasks = [t for t in settings.task_types if by_task[t]]
    attempt, start = 0, time.time()
    while len(written) < n:
        if attempt > 20 * n + 50:
            raise RuntimeError(f"alfworld generator: only {len(written)}/{n} solvable {split} games")
        seed = (settings.seed * 1_000_003 + base) * 1_000_003 + attempt
        attempt += 1
        rng = random.Random(seed)
        goal = rng.choice(by_task[tasks[len(written) % len(tasks)]])
        names = _rooms_for(goal, rooms)
        if not names:
            continue
        room = rng.choice(names)
        scene = build_scene(goal, room, rooms[room], rng, settings.distractors)
        if scene is None:
            continue
        game_dir = out_dir / f"{goal.key()}-{room}" / f"trial_{seed:020d}"
        game_dir.mkdir(parents=True, exist_ok=True)
        problem = problem_pddl(scene, seed)
        data = game_data(goal, problem, seed)
        (game_dir / "initial_state.pddl").write_text(problem)
        (game_dir / "traj_data.json").write_text(json.dumps(traj_data(goal), indent=2))
        gamefile = game_dir / "game.tw-pddl"
        gamefile.write_text(json.dumps(data))
        plan = planner_plan(gamefile, settings.plan_budget) if check else []
        if plan is None:
            shutil.rmtree(game_dir)
            continue
        data["solvable"] = True
        gamefile.write_text(json.dumps(data))
        (game_dir / "expert_plan.json").write_text(json.dumps(plan))
        written.append(gamefile)
        if len(written) % 10 == 0 or len(written) == n:
            print(f"[alfworld] {split}: {len(written)}/{n} games ({time.time() - start:.0f}s)", flush=True)
    return written


def generate(root: str | Path, settings: GenSettings) -> dict[str, list[Path]]:
    root = Path(root)
    goals = all_goals(settings.task_types)
    seen, unseen = goal_split(goals, settings.unseen_fraction, settings.seed)
    out = {"train": generate_split(root, "train", settings.num_train, seen, ROOMS, settings),
           "seen": generate_split(root, "seen", settings.num_seen, seen, ROOMS, settings),
           "unseen": generate_split(root, "unseen", settings.num_unseen, unseen, UNSEEN_ROOMS, settings)}
    return out


def ensure_games(cache_dir: str | Path, settings: GenSettings) -> Path:
    """The cached game folder for these settings (generated on first use, atomically)."""
    final = Path(cache_dir).expanduser().resolve() / "games" / settings_key(settings)
    if (final / "DONE").exists():
        return final
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    total = settings.num_train + settings.num_seen + settings.num_unseen
    print(f"[alfworld] generating {total} games in ALFWorld's format, each checked by the planner "
          f"(~2 s a game, once) -> {final}", flush=True)
    generate(tmp, settings)
    (tmp / "settings.json").write_text(json.dumps(settings.as_dict(), indent=2))
    (tmp / "DONE").write_text("ok\n")
    try:
        tmp.rename(final)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return final
