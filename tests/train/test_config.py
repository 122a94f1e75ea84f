import pytest

from jaxr1.config import ConfigError, load_config


def test_defaults_and_dotted_overrides():
    cfg = load_config(None, ["rl.num_generations=4", "optim.lr=1e-6", "data.path=[a.jsonl, b.parquet]",
                             "rewards.functions=[{name: format, weight: 2}]"])
    assert cfg.rl.num_generations == 4 and cfg.optim.lr == 1e-6
    assert cfg.data.paths == ("a.jsonl", "b.parquet")
    assert cfg.rewards.functions[0].name == "format" and cfg.rewards.functions[0].weight == 2.0


@pytest.mark.parametrize("override,hint", [("rl.num_generation=3", "num_generations"), ("optm.lr=1", "optim"),
                                           ("rl.epsilon_hgh=0.28", "epsilon_high")])
def test_typo_names_the_closest_key(override, hint):
    with pytest.raises(ConfigError, match=f"did you mean '{hint}'"):
        load_config(None, [override])


def test_yaml_typo_and_bad_values(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("rl:\n  num_generatons: 8\n")
    with pytest.raises(ConfigError, match="rl.num_generatons.*num_generations"):
        load_config(str(p))
    with pytest.raises(ConfigError, match="rl.algorithm"):
        load_config(None, ["rl.algorithm=ppo"])
    with pytest.raises(ConfigError, match="expected int"):
        load_config(None, ["steps=many"])
    with pytest.raises(ConfigError, match="schema"):
        load_config(None, ["data.schema=nope"])


def test_shipped_configs_load():
    import glob
    import os
    from jaxr1.assets import DEFAULT_CONFIG
    files = glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "*.yaml")) + [DEFAULT_CONFIG]
    for f in files:
        first = open(f).readline()
        assert first.startswith("#"), f"{f}: must start with a header comment"
        load_config(f)
