"""Reconstruction quality: PSNR and SSIM between videos.

SSIM follows Wang et al. 2004 ("Image quality assessment: from error visibility to structural
similarity"): 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, computed per frame on
each RGB channel and averaged. Both metrics take pixel values in [0, 255] (uint8 frames) or in
[-1, 1] (model tensors, via ``data_range=2``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def psnr(reference: Tensor, test: Tensor, data_range: float = 255.0) -> Tensor:
    """Peak signal-to-noise ratio in dB over all elements.

    Args:
        reference, test: same shape, any layout, float or uint8.
        data_range: max - min of the value range (255 for uint8, 2 for [-1, 1]).

    Returns:
        float64 scalar; +inf when the inputs are identical.
    """
    mse = (reference.double() - test.double()).square().mean()
    if mse == 0:
        return torch.tensor(math.inf, dtype=torch.float64)
    return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_per_frame(reference: Tensor, test: Tensor, data_range: float = 255.0) -> Tensor:
    """Mean SSIM of each frame.

    Args:
        reference, test: frames (T, H, W, 3) (uint8 or float), same shape; H, W >= 11.
        data_range: as in `psnr`.

    Returns:
        (T,) float64 SSIM values in [-1, 1].
    """
    # (T, H, W, C) -> (T*C, 1, H, W): every channel of every frame is one image
    x = reference.double().permute(0, 3, 1, 2).reshape(-1, 1, *reference.shape[1:3])
    y = test.double().permute(0, 3, 1, 2).reshape(-1, 1, *test.shape[1:3])
    ssim_map = _ssim_map(x, y, data_range)
    channels = reference.shape[-1]
    return ssim_map.mean(dim=(1, 2, 3)).view(-1, channels).mean(1)


def _ssim_map(x: Tensor, y: Tensor, data_range: float) -> Tensor:
    """SSIM map of images (N, 1, H, W) in their own dtype: (N, 1, H - 10, W - 10)."""
    g = _gaussian_window().to(x)
    kernel_h, kernel_w = g.view(1, 1, -1, 1), g.view(1, 1, 1, -1)

    def blur(a: Tensor) -> Tensor:  # separable Gaussian, 'valid' borders as in the paper
        return F.conv2d(F.conv2d(a, kernel_h), kernel_w)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )


def ssim_loss(reference: Tensor, test: Tensor) -> Tensor:
    """1 - mean SSIM of two videos (B, C, T, H, W) in [-1, 1], differentiable, float32.

    The training loss term: every channel of every frame is one image, as in `ssim_per_frame`.
    """
    x = reference.float().movedim(1, 2).reshape(-1, 1, *reference.shape[3:])
    y = test.float().movedim(1, 2).reshape(-1, 1, *test.shape[3:])
    return 1.0 - _ssim_map(x, y, 2.0).mean()


def seam_loss(reference: Tensor, test: Tensor, period: int) -> Tensor:
    """Mean absolute error of the neighbour differences that cross a block boundary.

    Args:
        reference, test: videos (B, C, T, H, W) in [-1, 1].
        period: block side in pixels; the boundaries lie between pixels ``k * period - 1``
            and ``k * period`` of each row and column, as in a tokenizer whose ``period x
            period`` blocks start at the clip's corner.

    Returns:
        float32 scalar, differentiable: ``|dx(test) - dx(reference)|`` over the boundary
        columns and the same for rows, averaged over both. A block grid is a step of a few
        levels at exactly these places, which pixel losses spread over all pixels barely see.
    """
    error = test.float() - reference.float()  # the difference of two steps is the error's step
    columns = error[..., period::period] - error[..., period - 1 : -1 : period]
    rows = error[..., period::period, :] - error[..., period - 1 : -1 : period, :]
    return (columns.abs().mean() + rows.abs().mean()) / 2


def temporal_loss(reference: Tensor, test: Tensor, period: int = 0) -> Tensor:
    """Mean absolute error of the frame-to-frame changes of two videos (B, C, T, H, W).

    Args:
        period: 0 = every pair of neighbouring frames; ``tau`` > 0 = only the changes into the
            first frame of a causal temporal group of ``tau`` frames (frame ``tau*k`` ->
            ``tau*k+1``), where a tokenizer's flicker sits.
    Returns:
        float32 scalar, differentiable: ``|dt(test) - dt(reference)|``, 0 for one-frame clips
        (or clips with no group boundary). A reconstruction that changes where the source does
        not (flicker at temporal group boundaries, a doubled moving edge) pays here even when
        each frame alone is close.
    """
    error = test.float() - reference.float()  # dt(test) - dt(reference) is dt(error)
    change = error[:, :, 1:] - error[:, :, :-1]  # (B, C, T-1, H, W); pair t is frame t -> t+1
    if period > 0:
        change = change[:, :, ::period]  # pairs tau*k -> tau*k+1
    if change.shape[2] == 0:
        return test.float().sum() * 0.0
    return change.abs().mean()


def psnr_per_frame(reference: Tensor, test: Tensor, data_range: float = 255.0) -> Tensor:
    """(T,) float64 PSNR of each frame of (T, H, W, C) inputs."""
    mse = (reference.double() - test.double()).square().flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-20))
