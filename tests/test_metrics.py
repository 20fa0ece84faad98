"""PSNR and SSIM against values computed by hand."""

import math

import pytest
import torch

from vqtok.metrics import (
    psnr,
    psnr_per_frame,
    seam_loss,
    ssim_loss,
    ssim_per_frame,
    temporal_loss,
)


def test_psnr_known_value():
    a = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    b = torch.full_like(a, 10)
    assert psnr(a, b).item() == pytest.approx(10 * math.log10(255**2 / 100))
    assert math.isinf(psnr(a, a).item())
    assert psnr_per_frame(a, b).tolist() == pytest.approx([psnr(a, b).item()] * 2)


def test_ssim_identical_is_one_and_noise_lowers_it():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (2, 32, 32, 3), generator=g).to(torch.uint8)
    assert ssim_per_frame(a, a).tolist() == pytest.approx([1.0, 1.0])
    noisy = (a.double() + 40 * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(0, 255)
    s = ssim_per_frame(a, noisy)
    assert (s < 0.9).all() and (s > 0).all()


def test_ssim_of_constant_images_is_the_luminance_term():
    # zero variance: SSIM = (2 mx my + c1) / (mx^2 + my^2 + c1)
    a = torch.full((1, 16, 16, 3), 100.0)
    b = torch.full((1, 16, 16, 3), 150.0)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 150 + c1) / (100**2 + 150**2 + c1)
    assert ssim_per_frame(a, b).item() == pytest.approx(expected, rel=1e-9)


def test_ssim_loss_is_one_minus_the_frame_ssim_and_differentiable():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(2, 3, 2, 16, 16, generator=g) * 2 - 1
    test = (ref + 0.2 * torch.randn(ref.shape, generator=g)).clamp(-1, 1).requires_grad_()
    loss = ssim_loss(ref, test)
    frames = [ssim_per_frame(ref[b].permute(1, 2, 3, 0), test[b].detach().permute(1, 2, 3, 0), 2.0)
              for b in range(2)]
    expected = 1 - torch.cat(frames).mean()
    assert loss.item() == pytest.approx(float(expected), abs=1e-5)
    loss.backward()
    assert test.grad is not None and test.grad.abs().sum() > 0
    assert float(ssim_loss(ref, ref)) == pytest.approx(0.0, abs=1e-6)


def test_seam_loss_sees_a_block_grid_and_nothing_else():
    g = torch.Generator().manual_seed(1)
    ref = torch.rand(1, 3, 2, 16, 16, generator=g) * 2 - 1
    rows, cols = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    grid = (((rows // 8) + (cols // 8)) % 2).float() * 0.1  # a checkerboard of 8x8 blocks
    smooth = (cols.float() / 15) * 0.3  # a ramp: no step anywhere
    assert float(seam_loss(ref, ref + 0.1, 8)) == pytest.approx(0.0, abs=1e-6)
    # the ramp changes every difference by 0.02, those across the boundary as much as the rest
    assert float(seam_loss(ref, ref + smooth, 8)) == pytest.approx(0.01, rel=1e-4)
    # each boundary difference is off by 0.1
    assert float(seam_loss(ref, ref + grid, 8)) == pytest.approx(0.1, rel=1e-4)
    # 4-pixel blocks: boundaries after pixels 3, 7 and 11, and only the middle one has a step
    assert float(seam_loss(ref, ref + grid, 4)) == pytest.approx(0.1 / 3, rel=1e-4)
    gridded = (ref + grid).requires_grad_()
    seam_loss(ref, gridded, 8).backward()
    assert gridded.grad is not None and gridded.grad.abs().sum() > 0


def test_temporal_loss_sees_flicker_and_not_a_constant_error():
    ref = torch.rand(2, 3, 9, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert float(temporal_loss(ref, ref + 0.1)) == pytest.approx(0.0, abs=1e-6)
    flicker = torch.zeros_like(ref)
    flicker[:, :, 5::4] = 0.2  # every 4th frame jumps: two changes of 0.2 per jump
    expected = 0.2 * 2 / 8  # 2 of the 8 frame-to-frame changes of each pixel are off
    assert float(temporal_loss(ref, ref + flicker)) == pytest.approx(expected, rel=1e-5)
    assert float(temporal_loss(ref[:, :, :1], ref[:, :, :1] + 1)) == 0.0
    moving = (ref + flicker).requires_grad_()
    temporal_loss(ref, moving).backward()
    assert moving.grad is not None and moving.grad.abs().sum() > 0


def test_temporal_loss_at_group_boundaries_only():
    ref = torch.rand(1, 3, 9, 8, 8, generator=torch.Generator().manual_seed(1))
    at_boundary = torch.zeros_like(ref)
    at_boundary[:, :, 5:] = 0.3  # one jump, frame 4 -> 5: the boundary into the third group
    # pairs 0->1 and 4->5 are the boundaries of 4-frame causal groups; one of them is off
    assert float(temporal_loss(ref, ref + at_boundary, 4)) == pytest.approx(0.3 / 2, rel=1e-5)
    inside = torch.zeros_like(ref)
    inside[:, :, 3:] = 0.3  # a jump 2 -> 3, inside the group 1..4
    assert float(temporal_loss(ref, ref + inside, 4)) == pytest.approx(0.0, abs=1e-6)
    assert float(temporal_loss(ref, ref + inside)) == pytest.approx(0.3 / 8, rel=1e-5)
    assert float(temporal_loss(ref[:, :, :1], ref[:, :, :1] + 1, 4)) == 0.0
