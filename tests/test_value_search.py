"""Value-guided step beam search (rlhf.search) on a scripted engine and value model: expansion,
deduplication, keeping the B best by value, the answer pool, tie-breaks, the step cap."""
import pytest
import torch

from envs.math.steps import StepSplitter
from rlhf.rollout.engine import Completion
from rlhf.search import cut_at_step, value_beam_search

EOS, PAD = 0, 1


class CharTokenizer:
    """ids are character codes; 0 is EOS, 1 padding."""
    eos_token_id, pad_token_id = EOS, PAD

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids if i > 1)


def ids(text, eos=False):
    return [ord(c) for c in text] + ([EOS] if eos else [])


class ScriptedEngine:
    """Continues a prefix with the next scripted step for it (cycling per prefix)."""

    def __init__(self, script):
        self.script, self.calls, self.seen = script, [], {}

    def generate(self, prompts, sampling):
        self.calls.append(len(prompts))
        out = []
        for p in prompts:
            text = CharTokenizer().decode(p)
            options = self.script[text]
            k = self.seen.get(text, 0)
            self.seen[text] = k + 1
            step, eos = options[k % len(options)]
            out.append(Completion(ids(step, eos), [-0.1 * (k + 1)] * len(ids(step, eos)), "stop"))
        return out


class LengthValue:
    """V(text) = a table lookup by the text's last character (scripted preferences)."""

    def __init__(self, table):
        self.table = table

    def score(self, input_ids, mask):
        last = mask.sum(-1) - 1
        return torch.tensor([self.table.get(chr(int(input_ids[i, j])), 0.0) for i, j in enumerate(last)])


def test_search_keeps_the_best_valued_beams_and_answers_from_the_pool():
    script = {"Q": [("a;", False), ("b;", False), ("a;", False)],  # "a;" twice: deduplicated
              "Qa;": [("x", True)], "Qb;": [("y", True)]}
    value = LengthValue({";": 0.0, "a": 0.2, "b": 0.9, "x": 0.1, "y": 0.8})  # finished valued without EOS
    value.table.update({";": 0.5})
    engine = ScriptedEngine(script)
    chosen, stats = value_beam_search(engine, CharTokenizer(), value, [ids("Q")], StepSplitter.delimiter(";"),
                                      beams=1, max_steps=5)
    # depth 1: one sample ("a;") -> kept; depth 2: "x" + EOS finishes -> the pool
    assert CharTokenizer().decode(chosen[0].response) == "a;x" and chosen[0].finished
    engine = ScriptedEngine(script)
    chosen, stats = value_beam_search(engine, CharTokenizer(), value, [ids("Q")], StepSplitter.delimiter(";"),
                                      beams=3, max_steps=5)
    # 3 samples at depth 1 -> "a;", "b;" (deduplicated); both kept; then "a;x" (V .1) and "b;y" (V .8)
    assert CharTokenizer().decode(chosen[0].response) == "b;y"
    assert engine.calls == [3, 6]  # B samples per beam, all beams of all problems in one call
    assert stats["search/candidates"] == 2 + 2


def test_ties_break_by_log_prob_and_the_step_cap_ends_the_search():
    script = {"Q": [("a;", False), ("b;", False)], "Qa;": [("c;", False)], "Qb;": [("d;", False)],
              "Qa;c;": [("e;", False)], "Qb;d;": [("f;", False)]}
    value = LengthValue({";": 0.3})  # every prefix ties on value
    chosen, _ = value_beam_search(ScriptedEngine(script), CharTokenizer(), value, [ids("Q")],
                                  StepSplitter.delimiter(";"), beams=2, max_steps=2)
    # capped after 2 steps: unfinished beams join the pool; "a;" was sampled first (log-prob -0.1 > -0.2)
    assert CharTokenizer().decode(chosen[0].response) == "a;c;" and not chosen[0].finished


def test_cut_at_step_stops_after_the_delimiter():
    tok = CharTokenizer()
    cut, logps = cut_at_step(tok, ids("1+2=3; 3+4"), [0.0] * 10, StepSplitter.delimiter(";"))
    assert tok.decode(cut) == "1+2=3;" and len(logps) == 6
    cut, _ = cut_at_step(tok, ids("ans 7", eos=True), [0.0] * 6, StepSplitter.delimiter(";"))
    assert cut[-1] == EOS


class AnswerEngine:
    """Answers every prompt with the next of a fixed list of (text, log-prob) answers, cycling;
    records the sampling params and the allowed lists it was given."""

    def __init__(self, answers):
        self.answers, self.next, self.calls = answers, 0, []

    def generate(self, prompts, sampling, allowed=None):
        self.calls.append((len(prompts), sampling.temperature, allowed))
        out = []
        for _ in prompts:
            text, logp = self.answers[self.next % len(self.answers)]
            self.next += 1
            out.append(Completion(ids(text, eos=True), [logp] * (len(text) + 1), "stop"))
        return out


def test_value_best_of_acts_on_the_highest_valued_answer_per_prompt():
    """ValueBestOf (OREO's ALFWorld search): K answers per prompt at the search's temperature, the
    allowed lists repeated with them, each distinct answer valued once without its EOS, the best
    by value (ties: the higher log-probability) returned for each prompt."""
    from rlhf.rollout.engine import SamplingParams
    from rlhf.search import ValueBestOf

    value = LengthValue({"a": 0.1, "b": 0.7, "c": 0.7, "d": 0.3})
    engine = AnswerEngine([("a", -0.1), ("b", -0.9), ("c", -0.2), ("d", -0.1), ("a", -0.1), ("a", -0.1)])
    best = ValueBestOf(engine, value, PAD, EOS, k=3, temperature=0.7)
    out = best.generate([ids("P"), ids("Q")], SamplingParams(temperature=0.0), allowed=[["x"], ["y"]])
    assert engine.calls == [(6, 0.7, [["x"], ["x"], ["x"], ["y"], ["y"], ["y"]])]
    assert [CharTokenizer().decode(c.token_ids) for c in out] == ["c", "d"]  # P: b and c tie at 0.7, c more likely
    assert out[0].token_ids[-1] == EOS
    assert (best.turns, best.distinct) == (2, 5)  # Q's two "a" answers are valued once
    one = ValueBestOf(AnswerEngine([("a", -0.1), ("b", -0.1)]), value, PAD, EOS, k=1)
    assert [CharTokenizer().decode(c.token_ids) for c in one.generate([ids("P")], SamplingParams())] == ["a"]
    with pytest.raises(ValueError, match="decoding.k=0"):
        ValueBestOf(engine, value, PAD, EOS, k=0)
