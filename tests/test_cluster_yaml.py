"""cluster.yaml passes Ray's own cluster-launcher validation and has the three node types."""
from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_validates():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(cfg))
    types = cfg["available_node_types"]
    assert types["shard"]["resources"] == {"shard": 1}
    assert types["gpu_encoder"]["resources"]["GPU"] == 1
    assert cfg["head_node_type"] in types
    assert any("pip install" in c for c in cfg["setup_commands"])


def test_serve_yaml_validates_and_names_our_deployments():
    from ray.serve.schema import ServeDeploySchema
    cfg = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "serve.yaml").read_text()))
    app = cfg.applications[0]
    assert app.import_path == "rayapp.serve:app_builder"
    names = {d.name for d in app.deployments}
    assert names == {"Ingress", "Encoder"}
    from rayapp import serve as serve_module
    built = serve_module.app_builder({"config": str(ROOT / "neardup.yaml")})
    assert built is not None  # binds only; starts nothing
    # the file's Encoder settings need the Encoder deployment, whatever GPUs are up at deploy time
    from rayapp.config import load_config
    from rayapp.encoder_deployment import in_ingress
    assert not in_ingress(load_config(ROOT / "neardup.yaml", overrides=app.args["overrides"], env={}))


def test_example_config_loads():
    from rayapp.config import load_config
    cfg = load_config(ROOT / "neardup.yaml", env={})
    assert cfg.serve.host == "0.0.0.0" and cfg.storage.placement == "auto"


def test_relative_serve_config_is_found_beside_the_project(tmp_path, monkeypatch):
    from rayapp.serve import _config_path
    monkeypatch.chdir(tmp_path)  # as under `serve deploy`: not the repository
    assert _config_path("neardup.yaml") == str(ROOT / "neardup.yaml")
    assert _config_path(None) is None
