"""The FID Inception-v3 feature extractor, as a plain torch module (no torchvision).

The architecture is the TensorFlow FID network as ported by pytorch-fid (torchvision's
Inception3 with the FID patches: average pools that ignore padding in the A, C and first E
blocks, a max pool in the last E block). Parameter names are torchvision's (``Conv2d_1a_3x3.conv
.weight``, ``Mixed_5b.branch1x1.bn.running_mean``, ...), so pytorch-fid's weights
(``pt_inception-2015-12-05``) load once converted to safetensors; ``fc.*`` and ``AuxLogits.*`` in
the file are ignored.

Input: images ``[N, 3, H, W]`` in [0, 1]; they are resized to 299x299 (bilinear, no corner
alignment) and scaled to [-1, 1] as pytorch-fid does. Output: features ``[N, dims]`` from the
block that ``dims`` names (64: first max pool, 192: second max pool, 768: before the auxiliary
classifier, 2048: the final average pool), spatially averaged when not already 1x1.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

BLOCK_BY_DIMS = {64: 0, 192: 1, 768: 2, 2048: 3}
_IGNORED_PREFIXES = ("fc.", "AuxLogits.")


class BasicConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_no_pad(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool does not count the zero padding (the FID network's behaviour).
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_no_pad(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for i in range(1, 6):
            bd = getattr(self, f"branch7x7dbl_{i}")(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg_pool_no_pad(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """``max_pool``: the FID network's last block pools with a max (the first one averages)."""

    def __init__(self, in_channels: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool_no_pad(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 features for FID (see the module docstring); eval mode, no gradients."""

    def __init__(self, dims: int = 2048) -> None:
        super().__init__()
        if dims not in BLOCK_BY_DIMS:
            raise ValueError(f"dims must be one of {sorted(BLOCK_BY_DIMS)}, got {dims}")
        self.dims = dims
        self.last_block = BLOCK_BY_DIMS[dims]
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.eval().requires_grad_(False)

    def _blocks(self) -> list[list[nn.Module]]:
        return [
            [self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3],
            [self.Conv2d_3b_1x1, self.Conv2d_4a_3x3],
            [self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, *self._mixed_6()],
            [self.Mixed_7a, self.Mixed_7b, self.Mixed_7c],
        ]

    def _mixed_6(self) -> list[nn.Module]:
        return [self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features ``[N, dims]`` of images ``[N, 3, H, W]`` in [0, 1]."""
        x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2.0 * x - 1.0
        for index, block in enumerate(self._blocks()):
            for module in block:
                x = module(x)
            if index < 2:
                x = F.max_pool2d(x, kernel_size=3, stride=2)  # maxpool1 / maxpool2
            if index == self.last_block:
                break
        if x.shape[2:] != (1, 1):
            x = F.adaptive_avg_pool2d(x, output_size=(1, 1))
        return x.flatten(1)


class InceptionWeightsError(ValueError):
    """The Inception weights file does not fit the FID network; the message names the keys."""


def check_inception_file(path: str | Path, dims: int = 2048) -> None:
    """Fail fast unless ``path`` holds every parameter and buffer of the network with its shape
    (only ``fc.*``/``AuxLogits.*`` may be extra). Reads the header only."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights not found: {path}")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in FIDInceptionV3(dims).state_dict().items()}
    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for a non-safetensors file
        raise InceptionWeightsError(f"{path} is not a safetensors file: {exc}") from None
    unused = [k for k in shapes if k not in expected and not k.startswith(_IGNORED_PREFIXES)]
    missing = [k for k in expected if k not in shapes and not k.endswith("num_batches_tracked")]
    wrong = [k for k in expected if k in shapes and shapes[k] != expected[k]]
    if missing or unused or wrong:
        raise InceptionWeightsError(
            f"{path} is not FID Inception-v3 weights: missing {missing[:3]} ({len(missing)}), "
            f"unexpected {unused[:3]} ({len(unused)}), wrong shape {wrong[:3]} ({len(wrong)})"
        )


def load_inception(path: str | Path, dims: int = 2048, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """The FID network with weights from a safetensors file (checked by :func:`check_inception_file`)."""
    from safetensors.torch import load_file

    check_inception_file(path, dims)
    model = FIDInceptionV3(dims)
    expected = model.state_dict()
    model.load_state_dict({k: v for k, v in load_file(str(path)).items() if k in expected}, strict=False)
    return model.to(device)
