"""The pages of a dedup job (``rayapp.dedup``): its options, its plan, the worker pool and
the resumable Parquet parts.

A page is one batch of a shard's stored records (``ShardActor.records``). The plan fixes the
pages at the first run (``parts/plan.json``); a pool of :class:`DedupWorker` actors, one per
free CPU, searches them; each page writes its images and then its edges part, renamed into
place, so the edges part marks a page done and a killed job re-runs only the rest.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from tqdm import tqdm

from rayapp.config import Config

EDGE_SCHEMA = pa.schema([("a", pa.string()), ("b", pa.string()), ("confidence", pa.float64()),
                         ("distance", pa.int32()), ("rank", pa.float64()), ("variant", pa.string())])
MAX_PAGE_TRIES = 3
SUPPORT = 0.5  # 0 to 0.67 scored within 0.01 pair recall on validation (bench/dedup.py)
PLAN_KEYS = ("batch", "min_confidence", "views", "k", "radius")  # a re-run with others starts over
IMAGE_SCHEMA = pa.schema([("id", pa.string()), ("path", pa.string()), ("pixels", pa.int64())])


@dataclass
class DedupOptions:
    """How the job runs. Without a confidence curve for the encoder (PDQ, pHash, other weights)
    edges are the matches within ``radius`` bits (default: the encoder's) instead."""

    out_dir: str = "neardup-dedup"
    min_confidence: float = 0.99
    # full: each image is read again from its stored path and searched with every view of
    # /v1/search (mirrored, turned, the pasted photo, ...); stored: its stored record only
    # (code, side vector, keypoints: nothing is decoded, several times faster, fewer matches)
    views: str = "full"
    radius: int | None = None
    support: float = SUPPORT    # rayapp.groups.star_groups: an image joins through this share of a group
    k: int = 20                 # matches looked at per stored image
    batch: int = 256            # stored images per task
    timeout_s: float = 60.0     # per shard call
    report: bool = True
    per_page: int = 50          # groups per report page
    # re-read each matched pair and drop look-alikes whose aligned overlap disagrees
    # (rayapp.dedup_overlap); None: with full views only, where the files are read anyway
    overlap_check: bool | None = None
    progress: bool = True

    @property
    def checks_overlap(self) -> bool:
        return self.views == "full" if self.overlap_check is None else self.overlap_check


# ---------------------------------------------------------------- one task: a page of a shard
def _queries(page: dict, widths: dict, rank: str) -> list:
    """A page of stored records -> one QueryViews each (the image as stored: no views)."""
    from rayapp.searcher import QueryViews
    cb, vb = widths["code_bytes"], widths["vector_bytes"]
    out = []
    for rec in page["records"]:
        vec = rec[cb:cb + vb].view(np.int8)[None] if vb and rank == "vector" else None
        kp = rec[cb + vb:]
        out.append(QueryViews(rec[None, :cb], ["original"], None, vec,
                              kp if len(kp) and kp[:2].any() else None))
    return out


def _edges(ids: list[str], answers: list) -> list[dict]:
    """Each stored image's matches, itself left out, as rows of ``EDGE_SCHEMA``."""
    return [{"a": a, "b": h.id, "confidence": h.confidence, "distance": int(h.distance),
             "rank": float(h.rank), "variant": h.matched_as()}
            for a, answer in zip(ids, answers) for h in answer.hits if h.id != a]


def write_part(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    """``rows`` as a Parquet file at ``path``, renamed into place: a part exists whole or not at all."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    tmp.rename(path)


class DedupWorker:
    """A Ray actor that searches pages of stored images: it holds one router and Searcher, so
    imports, shard lookups and the calibration curve are paid once, not per page. Its router
    verifies hits in this worker (``rayapp.worker_verify``), so verification uses every core."""

    def __init__(self, cfg_dict: dict, opts_dict: dict):
        from rayapp.cluster import confidence_curves, get_shards
        from rayapp.searcher import Searcher
        from rayapp.worker_verify import WorkerVerifyingRouter
        self.cfg, self.opts = Config.from_dict(cfg_dict), DedupOptions(**opts_dict)
        self.shards = get_shards(self.cfg)
        router = WorkerVerifyingRouter(self.shards, timeout_s=self.opts.timeout_s,
                                       ref_views=len(self.cfg.storage.ref_views),
                                       ref_view_cost=self.cfg.query.ref_view_cost)
        self.searcher = Searcher(router, self.cfg.query, confidence_curves(self.cfg))
        self.calibrated = "image" in self.searcher.curves
        self.widths = ray.get(self.shards[0].widths.remote(), timeout=self.opts.timeout_s)
        self.encoder = None
        if self.opts.views == "full":
            from encoders.registry import get_encoder
            self.encoder = get_encoder(self.cfg.encoder.name, weights=self.cfg.encoder.weights, device="cpu")

    def _page_queries(self, page: dict) -> list:
        """The page's queries: each image's full views when its file can be read here (else,
        and with views=stored, its stored record)."""
        from encoders.decode import load_image
        from rayapp.searcher import encode_query
        stored = _queries(page, self.widths, self.cfg.query.rank)
        if self.encoder is None:
            return stored
        out = []
        for q, meta in zip(stored, page["metas"]):
            try:
                img = load_image(meta.get("path", ""), max_pixels=self.cfg.encoder.max_pixels)
            except (OSError, ValueError):
                out.append(q)
                continue
            # keypoints as given and mirrored (a mirrored copy verifies), where the index keeps any
            full = encode_query(self.encoder, img, self.cfg.query, keypoints=q.keypoints is not None)
            full.weights = None  # as the stored records: no bit confidences
            full.vectors = None if q.vectors is None else full.vectors
            out.append(full)
        return out

    def run_page(self, shard: int, after: int | None, part: str) -> int:
        """Search one page of shard ``shard`` (the records after key ``after``) and write its
        images and edges as Parquet parts ``part``.images / ``part``.edges; returns its images."""
        opts = self.opts
        page = ray.get(self.shards[shard].records.remote(after, opts.batch), timeout=opts.timeout_s)
        answers = self.searcher.search_many(
            self._page_queries(page), opts.k + 1,
            opts.min_confidence if self.calibrated else 0.0,
            None if self.calibrated else opts.radius) if page["ids"] else []
        if any(a.partial for a in answers):
            raise RuntimeError(f"shards {answers[0].missing} did not answer; the page will be retried")
        images = [{"id": i, "path": m.get("path"), "pixels": int(m.get("width", 0)) * int(m.get("height", 0))}
                  for i, m in zip(page["ids"], page["metas"])]
        write_part(Path(part + ".images.parquet"), images, IMAGE_SCHEMA)
        write_part(Path(part + ".edges.parquet"), _edges(page["ids"], answers), EDGE_SCHEMA)
        return len(images)  # the edges part is written last: its presence marks the page done


def plan_pages(shards: list, batch: int, timeout_s: float) -> list[dict]:
    """Every page of every shard: {"shard", "after", "name"}, from each shard's page starts."""
    pages = []
    for s, starts in enumerate(ray.get([h.page_starts.remote(batch) for h in shards], timeout=timeout_s)):
        pages += [{"shard": s, "after": a, "name": f"s{s:04d}-p{p:07d}"} for p, a in enumerate(starts)]
    return pages


def load_plan(out: Path, shards: list, opts: DedupOptions) -> list[dict]:
    """The job's pages, fixed at its first run (``parts/plan.json``) so a re-run resumes the same
    pages; a re-run with other PLAN_KEYS settings starts over."""
    plan_file = out / "parts" / "plan.json"
    if plan_file.exists():
        plan = json.loads(plan_file.read_text())
        if all(plan.get(key) == getattr(opts, key) for key in PLAN_KEYS):
            return plan["pages"]
    for old in (out / "parts").glob("*.parquet"):
        old.unlink()
    pages = plan_pages(shards, opts.batch, opts.timeout_s)
    plan_file.parent.mkdir(parents=True, exist_ok=True)
    plan_file.write_text(json.dumps({**{key: getattr(opts, key) for key in PLAN_KEYS}, "pages": pages}))
    return pages


def run_pages(cfg: Config, pages: list[dict], opts: DedupOptions, parts: Path) -> None:
    """Run the pages not done yet on a pool of DedupWorker actors, one per free cluster CPU,
    spread over the nodes; a page whose worker died or whose shards did not answer is run again."""
    todo = [p for p in pages if not (parts / f"{p['name']}.edges.parquet").exists()]
    if not todo:
        return
    # size the pool by the CPUs free now: Serve replicas or an ingest may hold the rest, and a
    # worker asking for a CPU nobody frees would wait forever
    free_cpus = ray.available_resources().get("CPU", 0)
    n = max(1, min(len(todo), int(free_cpus)))
    worker = ray.remote(DedupWorker).options(num_cpus=1 if free_cpus >= 1 else 0,
                                             scheduling_strategy="SPREAD",
                                             max_restarts=-1, max_task_retries=3)
    pool = [worker.remote(cfg.to_dict(), asdict(opts)) for _ in range(n)]
    pending: dict = {}
    with tqdm(total=len(pages), initial=len(pages) - len(todo), unit="page", desc="dedup",
              disable=not opts.progress) as bar:
        free, tries = list(pool), {}
        while todo or pending:
            while todo and free:
                p, w = todo.pop(), free.pop()
                pending[w.run_page.remote(p["shard"], p["after"], str(parts / p["name"]))] = (p, w)
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                p, w = pending.pop(ref)
                try:
                    ray.get(ref)
                    bar.update(1)
                except (RuntimeError, ray.exceptions.RayError) as exc:
                    tries[p["name"]] = tries.get(p["name"], 0) + 1
                    if tries[p["name"]] > MAX_PAGE_TRIES:
                        raise click.ClickException(f"page {p['name']} failed {MAX_PAGE_TRIES} times "
                                                   f"({exc}); re-run to resume") from None
                    todo.append(p)  # run again: its parts are written atomically
                free.append(w)
    for w in pool:
        ray.kill(w)


def read_parts(parts: Path, kind: str, schema: pa.Schema) -> pa.Table:
    files = sorted(parts.glob(f"*.{kind}.parquet"))
    return pa.concat_tables([pq.read_table(f, schema=schema) for f in files]) if files else schema.empty_table()
