"""Config in parts (encoder, query, storage, serve): defaults < YAML < NEARDUP_* env < overrides,
validated in one place with clear errors, written out as only what differs from the defaults,
and files in the older layout still load."""
import pytest
import yaml

from rayapp.config import Config, QueryConfig, load_config


def test_defaults():
    cfg = load_config(env={})
    assert cfg.serve.port == 8000 and cfg.storage.num_shards == 1
    assert cfg.encoder.name  # the registry default


def test_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"serve": {"port": 9000, "token": "t"}, "storage": {"num_shards": 3}}))
    cfg = load_config(path, env={"NEARDUP_SERVE_PORT": "9100", "NEARDUP_STORAGE_INDEX_PARAMS": "{nflip: 2}"},
                      overrides={"storage": {"num_shards": 4, "index_dir": None}})
    assert cfg.serve.port == 9100          # env beats YAML
    assert cfg.serve.token == "t"          # YAML beats default
    assert cfg.storage.num_shards == 4      # override beats YAML
    assert cfg.storage.index_dir == "var/index"  # None overrides are ignored
    assert cfg.storage.index_params == {"nflip": 2}


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
    assert load_config(env={}).storage.ref_views == ["center70"]
    path = tmp_path / "c.yaml"
    path.write_text("storage: {ref_views: []}\n")
    assert load_config(path, env={}).storage.ref_views == []
    cfg = load_config(env={"NEARDUP_STORAGE_REF_VIEWS": "center70, top_left70, center70"})
    assert cfg.storage.ref_views == ["center70", "top_left70"]
    with pytest.raises(ValueError, match=r"storage.ref_views must be a list of center70.*; got \['zoom'\]"):
        load_config(env={}, overrides={"storage": {"ref_views": ["zoom"]}})


def test_an_index_of_another_model_says_it_needs_reindexing(tmp_path):
    """Codes of two deephash models are not comparable: an index made by the previous bundled
    model (its neardup.json predates the ``model`` field) or by other weights is refused with a
    clear message, while one made by the current model opens."""
    import json
    from rayapp.cluster import index_meta, model_id
    cfg = load_config(env={}, overrides={"storage": {"index_dir": str(tmp_path)}})
    meta = tmp_path / "neardup.json"
    meta.write_text(json.dumps({"encoder": "deephash", "bits": 128, "num_shards": 1}))  # an old index
    with pytest.raises(ValueError, match="re-index"):
        index_meta(cfg, 128)
    meta.write_text(json.dumps({"encoder": "deephash", "bits": 128, "num_shards": 1, "model": "deephash:0"}))
    with pytest.raises(ValueError, match="not comparable"):
        index_meta(cfg, 128)
    meta.write_text(json.dumps({"encoder": "deephash", "bits": 128, "num_shards": 1, "model": model_id(cfg)}))
    assert index_meta(cfg, 128)["model"] == model_id(cfg)


def test_a_damaged_index_metadata_file_is_reported_not_replaced(tmp_path):
    from rayapp.cluster import index_meta, known_bits, read_index_meta
    cfg = load_config(env={}, overrides={"storage": {"index_dir": str(tmp_path)}})
    assert read_index_meta(tmp_path) is None and known_bits(cfg) is None  # no index yet
    meta = tmp_path / "neardup.json"
    meta.write_text('{"encoder": "deephash", "bi')
    with pytest.raises(ValueError, match="unreadable index metadata"):
        index_meta(cfg, 128)
    assert meta.read_text() == '{"encoder": "deephash", "bi'
    assert known_bits(cfg) is None


def test_bad_values_are_named_together(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("query: {tta: sideways, flip_cost: -1, verify: many}\n"
                    "storage: {num_shards: 0, index_kind: btree, bits: 12}\n"
                    "serve: {port: 70000, default_k: 5000}\nencoder: {device: tpu}\n")
    with pytest.raises(ValueError) as err:
        load_config(path, env={})
    text = str(err.value)
    for says in ["query.tta must be one of none, flip", "got 'sideways'", "query.flip_cost must be >= 0.0; got -1",
                 "query.verify must be an integer; got 'many'", "storage.num_shards must be >= 1; got 0",
                 "storage.index_kind must be one of None, mihc", "storage.bits must be 0 (the encoder's) or a multiple of 8",
                 "serve.port must be between 0 and 65535; got 70000",
                 "serve.default_k (5000) must be <= serve.max_k (1000)", "encoder.device must be auto, cpu or cuda"]:
        assert says in text
    with pytest.raises(ValueError, match="serve.port must be an integer; got 'eighty'"):
        load_config(env={"NEARDUP_SERVE_PORT": "eighty"})
    with pytest.raises(ValueError, match="query.content must be"):
        Config(query=QueryConfig(content="sometimes")).validate()
    with pytest.raises(ValueError, match="storage.vectors must be true or false; got 1"):
        Config.from_dict({"storage": {"vectors": 1}})


def test_the_older_layout_still_loads(tmp_path):
    """Before the parts, query settings and the stored crops sat under ``encoder:`` and storage
    was ``shards:``; such files, variables and overrides give the same config."""
    path = tmp_path / "old.yaml"
    path.write_text("encoder: {name: pdq, tta: flip, verify: 0, ref_views: [], flip_cost: 2.5}\n"
                    "shards: {index_dir: /data/idx, num_shards: 3, placement: local}\n")
    with pytest.warns(DeprecationWarning, match="encoder.tta -> query.tta"):
        old = load_config(path, env={"NEARDUP_SHARDS_NAMESPACE": "ns", "NEARDUP_ENCODER_RANK": "hamming"})
    new = load_config(env={}, overrides={
        "encoder": {"name": "pdq"},
        "query": {"tta": "flip", "verify": 0, "flip_cost": 2.5, "rank": "hamming"},
        "storage": {"index_dir": "/data/idx", "num_shards": 3, "placement": "local", "ref_views": [],
                    "namespace": "ns"}})
    assert old == new
    with pytest.raises(ValueError, match="unknown config key 'zoom' in encoder"):
        load_config(env={}, overrides={"encoder": {"zoom": 1}})


def test_written_config_holds_only_what_differs_and_loads_back(tmp_path):
    assert Config().changed() == {} and Config().to_yaml() == "{}\n"
    cfg = load_config(env={}, overrides={"query": {"tta": "d4"}, "storage": {"index_dir": "/x"},
                                         "serve": {"port": 8000}})  # the default port: not written
    assert cfg.changed() == {"query": {"tta": "d4"}, "storage": {"index_dir": "/x"}}
    path = tmp_path / "out.yaml"
    path.write_text(cfg.to_yaml())
    assert yaml.safe_load(path.read_text()) == cfg.changed()
    assert load_config(path, env={}) == cfg


def test_the_example_file_shows_only_what_differs_from_the_defaults():
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "neardup.yaml"
    written = yaml.safe_load(path.read_text())
    assert written == load_config(path, env={}).changed() != {}
