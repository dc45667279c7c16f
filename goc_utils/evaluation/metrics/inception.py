"""The FID Inception network (TensorFlow's 2015-12-05 graph) in torch, as the ADM evaluator sees it.

Why this port: the ADM evaluator feeds uint8 images to TF 1's ``ResizeBilinear`` (299 x 299,
``align_corners=False`` without half-pixel centres), scales by ``(x - 128) / 128`` and reads
``pool_3`` (2048-d), ``mixed_6/conv`` (the 1x1 branch of the fourth 17x17 block; its first 7
channels, flattened in NHWC order, are sFID's spatial features) and computes IS from ``pool_3``
times the softmax weights *without* bias. We follow torch-fidelity's ``inception-v3-compat``
rather than pytorch-fid because it reproduces that TF 1 resize exactly (pytorch-fid resizes
with half-pixel centres, which shifts every feature) and exposes the unbiased logits; the
layer structure carries TF's quirks (average pools that ignore padding, a max pool in the last
block's pool branch, batch-norm eps 1e-3).

Weights are never downloaded: pass the converted TF weights as a local file,
``weights-inception-2015-12-05-6726825d.pth`` from torch-fidelity's v0.2.0 release (pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth`` holds the same tensors under the same names and loads
too), via ``--inception-weights PATH`` or the environment variable ``GOC_INCEPTION_WEIGHTS``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from goc_utils.errors import CheckpointError
from goc_utils.files import input_file, load_torch

INCEPTION_WEIGHTS_ENV = "GOC_INCEPTION_WEIGHTS"
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
INPUT_SIZE = 299
SPATIAL_CHANNELS = 7


class Conv(nn.Module):
    """TF's conv unit: convolution without bias, batch norm (eps 1e-3), ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    """TF's 3x3 / stride-1 average pool: padded positions do not count."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class Block35(nn.Module):
    """35x35 block (TF ``mixed``, ``mixed_1``, ``mixed_2``)."""

    def __init__(self, cin: int, pool_channels: int) -> None:
        super().__init__()
        self.branch1x1 = Conv(cin, 64, 1)
        self.branch5x5_1 = Conv(cin, 48, 1)
        self.branch5x5_2 = Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2 = Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, 3, padding=1)
        self.branch_pool = Conv(cin, pool_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg_pool_3x3(x)),
            ],
            1,
        )


class Reduce35(nn.Module):
    """35x35 -> 17x17 reduction (TF ``mixed_3``)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2 = Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, 3, stride=2),
            ],
            1,
        )


class Block17(nn.Module):
    """17x17 block with factorised 7x7 convolutions (TF ``mixed_4`` .. ``mixed_7``)."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = Conv(cin, 192, 1)
        self.branch7x7_1 = Conv(cin, c7, 1)
        self.branch7x7_2 = Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = Conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = Conv(cin, c7, 1)
        self.branch7x7dbl_2 = Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = Conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4):
            double = layer(double)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                self.branch7x7dbl_5(double),
                self.branch_pool(_avg_pool_3x3(x)),
            ],
            1,
        )


class Reduce17(nn.Module):
    """17x17 -> 8x8 reduction (TF ``mixed_8``)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = Conv(cin, 192, 1)
        self.branch3x3_2 = Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = Conv(cin, 192, 1)
        self.branch7x7x3_2 = Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = Conv(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, 3, stride=2)], 1)


class Block8(nn.Module):
    """8x8 block with split 1x3 / 3x1 convolutions (TF ``mixed_9``: average pool; ``mixed_10``: max pool)."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = Conv(cin, 320, 1)
        self.branch3x3_1 = Conv(cin, 384, 1)
        self.branch3x3_2a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = Conv(cin, 448, 1)
        self.branch3x3dbl_2 = Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool_3x3(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(single),
                self.branch3x3_2b(single),
                self.branch3x3dbl_3a(double),
                self.branch3x3dbl_3b(double),
                self.branch_pool(pooled),
            ],
            1,
        )


def resize_bilinear_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF 1 ``ResizeBilinear`` (``align_corners=False``, no half-pixel centres) of ``(N, C, H, W)``.

    Output pixel ``i`` samples the input at ``i * in / out`` (top-left aligned), interpolating
    between ``floor`` and ``floor + 1`` (clamped to the last row / column).
    """

    def axis(n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = torch.arange(size, dtype=torch.float32, device=x.device) * torch.tensor(n_in / size, dtype=torch.float32)
        lo = src.floor().long()
        return lo, (lo + 1).clamp(max=n_in - 1), src - lo.float()

    (y0, y1, fy), (x0, x1, fx) = axis(x.shape[2]), axis(x.shape[3])
    top, bottom = x[:, :, y0], x[:, :, y1]
    top = top[..., x0] + (top[..., x1] - top[..., x0]) * fx
    bottom = bottom[..., x0] + (bottom[..., x1] - bottom[..., x0]) * fx
    return top + (bottom - top) * fy[:, None]


class FIDInception(nn.Module):
    """Inception-v3 of the FID / ADM evaluator.

    ``forward(uint8 (N, H, W, 1|3))`` returns ``(pool (N, 2048), spatial (N, 17*17*7), logits (N, 1008))``:
    ``pool_3``, the first 7 channels of ``mixed_6/conv`` flattened in (h, w, c) order, and the
    softmax-layer logits without bias (what the evaluator's Inception Score uses).
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = Conv(80, 192, 3)
        self.Mixed_5b = Block35(192, 32)
        self.Mixed_5c = Block35(256, 64)
        self.Mixed_5d = Block35(288, 64)
        self.Mixed_6a = Reduce35(288)
        self.Mixed_6b = Block17(768, 128)
        self.Mixed_6c = Block17(768, 160)
        self.Mixed_6d = Block17(768, 160)
        self.Mixed_6e = Block17(768, 192)
        self.Mixed_7a = Reduce17(768)
        self.Mixed_7b = Block8(1280, max_pool=False)
        self.Mixed_7c = Block8(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = images.permute(0, 3, 1, 2).float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (resize_bilinear_tf1(x, INPUT_SIZE) - 128) / 128
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        x = self.Mixed_6a(self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x))))
        x = self.Mixed_6c(self.Mixed_6b(x))
        spatial = self.Mixed_6d.branch1x1(x)[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)
        x = self.Mixed_6e(self.Mixed_6d(x))
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        pool = x.mean(dim=(2, 3))
        return pool, spatial, pool @ self.fc.weight.T


def inception_weights_path(path: str | Path | None = None) -> Path:
    """The Inception weight file from the argument or ``GOC_INCEPTION_WEIGHTS``; a one-line error if absent."""
    given = path or os.environ.get(INCEPTION_WEIGHTS_ENV)
    if not given:
        raise CheckpointError(
            f"Inception weights needed: pass --inception-weights PATH (or set {INCEPTION_WEIGHTS_ENV}) to "
            f"{INCEPTION_WEIGHTS_FILE}, downloaded once from {INCEPTION_WEIGHTS_URL}"
        )
    fix = f"download {INCEPTION_WEIGHTS_FILE} from {INCEPTION_WEIGHTS_URL}"
    return input_file(Path(given).expanduser(), "Inception weights", fix, error=CheckpointError)


def load_inception(path: str | Path | None = None, device: str | torch.device = "cpu") -> FIDInception:
    """The FID Inception with local weights (see the module docstring), in eval mode on ``device``."""
    file = inception_weights_path(path)
    state = load_torch(file, "Inception weights", "re-download it", error=CheckpointError)
    model = FIDInception()
    expected = model.state_dict()
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{str(file)!r} holds a {type(state).__name__}, not the FID Inception's weights; re-download it"
        )
    state = {k: v for k, v in state.items() if k in expected}
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    wrong = [
        k
        for k, v in state.items()
        if not isinstance(v, torch.Tensor)
        or tuple(v.shape) != tuple(expected[k].shape)
        or v.is_floating_point() != expected[k].is_floating_point()
    ]
    if missing or wrong:
        bad = (missing or wrong)[0]
        raise CheckpointError(
            f"{str(file)!r} is not the FID Inception ({len(missing)} missing, {len(wrong)} mis-shaped or mis-typed "
            f"tensors, e.g. {bad}); use {INCEPTION_WEIGHTS_FILE}"
        )
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise CheckpointError(f"{str(file)!r} holds NaN or infinite values in {bad}; re-download it")
    model.load_state_dict(state, strict=False)
    return model.eval().to(device)


def random_inception(seed: int = 0) -> FIDInception:
    """The architecture with seeded random weights (He-scaled, so features still depend on the image).

    For tests and timing only: no file, no download.
    """
    generator = torch.Generator().manual_seed(seed)
    model = FIDInception()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.5 + 0.75)
            elif tensor.dim() > 1:  # conv / linear weights
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            elif name.endswith("bn.weight"):
                tensor.fill_(1.0)
            else:  # biases and running means
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.01)
    return model.eval()


__all__ = ["FIDInception", "inception_weights_path", "load_inception", "random_inception", "resize_bilinear_tf1"]
