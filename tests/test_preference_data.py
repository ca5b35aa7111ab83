"""Preference data: the JSONL schema and its errors, pair construction (best-vs-worst,
Curry-DPO stages), tensors; the preference oracles; the text task's teacher; DNO's annotation
and pair rules; exact win rates."""
import json
import random

import numpy as np
import pytest

from envs.preference import Features, PreferenceOracle, cycle, length_class
from envs.text.gold import gold_components
from envs.text.teacher import degenerate, teacher_response
from rlhf.algos import dno
from rlhf.preference import data as prefs
from rlhf.preference.train import list_labels, pad_lists
from rlhf.preference.winrate import win_rate


class CharTokenizer:
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def write(tmp_path, rows) -> str:
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_jsonl_pairs_and_lists_tokenize_with_eos(tmp_path):
    path = write(tmp_path, [{"prompt": "ab", "chosen": " c", "rejected": " d"},
                            {"prompt": "x", "responses": [" y", " z", " w"], "scores": [0.1, 0.9, 0.5]}])
    pair, ranked = prefs.load_jsonl(path, CharTokenizer())
    assert pair.prompt_ids == [97, 98] and pair.responses == [[32, 99, 0], [32, 100, 0]] and pair.scores == [1.0, 0.0]
    assert ranked.order() == [1, 2, 0]


@pytest.mark.parametrize("row,reason", [
    ('{"prompt": "a", "chosen": "b"', "not valid JSON"),
    ('[1, 2]', "expected a JSON object"),
    ({"prompt": "a", "chosen": "b"}, "missing key(s) ['rejected']"),
    ({"prompt": "a", "chosen": "b", "rejected": "c", "responses": ["d"]}, "a row has either the keys"),
    ({"prompt": "", "chosen": "b", "rejected": "c"}, "'prompt' must be a non-empty string"),
    ({"prompt": "a", "chosen": "b", "rejected": "b"}, "'chosen' and 'rejected' are identical"),
    ({"prompt": "a", "chosen": "b", "rejected": "c", "score": 1}, "unknown key(s) ['score']"),
    ({"prompt": "a", "responses": ["b", "c"], "scores": [1.0]}, "'responses' and 'scores' must be lists"),
    ({"prompt": "a", "responses": ["b"], "scores": [1.0]}, "a list needs at least 2 responses"),
    ({"prompt": "a", "responses": ["b", "c"], "scores": [1.0, "high"]}, "'scores' must be numbers"),
    ({"prompt": "a", "responses": ["b", 3], "scores": [1.0, 2.0]}, "response 1 must be a non-empty string"),
])
def test_jsonl_schema_errors_name_the_line_and_reason(tmp_path, row, reason):
    path = write(tmp_path, [{"prompt": "ok", "chosen": " a", "rejected": " b"}, row])
    with pytest.raises(ValueError) as err:
        prefs.load_jsonl(path, CharTokenizer())
    assert f"prefs.jsonl:2: {reason}" in str(err.value)


def test_jsonl_missing_file_and_empty_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prefs.load_jsonl(tmp_path / "nope.jsonl", CharTokenizer())
    with pytest.raises(ValueError, match="no rows"):
        prefs.load_jsonl(write(tmp_path, [""]), CharTokenizer())


def ranked(scores, prompt=(1,)):
    return prefs.RankedList(list(prompt), [[10 + i] for i in range(len(scores))], list(scores))


def test_best_vs_worst_skips_all_tied_lists():
    pairs = prefs.best_vs_worst([ranked([0.2, 0.9, 0.5]), ranked([0.3, 0.3])])
    assert len(pairs) == 1 and pairs[0].chosen == [11] and pairs[0].rejected == [10]
    assert pairs[0].gap == pytest.approx(0.7)


def test_curriculum_stages_go_easy_to_hard():
    """Sorted R1 >= R2 >= R3 >= R4: stage 1 = (R1, R4), stage 2 = (R1, R3), stage 3 = (R1, R2)."""
    stages = prefs.curriculum_stages([ranked([0.1, 0.9, 0.5, 0.7]), ranked([0.0, 1.0, 0.2, 0.4], prompt=(2,))])
    assert [len(s) for s in stages] == [2, 2, 2]
    first = stages[0]
    assert first[0].gap >= first[1].gap  # within a stage: larger gap (easier) first
    # list 1 sorted: 11 (0.9) > 13 (0.7) > 12 (0.5) > 10 (0.1); list 2: 11 (1.0) > 13 (0.4) > 12 (0.2) > 10 (0.0)
    assert [(p.chosen[0], p.rejected[0]) for p in stages[0]] == [(11, 10), (11, 10)]
    assert [(p.chosen[0], p.rejected[0]) for p in stages[1]] == [(11, 12), (11, 12)]
    assert [(p.chosen[0], p.rejected[0]) for p in stages[2]] == [(11, 13), (11, 13)]
    assert all(s[0].gap >= s[-1].gap for s in stages)
    mean_gap = [np.mean([p.gap for p in s]) for s in stages]
    assert mean_gap == sorted(mean_gap, reverse=True)


def test_collate_masks_only_response_tokens():
    ids, attention, mask = prefs.collate_sequences([[1, 2], [3]], [[4], [5, 6, 7]], pad_id=0)
    assert ids.tolist() == [[1, 2, 4, 0], [3, 5, 6, 7]]
    assert attention.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert mask.tolist() == [[0, 0, 1, 0], [0, 1, 1, 1]]


def test_lipo_labels_are_mean_pairwise_win_rates_and_lists_pad():
    assert list_labels([0.1, 0.9, 0.5]) == [0.0, 1.0, 0.5]
    assert list_labels([0.3, 0.3]) == [0.5, 0.5]
    prompts, responses, labels, valid = pad_lists([ranked([0.1, 0.9, 0.5]), ranked([0.4, 0.2])])
    assert len(prompts) == len(responses) == 6
    assert valid.tolist() == [[True, True, True], [True, True, False]]
    assert labels[1].tolist() == [1.0, 0.0, 0.0]


# --- oracles -----------------------------------------------------------------------------------

def test_length_classes_and_cycle():
    assert [length_class(" w" * n) for n in (3, 8, 9, 13, 14, 40)] == [0, 0, 1, 1, 2, 2]
    assert cycle(1, 0) == 1 and cycle(2, 1) == 1 and cycle(0, 2) == 1
    assert cycle(0, 1) == -1 and cycle(1, 1) == 0


def test_intransitive_oracle_has_a_cycle_gold_oracle_does_not():
    brief, standard, long = (Features(0.5, c) for c in range(3))
    cyclic = PreferenceOracle("intransitive")
    p = lambda o, a, b: float(o.prob([a], [b])[0, 0])  # noqa: E731
    assert p(cyclic, standard, brief) > 0.5 and p(cyclic, long, standard) > 0.5 and p(cyclic, brief, long) > 0.5
    gold = PreferenceOracle("gold")
    feats = [Features(g, c) for g, c in ((0.2, 0), (0.5, 1), (0.9, 2))]
    probs = gold.prob(feats, feats)
    assert probs[2, 1] > 0.5 and probs[1, 0] > 0.5 and probs[2, 0] > 0.5  # transitive, ordered by gold
    np.testing.assert_allclose(probs + probs.T, 1.0)
    np.testing.assert_allclose(np.diag(cyclic.prob(feats, feats)), 0.5)


def test_oracle_rejects_unknown_kind():
    with pytest.raises(ValueError, match="valid choices: gold, intransitive"):
        PreferenceOracle("majority")


# --- DNO pieces -----------------------------------------------------------------------------------

def test_build_pairs_follows_the_margin_rules():
    texts = ["a", "b", "c", "d", "teacher"]
    is_teacher = [False, False, False, False, True]
    # student 0 scores 5 (margin 1), teacher scores 6 (margin 2)
    pairs = dno.build_pairs([5, 4, 3, 5, 6], is_teacher, texts, "all")
    assert (0, 1) in pairs and (0, 2) in pairs and (3, 1) in pairs  # student positives, margin >= 1
    assert (4, 2) in pairs and (4, 1) in pairs  # teacher positive: 6 - 4 = 2 meets margin 2
    assert (4, 0) not in pairs and (4, 3) not in pairs  # 6 - 5 < 2
    assert (0, 3) not in pairs and (1, 2) not in pairs  # 5 - 5 < 1; a positive needs score >= 5
    restrictive = dno.build_pairs([5, 4, 3, 5, 6], is_teacher, texts, "restrictive")
    assert restrictive and all(is_teacher[i] and not is_teacher[j] for i, j in restrictive)
    spin = dno.build_pairs([1, 1, 1, 1, 1], is_teacher, texts, "spin")
    assert spin == [(4, 0), (4, 1), (4, 2), (4, 3)]


def test_build_pairs_teacher_margin_two_and_duplicates_dropped():
    pairs = dno.build_pairs([6, 4, 5], [True, False, False], ["t", "x", "t"], "all")
    assert (0, 1) in pairs  # 6 - 4 = 2 >= 2
    assert (0, 2) not in pairs and (2, 0) not in pairs  # identical texts never pair
    assert (2, 1) in pairs  # student 5 vs 4: margin 1


def test_annotate_ranks_by_pairwise_win_rate_and_flags_defects(monkeypatch):
    oracle = PreferenceOracle("gold")
    texts = [" the food was great.", " the food was bad.", " the food was great. the food was great."]
    # gold 0.81, 0.23, 0.66: mean win rates 0.81, 0.03, 0.60 -> 1 + round(5 w) = 5, 1, 4
    assert dno.annotate(oracle, texts) == [5, 1, 1]  # the repeated 3-gram scores 1: the defect detector
    monkeypatch.setattr(dno, "degenerate", lambda text: False)
    assert dno.annotate(oracle, texts) == [5, 1, 4]


def test_teacher_is_the_best_of_its_drafts_and_defects_are_repeated_ngrams():
    from envs.text import corpus

    prompt = "review: we stayed at the inn last week."
    drafts_rng, teacher_rng = random.Random(3), random.Random(3)
    drafts = [" " + corpus.review(drafts_rng, corpus.topic_of(prompt)) for _ in range(8)]
    teacher = teacher_response(prompt, teacher_rng)
    assert teacher in drafts
    assert gold_components(teacher)["gold"] == max(gold_components(d)["gold"] for d in drafts)
    assert drafts_rng.random() == teacher_rng.random()  # it drew exactly the 8 drafts
    assert degenerate(" the room was clean and the room was clean.")
    assert not degenerate(" the room was clean and the bed was soft.")


def test_partitions_do_not_overlap():
    from envs.text import ReviewEnv

    env = ReviewEnv("train")
    prompts = [{env.reset(s) for s in dno.partition_seeds(env, t, 40)} for t in range(3)]
    assert all(len(p) == 40 for p in prompts)
    assert not (prompts[0] & prompts[1]) and not (prompts[1] & prompts[2])


def test_carried_pairs_decay_with_age():
    history = [[prefs.Pair([1], [2], [3], 1.0)] * 100, [prefs.Pair([1], [2], [4], 1.0)] * 100]
    carried = dno.carried_pairs(history, 50, 0.3, 0.5, random.Random(0))
    assert sum(p.rejected == [4] for p in carried) == 15  # t-1: 30% of 50
    assert sum(p.rejected == [3] for p in carried) == 7  # t-2: 15% of 50


def test_win_rate_is_exact_expectation():
    oracle = PreferenceOracle("gold", gold_scale=8.0)
    a = [[Features(0.6, 1), Features(0.4, 1)]]
    b = [[Features(0.5, 1)]]
    expected = np.mean([1 / (1 + np.exp(-8 * 0.1)), 1 / (1 + np.exp(8 * 0.1))])
    assert win_rate(oracle, a, b) == pytest.approx(expected)
    assert win_rate(oracle, b, b) == pytest.approx(0.5)
