"""FID: Inception features of two image sets, compared by the Fréchet distance of Gaussians.

``FID = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½)`` with ``μ``, ``Σ`` the mean and the sample
covariance (``np.cov``, ddof 1) of the features; the matrix square root is
``scipy.linalg.sqrtm``, with pytorch-fid's guards (an ``eps`` ridge when the product is singular,
imaginary parts from round-off dropped, large ones refused). Features: :mod:`.inception`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from alignguard.evaluation.inception import FIDInceptionV3


@dataclass(frozen=True)
class FeatureStats:
    """Mean ``[D]`` and covariance ``[D, D]`` of ``n`` feature vectors."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def of(cls, features: np.ndarray) -> FeatureStats:
        """Statistics of features ``[N, D]`` (``N >= 2``)."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"need features [N >= 2, D], got shape {features.shape}")
        return cls(features.mean(axis=0), np.cov(features, rowvar=False), features.shape[0])

    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        save_file({"mu": self.mu, "sigma": self.sigma, "n": np.array([self.n])}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        from safetensors.numpy import load_file

        tensors = load_file(str(path))
        if "mu" not in tensors or "sigma" not in tensors:
            raise ValueError(f"{path}: FID statistics need tensors 'mu' [D] and 'sigma' [D, D]")
        n = int(tensors["n"][0]) if "n" in tensors else 0
        return cls(tensors["mu"].astype(np.float64), tensors["sigma"].astype(np.float64), n)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (``mu`` ``[D]``, ``sigma``
    ``[D, D]``)."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"shapes differ: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}"
        )
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # A singular product (fewer images than dimensions): regularise as pytorch-fid does.
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has a large imaginary component {np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid_of_stats(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


@torch.no_grad()
def inception_features(model: FIDInceptionV3, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Features ``[N, dims]`` float32 of uint8 images ``[N, H, W, 3]`` (read as pytorch-fid reads
    image files: RGB scaled to [0, 1])."""
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(
            np.array(images[start : start + batch_size], dtype=np.uint8)
        )  # a copy: writable
        pixels = batch.to(device).permute(0, 3, 1, 2).float() / 255.0
        chunks.append(model(pixels).float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, model.dims), dtype=np.float32)


def reference_stats(path: str | Path, model: FIDInceptionV3, batch_size: int = 32) -> FeatureStats:
    """FID statistics of a reference: a ``.safetensors`` with ``mu``/``sigma``, or a directory of
    images (PNG/JPEG/WebP, read as RGB)."""
    from PIL import Image

    path = Path(path)
    if path.is_file():
        return FeatureStats.load(path)
    if not path.is_dir():
        raise FileNotFoundError(f"FID reference not found: {path}")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if len(files) < 2:
        raise ValueError(f"FID reference {path} holds {len(files)} images; need at least 2")
    features = []
    for start in range(0, len(files), batch_size):
        # Images of any size: each is resized to 299 by the network, one at a time.
        for file in files[start : start + batch_size]:
            with Image.open(file) as image:
                array = np.asarray(image.convert("RGB"))[None]
            features.append(inception_features(model, array))
    return FeatureStats.of(np.concatenate(features))
