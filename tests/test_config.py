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


def test_reference_views_from_yaml_env_and_their_check(tmp_path):
    assert load_config(env={}).encoder.ref_views == ["center70"]
    path = tmp_path / "c.yaml"
    path.write_text("encoder: {ref_views: []}\n")
    assert load_config(path, env={}).encoder.ref_views == []
    cfg = load_config(env={"NEARDUP_ENCODER_REF_VIEWS": "center70, top_left70"})
    assert cfg.encoder.ref_views == ["center70", "top_left70"]
    with pytest.raises(ValueError, match="unknown reference view"):
        load_config(env={}, overrides={"encoder": {"ref_views": ["zoom"]}})


def test_an_index_of_another_model_says_it_needs_reindexing(tmp_path):
    """Codes of two deephash models are not comparable: an index made by the previous bundled
    model (its neardup.json predates the ``model`` field) or by other weights is refused with a
    clear message, while one made by the current model opens."""
    import json
    from rayapp.cluster import index_meta, model_id
    cfg = load_config(env={}, overrides={"shards": {"index_dir": str(tmp_path)}})
    meta = tmp_path / "neardup.json"
    meta.write_text(json.dumps({"encoder": "deephash", "bits": 128, "num_shards": 1}))  # an old index
    with pytest.raises(ValueError, match="re-index"):
        index_meta(cfg, 128)
    meta.write_text(json.dumps({"encoder": "deephash", "bits": 128, "num_shards": 1, "model": "deephash:0"}))
    with pytest.raises(ValueError, match="not comparable"):
        index_meta(cfg, 128)
    meta.write_text(json.dumps({"encoder": "deephash", "bits": 128, "num_shards": 1, "model": model_id(cfg)}))
    assert index_meta(cfg, 128)["model"] == model_id(cfg)
