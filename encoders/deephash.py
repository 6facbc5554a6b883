"""The ``deephash`` encoder: a dual-branch CNN that maps an image to a 64/128/256-bit code.

Global branch: GeM pooling of the backbone's last feature map (whole-image appearance).
Local branch: attention-weighted pooling of projected local features (survives crops and
overlays because the attention can ignore pasted content and missing regions).
Both are L2-normalised, concatenated and fed to a hash head; ``tanh`` relaxes the sign
during training, ``sign`` gives the bits at inference (packed MSB-first like every encoder).

Weights are one safetensors file whose header metadata holds everything needed to rebuild
the network (backbone, bits, input size, version), so a file path is all a user needs.
"""
from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from encoders.base import RUNTIMES, pack_bits
from encoders.deephash_outputs import DeepHashOutputs, build_options
from encoders.tta import check_mode
from encoders.weights_files import (DEFAULT_BACKBONE, DEFAULT_BITS, FORMAT, LEGACY_MODEL_ID,  # noqa: F401
                                    WEIGHTS_DIR, bundled_weights, deephash_metadata, model_id)

DEFAULT_INPUT_SIZE = 128
FORMAT_VERSION = "1"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# How pixels become network input. ``imagenet``: fixed per-channel mean/std (format 1 weights).
# ``instance``: each image minus its own mean, over its own standard deviation (all channels
# together), so any affine change of intensity (a fade toward white or black, brightness,
# PIL-style contrast) leaves the input, and so the code, unchanged up to clipping. The two are
# measured on the image's central half (each side's middle 50%), so the black corners of a
# rotation, a border or a caption band do not rescale the photo itself.
INPUT_NORMS = ("imagenet", "instance")
DEFAULT_INPUT_NORM = "instance"


# ---------------------------------------------------------------- backbones
def _mobilenet(ctor: Callable, channels: int) -> Callable[[], tuple[nn.Module, int]]:
    return lambda: (ctor(weights=None).features, channels)


def _resnet(ctor: Callable, channels: int) -> Callable[[], tuple[nn.Module, int]]:
    def build() -> tuple[nn.Module, int]:
        m = ctor(weights=None, zero_init_residual=True)
        return nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4), channels
    return build


def _efficientnet_b0() -> tuple[nn.Module, int]:
    from torchvision.models import efficientnet_b0
    return efficientnet_b0(weights=None).features, 1280


class Backbone(Enum):
    """Named feature extractors (torchvision, no pretrained download). ``build()`` -> (module, channels)."""

    resnet50 = "resnet50"
    resnet18 = "resnet18"
    mobilenet_v3_small = "mobilenet_v3_small"
    mobilenet_v3_large = "mobilenet_v3_large"
    efficientnet_b0 = "efficientnet_b0"

    def build(self) -> tuple[nn.Module, int]:
        from torchvision import models
        table = {
            "resnet50": _resnet(models.resnet50, 2048),
            "resnet18": _resnet(models.resnet18, 512),
            "mobilenet_v3_small": _mobilenet(models.mobilenet_v3_small, 576),
            "mobilenet_v3_large": _mobilenet(models.mobilenet_v3_large, 960),
            "efficientnet_b0": _efficientnet_b0,
        }
        return table[self.value]()

    @classmethod
    def parse(cls, name: str | "Backbone") -> "Backbone":
        if isinstance(name, Backbone):
            return name
        try:
            return cls(name)
        except ValueError:
            raise ValueError(f"unknown backbone {name!r}; choose from {[b.value for b in cls]}") from None


# ---------------------------------------------------------------- model
class GeM(nn.Module):
    """Generalised-mean pooling with a learnable exponent p (p=1 mean, p→∞ max)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(1.0, 8.0)
        return x.float().clamp(min=self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class AttentionPool(nn.Module):
    """Local branch: 1x1-projected local features pooled with learned non-negative attention."""

    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, 1)
        self.attn = nn.Sequential(nn.Conv2d(channels, dim // 2, 1), nn.ReLU(inplace=True), nn.Conv2d(dim // 2, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = F.normalize(self.proj(x).float(), dim=1)
        w = F.softplus(self.attn(x).float())  # (B,1,H,W) ≥ 0
        return (local * w).sum(dim=(2, 3)) / w.sum(dim=(2, 3)).clamp(min=1e-6)


class DeepHashNet(nn.Module):
    """Backbone -> (GeM global ⊕ attention local) -> MLP -> ``bits`` hash logits."""

    def __init__(self, backbone: str | Backbone = DEFAULT_BACKBONE, bits: int = DEFAULT_BITS,
                 local_dim: int = 256, hidden: int = 512, gem_p: float = 3.0,
                 input_norm: str = DEFAULT_INPUT_NORM):
        super().__init__()
        if bits <= 0 or bits % 8:
            raise ValueError(f"bits must be a positive multiple of 8, got {bits}")
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
        self.input_norm = input_norm
        self.register_buffer("pixel_mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(STD).view(1, 3, 1, 1) * 255, persistent=False)
        self.backbone_name = Backbone.parse(backbone).value
        self.bits = bits
        self.backbone, channels = Backbone.parse(backbone).build()
        self.gem = GeM(gem_p)
        self.local = AttentionPool(channels, local_dim)
        self.head = nn.Sequential(
            nn.Linear(channels + local_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, bits), nn.BatchNorm1d(bits),
        )
        self.config = {"backbone": self.backbone_name, "bits": bits, "local_dim": local_dim,
                       "hidden": hidden, "input_norm": input_norm}

    def prepare(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 or float pixels (n, H, W, 3) in 0..255 -> normalised float input (n, 3, H, W)."""
        x = pixels.permute(0, 3, 1, 2).float()
        if self.input_norm == "imagenet":
            return (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[2:]
        centre = x[:, :, h // 4: h - h // 4, w // 4: w - w // 4]  # where borders, fill and UI rarely reach
        mean = centre.mean(dim=(1, 2, 3), keepdim=True)
        std = centre.std(dim=(1, 2, 3), keepdim=True).clamp(min=2.0)  # a flat image stays flat, not noise
        return (x - mean) / std

    def descriptor(self, x: torch.Tensor) -> torch.Tensor:
        """Fused float descriptor (before the hash head)."""
        fmap = self.backbone(x)
        g = F.normalize(self.gem(fmap), dim=1)
        loc = F.normalize(self.local(fmap), dim=1)
        return torch.cat([g, loc], dim=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Hash pre-activations h (sign(h) are the bits)."""
        return self.head(self.descriptor(x).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """tanh(h): the relaxed codes used by the training losses."""
        return torch.tanh(self.logits(x))

    @torch.inference_mode()
    def codes(self, x: torch.Tensor) -> np.ndarray:
        """Packed binary codes uint8 (n, bits // 8) for a normalised float batch."""
        return pack_bits((self.logits(x) > 0).cpu().numpy())


# ---------------------------------------------------------------- weights I/O
def save_weights(model: DeepHashNet, path: str | Path, input_size: int = DEFAULT_INPUT_SIZE,
                 extra: dict | None = None, half: bool = False) -> Path:
    """Write a self-describing safetensors file (config in the header metadata)."""
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    meta = {**{k: str(v) for k, v in model.config.items()}, "input_size": str(input_size),
            "format": FORMAT, "version": FORMAT_VERSION}
    if extra:
        meta["extra"] = json.dumps(extra, sort_keys=True)
    save_file(state, str(path), metadata=meta)
    return path


def read_metadata(path: str | Path) -> dict:
    """Header metadata of a deephash weights file; raises ValueError if it is not one."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
    return deephash_metadata(meta, path)


def load_model(path: str | Path) -> tuple[DeepHashNet, dict]:
    """Rebuild the network from a weights file alone; returns (model in eval mode, metadata)."""
    from safetensors.torch import load_file
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"deephash weights not found: {path}")
    meta = read_metadata(path)
    model = DeepHashNet(meta["backbone"], int(meta["bits"]), int(meta.get("local_dim", 256)),
                        int(meta.get("hidden", 512)), input_norm=meta.get("input_norm", "imagenet"))
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    model.load_state_dict(state)
    return model.eval(), meta


# ---------------------------------------------------------------- encoder
def _runtime(runtime: str, device: torch.device) -> str:
    from encoders import onnx_cpu
    if runtime == "torch" or device.type != "cpu":
        if runtime == "onnx":
            raise ValueError(f"runtime onnx runs on CPU only, not on {device}")
        return "torch"
    if onnx_cpu.available():
        return "onnx"
    if runtime == "onnx":
        raise ValueError("runtime onnx needs the onnxruntime and onnx packages")
    return "torch"


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class DeepHashEncoder(DeepHashOutputs):
    """Encoder wrapper: uint8 batches -> normalised tensors -> model -> sign -> packed codes."""

    def __init__(self, model: DeepHashNet, input_size: int = DEFAULT_INPUT_SIZE, device: str = "auto",
                 tta: str = "none", batch_size: int = 64, weights_path: str | None = None,
                 side_hash: bool = True, runtime: str = "torch"):
        check_mode(tta)
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
        self.side_hash = bool(side_hash)
        self.device = _device(device)
        self.runtime = _runtime(runtime, self.device)
        self._onnx = None  # exported on first use, so a build for info() costs nothing
        self.model = model.eval().to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.bits = model.bits
        self.input_size = int(input_size)
        self.tta = tta
        self.batch_size = batch_size
        self.weights_path = weights_path

    def _to_tensor(self, batch: np.ndarray) -> torch.Tensor:
        x = self.model.prepare(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device))
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else x.contiguous()

    @torch.inference_mode()
    def _logits(self, batch: np.ndarray) -> np.ndarray:
        if self.runtime == "onnx":
            if self._onnx is None:
                self._onnx = self._export_onnx()
            return self._onnx(batch) if len(batch) else np.zeros((0, self.bits), np.float32)
        out = []
        for i in range(0, len(batch), self.batch_size):
            x = self._to_tensor(batch[i:i + self.batch_size])
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    h = self.model.logits(x)
            else:
                h = self.model.logits(x)
            out.append(h.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.bits), np.float32)

    def _export_onnx(self):
        """The ONNX program of this model, cached on disk for later processes when it came from a
        weights file (``encoders.deephash_onnx`` runs it without torch)."""
        from encoders.onnx_cpu import OnnxLogits, save_program
        run = OnnxLogits(self.model, self.input_size)
        if self.weights_path is not None:
            save_program(run.program, model_id(self.weights_path), self.input_size)
        return run

    def info(self) -> dict:
        return {**super().info(), "backbone": self.model.backbone_name, "tta": self.tta,
                "device": str(self.device), "runtime": self.runtime, "weights": self.weights_path}


def build_deephash(weights: str | Path | None = None, backbone: str | None = None, bits: int | None = None,
                   device: str = "auto", tta: str = "none", runtime: str = "auto",
                   **kwargs) -> DeepHashEncoder:
    """Load deephash from ``weights`` (a local safetensors path) or the bundled file;
    ``side_hash=0`` leaves the DCT hash out of its side vectors; ``runtime`` (``RUNTIMES``)
    picks eager PyTorch or ONNX Runtime on CPU."""
    path = Path(weights) if weights is not None else bundled_weights(backbone, bits)
    model, meta = load_model(path)
    if backbone is not None and Backbone.parse(backbone).value != meta["backbone"]:
        raise ValueError(f"{path} holds backbone {meta['backbone']}, not {backbone}")
    if bits is not None and int(bits) != int(meta["bits"]):
        raise ValueError(f"{path} holds {meta['bits']}-bit codes, not {bits}")
    return DeepHashEncoder(model, int(meta["input_size"]), device=device, tta=tta, weights_path=str(path),
                           runtime=runtime, **build_options(kwargs))
