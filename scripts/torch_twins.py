"""The PyTorch twin of `bench.models.cnn_small`, with the flax weights copied in: shared by the peer scripts.

Imported by scripts/peer_pgd.py and scripts/peer_autoattack.py (run from scripts/, which Python puts on
sys.path). Needs torch; `bench/` and the tests never import this file.
"""

from __future__ import annotations

import jax
import numpy as np
import torch
from torch import nn


class TorchNormalize(nn.Module):
    """(x - mean) / std per channel, as `bench.models.Normalize`, on NCHW tensors."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def torch_cnn_small(num_classes: int, mean, std) -> nn.Sequential:
    """The PyTorch twin of `bench.models.cnn_small` (Wong & Kolter 2018 MNIST net)."""
    return nn.Sequential(
        TorchNormalize(mean, std),
        nn.Conv2d(len(mean), 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100), nn.ReLU(),
        nn.Linear(100, num_classes),
    )


def copy_flax_to_torch(params: dict, net: nn.Sequential) -> None:
    """Copy cnn_small's flax parameters into `net` in place."""
    p = jax.device_get(params)
    expected = {"Conv_0", "Conv_1", "Dense_0", "Dense_1"}
    if set(p) != expected:
        raise SystemExit(f"unexpected cnn_small parameter names {sorted(p)}; expected {sorted(expected)}")
    conv0, conv1, dense0, dense1 = net[1], net[3], net[6], net[8]

    def put(tensor, array):
        array = np.array(array, dtype=np.float32, order="C")  # a writable copy for torch
        if tuple(tensor.shape) != array.shape:
            raise SystemExit(f"shape mismatch copying weights: torch {tuple(tensor.shape)} vs flax {array.shape}")
        tensor.copy_(torch.from_numpy(array))

    with torch.no_grad():
        for conv, name in ((conv0, "Conv_0"), (conv1, "Conv_1")):
            put(conv.weight, np.transpose(p[name]["kernel"], (3, 2, 0, 1)))  # HWIO -> OIHW
            put(conv.bias, p[name]["bias"])
        # flax flattens NHWC: input index (h * 7 + w) * 32 + c; torch flattens NCHW: c * 49 + h * 7 + w.
        kernel = np.asarray(p["Dense_0"]["kernel"])  # (7*7*32, 100), rows in HWC order
        kernel = kernel.reshape(7, 7, 32, -1).transpose(3, 2, 0, 1).reshape(kernel.shape[1], -1)
        put(dense0.weight, kernel)
        put(dense0.bias, p["Dense_0"]["bias"])
        put(dense1.weight, np.asarray(p["Dense_1"]["kernel"]).T)
        put(dense1.bias, p["Dense_1"]["bias"])


def to_nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def flax_cnn_small_to_torch(params: dict, num_classes: int, mean, std) -> nn.Sequential:
    """The torch cnn_small holding `params`, in eval mode."""
    net = torch_cnn_small(num_classes, mean, std)
    copy_flax_to_torch(params, net)
    return net.eval()
