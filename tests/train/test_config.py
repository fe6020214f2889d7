"""Config: YAML + dotted overrides, shorthands, and clear errors naming the key before any work."""

from __future__ import annotations

import pytest

from rlvr.errors import ConfigError
from rlvr.train.config import RunConfig, apply_override, dump_config, load_config


def test_defaults_are_valid_and_round_trip_through_yaml(tmp_path):
    cfg = load_config()
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(str(path)) == cfg


def test_overrides_parse_yaml_values_and_shorthands():
    cfg = load_config(
        None,
        [
            "train.steps=7",
            "rollout.temperature=0.7",
            "model=/some/local/dir",
            "algo.policy_loss.clip_high=0.28",
            "algo.advantage=dr_grpo",
            "algo.regularizers=[kl]",
            "algo.regularizers.0.coef=0.01",
        ],
    )
    assert cfg.train.steps == 7
    assert cfg.rollout.temperature == 0.7
    assert cfg.model.path == "/some/local/dir"
    assert cfg.algo.policy_loss.name == "ppo_clip"
    assert cfg.algo.policy_loss.kwargs == {"clip_high": 0.28}
    assert cfg.algo.advantage.name == "dr_grpo"
    assert cfg.algo.regularizers[0].name == "kl"
    assert cfg.algo.regularizers[0].kwargs == {"coef": 0.01}


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("trian.steps=3", ["trian", "did you mean 'train'"]),
        ("train.stesp=3", ["train.stesp", "did you mean 'train.steps'"]),
        ("train.steps=-1", ["train.steps", "greater than or equal to 0"]),
        ("train.steps=abc", ["train.steps", "integer"]),
        ("algo.agg_mode=mean", ["algo.agg_mode", "token-mean", "seq-mean-token-sum-norm"]),
        ("algo.advantage=nope", ["unknown advantage 'nope'", "grpo", "rloo"]),
        ("algo.policy_loss.clip_hihg=0.3", ["algo.policy_loss", "clip_hihg", "clip_high"]),
        ("task=nope", ["unknown task 'nope'", "countdown"]),
        ("rollout.group_size=0", ["rollout.group_size"]),
        ("eval.pass_k=[1,64]", ["eval.pass_k", "eval.samples"]),
        ("steps", ["key.sub=value"]),
    ],
)
def test_bad_config_fails_with_the_key_and_valid_options(override, fragments):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="presets"):
        load_config("no-such-preset")


def test_list_index_override_out_of_range():
    with pytest.raises(ConfigError, match="out of range"):
        apply_override({"algo": {"regularizers": []}}, "algo.regularizers.0.coef=1")


def test_packaged_presets_all_validate():
    from rlvr.train.config import packaged_config_names

    names = packaged_config_names()
    assert names, "no packaged presets"
    for name in names:
        assert isinstance(load_config(name), RunConfig)
