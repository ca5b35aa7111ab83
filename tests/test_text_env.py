"""env=text splits: test prompts fixed, validation prompts held out of train on request."""
import pytest

from envs.base import EnvConfigError, make


def test_validation_prompts_leave_train_and_keep_test_prompts():
    test = make("text", split="eval")
    same_test = make("text", split="eval", valid_fraction=0.1)
    valid = make("text", split="eval", valid_fraction=0.1, eval_on="valid")
    train = make("text", split="train", valid_fraction=0.1)
    assert same_test.prompts == test.prompts and len(test.prompts) == 144
    assert len(valid.prompts) == 58 and len(train.prompts) == 576 - 144 - 58
    assert not set(valid.prompts) & set(test.prompts) and not set(valid.prompts) & set(train.prompts)
    assert not set(train.prompts) & set(test.prompts)
    assert all(p not in set(valid.prompts) for p, _ in train.demonstrations(300, seed=0))
    assert {valid.reset(s) for s in range(200)} <= set(valid.prompts)
    assert "valid_fraction" not in make("text", split="train").fingerprint()  # earlier cache keys kept
    assert train.fingerprint() != make("text", split="train").fingerprint()


def test_bad_split_settings_name_the_choices():
    with pytest.raises(EnvConfigError, match="valid choices: test, valid"):
        make("text", split="eval", eval_on="dev", valid_fraction=0.1)
    with pytest.raises(EnvConfigError, match="valid_fraction > 0"):
        make("text", split="eval", eval_on="valid")
    with pytest.raises(EnvConfigError, match="must leave train prompts"):
        make("text", valid_fraction=0.8)
    with pytest.raises(EnvConfigError, match="valid choices: train, eval"):
        make("text", split="test")
