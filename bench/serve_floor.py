"""The floor: what Ray Serve itself costs for an HTTP request fanned out to N actors and back.

A bare Serve deployment (no FastAPI, no parsing, no encoder) reads the request body, sends a
16-byte code to each of N no-op actors, one pinned to each shard node as the real shard actors
are, waits for every answer and returns a small JSON object. Loaded exactly like the product, in
the same run and through the same proxy, its latency and throughput are the lower bound that
the product's figures are divided by: what is left above 1.0 is the product's own cost.
"""
from __future__ import annotations

import asyncio

import numpy as np
import ray
from ray import serve
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rayapp.serve import DRAIN_CHECK_S

FLOOR_APP = "neardup-floor"
FLOOR_PREFIX = "/floor"


@ray.remote(num_cpus=0, max_concurrency=16)
class NoOpShard:
    """Answers a search with no hits, at once (the shard actor's calling convention, no work)."""

    def search(self, codes: np.ndarray, k: int) -> list:
        return []


# drain checks as often as the product's replicas, so removing it is quick
@serve.deployment(name="Floor", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0},
                  graceful_shutdown_wait_loop_s=DRAIN_CHECK_S)
class FloorIngress:
    """Reads the body, fans a code out to every no-op actor, answers with an empty result."""

    def __init__(self, node_ids: list[str]):
        self.shards = [NoOpShard.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote()
                       for n in node_ids]
        self.code = np.zeros((1, 16), np.uint8)

    async def __call__(self, request) -> dict:
        await request.body()
        await asyncio.gather(*(s.search.remote(self.code, 10) for s in self.shards))
        return {"results": [], "partial": False, "missing_shards": []}


def deploy_floor(node_ids: list[str]) -> str:
    """Deploy the floor beside the running product (same Serve instance) -> its route prefix."""
    serve.run(FloorIngress.bind(node_ids), name=FLOOR_APP, route_prefix=FLOOR_PREFIX)
    return FLOOR_PREFIX


def delete_floor() -> None:
    """Remove the floor application (the product keeps running)."""
    serve.delete(FLOOR_APP)
