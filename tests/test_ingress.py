"""Where HTTP enters (rayapp.ingress): the decision and the environment Serve reads. The served
path itself runs end to end in test_cli (``neardup serve`` with its embedded Ray: direct) and
test_serve_http (a Ray already running: the proxy)."""
from __future__ import annotations

import os
import socket

import pytest

from rayapp import ingress
from rayapp.config import load_config
from tests.helpers_net import free_port


@pytest.fixture
def clean_env(monkeypatch):
    """No direct-ingress setting before the test, and none left after it: a Ray started later in
    this process would otherwise inherit it."""
    for name in (ingress.ENABLE, ingress.MIN_PORT, ingress.MAX_PORT, ingress.DRAIN, "RAY_ADDRESS"):
        monkeypatch.setenv(name, "")  # records the value to restore, then
        monkeypatch.delenv(name)      # starts the test without it
    monkeypatch.setattr(ingress.ray, "is_initialized", lambda: False)  # as in a fresh CLI process
    yield


def _cfg(port: int, **serve):
    return load_config(overrides={"serve": {"port": port, **serve}, "encoder": {"device": "cpu"}})


def test_auto_is_direct_for_an_embedded_ray_with_one_replica(clean_env):
    port = free_port()
    assert ingress.prepare(_cfg(port)) is True
    assert os.environ[ingress.ENABLE] == "1"
    assert (os.environ[ingress.MIN_PORT], os.environ[ingress.MAX_PORT]) == (str(port), str(port + 1))
    assert ingress.mode() == "direct"
    assert ingress.proxy_port(_cfg(port), direct=True) >= port + 100


@pytest.mark.parametrize("why", ["address", "replicas", "proxy"])
def test_auto_keeps_the_proxy_where_direct_would_change_who_answers(clean_env, why):
    port = free_port()
    if why == "address":  # a cluster started elsewhere: its processes never read this environment
        assert ingress.prepare(_cfg(port), address="auto") is False
    elif why == "replicas":  # each replica would listen on a port of its own
        cfg = load_config(overrides={"serve": {"port": port},
                                     "encoder": {"device": "cpu", "num_replicas": 2}})
        assert ingress.prepare(cfg) is False
    else:
        assert ingress.prepare(_cfg(port, ingress="proxy")) is False
    assert ingress.ENABLE not in os.environ and ingress.mode() == "proxy"
    assert ingress.proxy_port(_cfg(port), direct=False) == port


def test_a_port_in_use_is_refused_by_number(clean_env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"cannot serve on 127.0.0.1:{port}"):
            ingress.prepare(_cfg(port))
    assert ingress.ENABLE not in os.environ


def test_direct_on_a_cluster_started_elsewhere_needs_its_environment(clean_env, monkeypatch):
    port = free_port()
    with pytest.raises(RuntimeError, match=f"{ingress.MIN_PORT}={port}"):
        ingress.prepare(_cfg(port, ingress="direct"), address="auto")
    monkeypatch.setenv(ingress.ENABLE, "1")
    monkeypatch.setenv(ingress.MIN_PORT, str(port))
    assert ingress.prepare(_cfg(port, ingress="direct"), address="auto") is True
    assert ingress.prepare(_cfg(port), address="auto") is True  # auto follows the cluster's setting


def test_the_config_rejects_an_unknown_ingress():
    with pytest.raises(ValueError, match="ingress"):
        _cfg(8000, ingress="haproxy").validate()
