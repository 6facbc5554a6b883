"""Config: defaults < YAML < NEARDUP_* env < overrides, with clear errors for unknown keys."""
import pytest
import yaml

from rayapp.config import Config, load_config


def test_defaults():
    cfg = load_config(env={})
    assert cfg.serve.port == 8000 and cfg.shards.num_shards == 1
    assert cfg.encoder.name  # the registry default


def test_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"serve": {"port": 9000, "token": "t"}, "shards": {"num_shards": 3}}))
    cfg = load_config(path, env={"NEARDUP_SERVE_PORT": "9100", "NEARDUP_SHARDS_INDEX_PARAMS": "{nflip: 2}"},
                      overrides={"shards": {"num_shards": 4, "index_dir": None}})
    assert cfg.serve.port == 9100          # env beats YAML
    assert cfg.serve.token == "t"          # YAML beats default
    assert cfg.shards.num_shards == 4      # override beats YAML
    assert cfg.shards.index_dir == "var/index"  # None overrides are ignored
    assert cfg.shards.index_params == {"nflip": 2}


def test_unknown_key_is_a_clear_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("serve: {prot: 1}\n")
    with pytest.raises(ValueError, match="unknown config key 'prot'"):
        load_config(path, env={})
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml", env={})


def test_round_trip():
    cfg = load_config(env={}, overrides={"serve": {"port": 1234}})
    assert Config.from_dict(cfg.to_dict()) == cfg
