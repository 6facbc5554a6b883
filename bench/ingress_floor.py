"""How far two near-empty Serve apps drift apart: the bare floor beside a FastAPI ingress.

``neardup bench serve`` divides the product's latency by a bare Serve deployment's (the floor).
The product enters through FastAPI (``serve.ingress``), the floor through a plain ``__call__``.
This benchmark puts both forms side by side with no product work at all, behind one proxy, in
one run: each reads a small JSON body and answers an empty result. What their ratio shows,
run after run, is the ingress form's own cost and the noise a ratio of single runs carries.

    python -m bench.ingress_floor --requests 400 --rounds 3 --runs 2
"""
# no ``from __future__ import annotations``: Serve pickles these classes by value, and FastAPI
# must find ``Request`` as an object in the route's signature, not as a name to look up
import argparse
import time
from pathlib import Path

import httpx
import numpy as np
import ray
from fastapi import FastAPI, Request
from ray import serve

from bench.common import RESULTS_DIR, git_revision, machine_info, today, utc_now, write_json
from bench.serve_stack import free_port

EMPTY = {"results": [], "partial": False, "missing_shards": []}
BODY = {"code": "ab" * 16, "k": 10}
WARM_UP = 50

api = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Bare:
    """The floor's form: a plain deployment that reads the body and answers."""

    async def __call__(self, request) -> dict:
        await request.body()
        return EMPTY


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Fast:
    """The product's form: a FastAPI route on a Serve ingress, doing as little."""

    @api.post("/v1/search")
    async def search(self, request: Request) -> dict:
        await request.json()
        return EMPTY


def _one_run(port: int, requests: int, rounds: int) -> dict:
    """Sequential requests to each form in turn, ``rounds`` times -> percentiles and ratios."""
    ms: dict[str, list[float]] = {"bare": [], "fastapi": []}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for _ in range(rounds):
            for name, path in (("bare", "/bare"), ("fastapi", "/fast/v1/search")):
                for i in range(WARM_UP + requests):
                    t = time.perf_counter()
                    resp = client.post(path, json=BODY)
                    if resp.status_code != 200:
                        raise RuntimeError(f"{path}: {resp.status_code} {resp.text[:200]}")
                    if i >= WARM_UP:
                        ms[name].append((time.perf_counter() - t) * 1000)
                    time.sleep(0.01)
    out = {name: {f"p{q}_ms": round(float(np.percentile(v, q)), 2) for q in (50, 95, 99)} for name, v in ms.items()}
    out["ratio_fastapi_to_bare"] = {k: round(out["fastapi"][k] / out["bare"][k], 3) for k in out["bare"]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ingress_floor", description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400, help="timed requests per form and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=2, help="independent runs, each with a fresh Ray")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out-dir", default=str(RESULTS_DIR))
    args = ap.parse_args(argv)
    runs = []
    for _ in range(args.runs):
        port = free_port()
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        try:
            serve.start(http_options={"port": port})
            serve.run(Bare.bind(), name="bare", route_prefix="/bare")
            serve.run(Fast.bind(), name="fast", route_prefix="/fast")
            runs.append(_one_run(port, args.requests, args.rounds))
            print(runs[-1])
        finally:
            serve.shutdown()
            ray.shutdown()
    result = {"benchmark": "ingress_floor", "date": utc_now(), "machine": machine_info(),
              "revision": git_revision(), "requests": args.requests, "rounds": args.rounds, "runs": runs}
    tag = f"_{args.tag}" if args.tag else ""
    print(f"wrote {write_json(Path(args.out_dir) / f'ingress_floor_{today()}{tag}.json', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
