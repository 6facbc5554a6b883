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
