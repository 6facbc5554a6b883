"""The encoder behind the HTTP API: decodes untrusted image bytes in threads and encodes each
request's views in one forward pass, requests batched together (``serve.batch``).

:class:`ImageEncoder` answers every image request the ingress (``rayapp.serve``) gets: a
query's views (``encoders.tta.query_variants``) and keypoints, or a stored image's code, side
vector, reference views and keypoints. It runs in one of two places (``encoder.placement``):

- ``ingress``: inside each Ingress replica, so an image query makes no Ray hop to be encoded
  and a small install runs one process fewer (the default without a GPU);
- ``replica``: as its own deployment (:class:`EncoderDeployment`), which can hold a GPU and
  scale apart from the ingress (the default when the cluster has a GPU).
"""
from __future__ import annotations

import asyncio

import numpy as np
import ray
from PIL import Image
from ray import serve

from encoders.decode import ImageDecodeError, load_image
from encoders.keypoints import extract as extract_keypoints, extract_query_views
from encoders.tta import (MIRRORED_REF_VIEWS, content_boxes, most_views, query_variants, ref_view_images,
                          searched_boxes)
from rayapp.config import Config
from rayapp.http import decode_status

CPU_ONLY_ENCODERS = frozenset({"pdq", "phash"})  # classical hashes never use a GPU
#: A request's views are one batch item, so no wait is needed to gather them; requests that
#: arrive while a forward pass runs are taken together by the next one.
BATCH_WAIT_S = 0.0


def _warm_up_jpeg() -> bytes:
    """A photo-sized JPEG (480x360: a smooth colour field with a detailed picture pasted into
    it) that takes the paths a real query takes: the JPEG decoder, ORB at full detection size,
    the pasted-photo finder and its extra views (9 in one batch), so the first real query finds
    them warm."""
    import io
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)).resize((480, 360), Image.BICUBIC)
    inner = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((240, 180), Image.BICUBIC)
    img.paste(inner, (150, 90))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


WARM_UP_IMAGE = _warm_up_jpeg()


class ImageEncoder:
    """Holds one encoder; decodes bytes in threads and encodes requests in dynamic batches.

    Must be built inside a Serve replica (``serve.batch`` reads the replica's settings).
    """

    def __init__(self, cfg: Config):
        from encoders.registry import get_encoder
        self.encoder = get_encoder(cfg.encoder.name, weights=cfg.encoder.weights,
                                   device=cfg.encoder.device, runtime=cfg.encoder.runtime)
        # cfg was validated by build_app (rayapp.config.Config.validate)
        self.tta, self.rank = cfg.query.tta, cfg.query.rank
        self.content = bool(cfg.query.content)
        self.ref_views = tuple(cfg.storage.ref_views)
        self.max_pixels = int(cfg.encoder.max_pixels)
        self.verify = int(cfg.query.verify)         # queries: keypoints to verify hits
        self.keypoints = bool(cfg.storage.keypoints)  # stored images: keypoints to keep
        # encoder.batch_size counts images per forward pass, as in ingest; a batch item here is a
        # request with all its views, so at most batch_size // (most views a query has) of them
        most = max(most_views(self.tta, self.content), 1 + len(self.ref_views))
        self.encode_stacks.set_max_batch_size(max(1, int(cfg.encoder.batch_size) // most))

    def info(self) -> dict:
        """Encoder name, bits, input size, the query-time TTA mode and ranking."""
        return {**self.encoder.info(), "tta": self.tta, "content": self.content, "rank": self.rank,
                "ref_views": list(self.ref_views), "verify": self.verify}

    async def encode_image(self, data: bytes, query: bool = False, store: bool = False) -> dict:
        """Raw image bytes -> ``{"code": uint8 array}`` or ``{"error": reason, "status": 4xx}``.

        For a query, ``"variants"`` holds the codes to search and ``"names"`` their names: the
        plain code first, then with TTA those of the flipped/rotated variants and of the photo
        inside a flat frame, if any (``encoders.tta.query_variants``); with weighted ranking (and
        an encoder that has bit confidences) ``"weights"`` holds each variant's confidences.
        With ``vector`` ranking (and an encoder that has them) ``"vectors"`` holds each variant's
        int8 side vector. To ``store`` the image, ``"vector"`` is its side vector (None without)
        and ``"views"`` maps each configured reference view to its (code, vector, keypoints: None
        but for a view that carries its own, the mirror).
        ``"keypoints"`` holds the image's packed keypoints (``encoders.keypoints``) to store it
        (``shards.keypoints``) or to verify a query's hits (``encoder.verify``), else None.
        All of a request's arrays go through the dynamic batcher as one item.
        """
        try:
            img, arrays, names, boxes = await asyncio.to_thread(self._views, data, query, store)
        except ImageDecodeError as exc:
            return {"error": str(exc), "status": decode_status(exc)}
        # keypoints (OpenCV) are found in another thread while the views are encoded (torch):
        # both release the GIL, so on two cores the query waits for the longer, not the sum
        found = asyncio.ensure_future(asyncio.to_thread(self._keypoints, img, query, store, boxes))
        parts = await self.encode_stacks(np.concatenate(arrays))
        keypoints = await found
        if not query:
            if not store:
                return {"code": parts[0][0]}
            view_kps = await asyncio.to_thread(self._view_keypoints, img) if keypoints is not None else {}
            views = {name: (code, vec, view_kps.get(name))
                     for name, (code, _, vec) in zip(names[1:], parts[1:])}
            return {"code": parts[0][0], "vector": parts[0][2], "views": views,
                    "keypoints": keypoints}
        answer = {"code": parts[0][0], "variants": [c for c, _, _ in parts], "names": names,
                  "keypoints": keypoints}
        if self.rank != "hamming" and parts[0][1] is not None:
            answer["weights"] = [w for _, w, _ in parts]
        if self.rank == "vector" and parts[0][2] is not None:
            answer["vectors"] = [v for _, _, v in parts]
        return answer

    def _views(self, data: bytes, query: bool, store: bool) -> tuple[Image.Image, list[np.ndarray], list[str], list]:
        """Decode once, then the arrays to encode and their names: the image as given, plus a
        query's views or, to store it, its reference views; and the boxes a query's crops
        searched (``encoders.tta.searched_boxes``)."""
        img = load_image(data, max_pixels=self.max_pixels)
        if query:
            found = content_boxes(img, self.content)
            return (img, *query_variants(img, self.encoder.preprocess, self.tta, self.content, found),
                    searched_boxes(found))
        extra = ref_view_images(img, self.ref_views) if store else []
        arrays = [self.encoder.preprocess(v)[None] for v in [img, *extra]]
        return img, arrays, ["original", *(self.ref_views if store else ())], []

    def _keypoints(self, img: Image.Image, query: bool, store: bool, boxes: list) -> np.ndarray | None:
        """The image's packed keypoints when wanted: a query's (as given and mirrored, then its
        searched crops', ``extract_query_views``) to verify its hits, a stored image's to keep;
        else None."""
        want = self.verify > 0 if query else store and self.keypoints
        if not want:
            return None
        return extract_query_views(img, boxes) if query else extract_keypoints(img)

    def _view_keypoints(self, img: Image.Image) -> dict[str, np.ndarray]:
        """The packed keypoints of the stored views that carry their own (the mirror), by name."""
        own = [n for n in self.ref_views if n in MIRRORED_REF_VIEWS]
        return {n: extract_keypoints(v) for n, v in zip(own, ref_view_images(img, own))}

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=BATCH_WAIT_S)
    async def encode_stacks(self, stacks: list[np.ndarray]) -> list[list[tuple]]:
        """Batched: each request's (n, ...) preprocessed uint8 arrays -> a list of (packed code,
        bit confidences or None, int8 side vector or None), one per array, in one forward pass."""
        codes, weights, vectors = await asyncio.to_thread(self.encoder.encode_vectors,
                                                          np.concatenate(stacks))
        n = len(codes)
        rows = list(zip(codes, [None] * n if weights is None else weights,
                        [None] * n if vectors is None else vectors))
        ends = np.cumsum([len(s) for s in stacks])
        return [rows[end - len(s):end] for s, end in zip(stacks, ends)]


@serve.deployment(name="Encoder", max_ongoing_requests=128)
class EncoderDeployment(ImageEncoder):
    """The encoder as its own deployment (``encoder.placement: replica``)."""


def in_ingress(cfg: Config) -> bool:
    """Whether the encoder runs inside the Ingress replica (``encoder.placement``; auto: unless
    the encoder uses a GPU, which a replica of its own holds)."""
    if cfg.encoder.placement != "auto":
        return cfg.encoder.placement == "ingress"
    return not use_gpu(cfg)


def use_gpu(cfg: Config) -> bool:
    """Whether the Encoder deployment asks Ray for a GPU (encoder.device: auto | cpu | cuda)."""
    device = (cfg.encoder.device or "auto").lower()
    if device == "cpu" or cfg.encoder.name in CPU_ONLY_ENCODERS:
        return False
    if device.startswith("cuda"):
        return True
    if ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0) >= 1
    try:
        import torch
        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False
