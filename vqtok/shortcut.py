"""Parameter-free shortcuts around the encoder and the decoder ("residual autoencoding").

With ``TokenizerConfig.shortcut`` on, the encoder's latent is its network's output *plus* a
fixed block average of the input, and the decoder's video is its network's output plus a fixed
block-wise spread of the codes. At initialisation the tokenizer therefore already reconstructs
a blocky, pooled version of the clip, and the networks only learn the residual detail. This is
the idea of DC-AE's space-to-channel shortcuts (Chen et al., arXiv 2410.10733), applied once
around each network instead of per block; on the CPU budget this project trains with, it is
the difference between a model stuck near the clip mean and one that starts at the pooling
baseline.

Both shortcuts use the same assignment of the ``3 * f * f`` values of a pixel block (channel,
row, column, in that order, as in a space-to-depth fold) to the ``D`` latent channels:
``group(e) = e * D // (3 * f * f)``, consecutive runs of nearly equal size. Both are causal and
streamable exactly like the networks beside them: frame 0 is its own latent frame, later
latent frames average (and are spread back over) ``tau`` frames.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from vqtok.layers import CausalConv3d, StreamState

__all__ = ["PoolShortcut", "UnpoolShortcut", "shortcut_groups"]


def shortcut_groups(latent_dim: int, spatial_factor: int) -> Tensor:
    """int64 (3 * f * f,): the latent channel each (c, row, col) entry of a block feeds."""
    entries = 3 * spatial_factor**2
    return torch.arange(entries) * latent_dim // entries


class PoolShortcut(nn.Module):
    """Video (B, 3, T, H, W) -> block averages (B, D, 1 + (T-1)/tau, H/f, W/f).

    Latent channel k is the mean of its group's entries over the block's ``tau`` frames (frame
    0 alone for latent frame 0: the causal padding repeats it). No parameters.
    """

    def __init__(self, latent_dim: int, spatial_factor: int, temporal_factor: int) -> None:
        super().__init__()
        self.f = spatial_factor
        groups = shortcut_groups(latent_dim, spatial_factor)
        tau = temporal_factor
        # (D, 3ff, tau, 1, 1): 1 / (group size * tau) where the entry belongs to the channel
        member = (groups[None, :] == torch.arange(latent_dim)[:, None]).float()
        weight = member / member.sum(1, keepdim=True).clamp_min(1) / tau
        self.pool = CausalConv3d(groups.numel(), latent_dim, (tau, 1, 1), (tau, 1, 1), bias=False)
        # a fixed buffer in place of the learned weight: nothing to train, nothing in state_dict
        del self.pool.weight
        self.pool.register_buffer(
            "weight", weight[:, :, None, None, None].expand(-1, -1, tau, 1, 1).contiguous(),
            persistent=False,
        )

    def forward(self, video: Tensor, state: StreamState | None = None) -> Tensor:
        f = self.f
        # space-to-depth: (B, 3, T, H, W) -> (B, 3*f*f, T, H/f, W/f)
        blocks = rearrange(video, "b c t (h p1) (w p2) -> b (c p1 p2) t h w", p1=f, p2=f)
        return self.pool(blocks, state)


class UnpoolShortcut(nn.Module):
    """Codes (B, D, t, h, w) -> video (B, 3, 1 + (t-1)*tau, h*f, w*f), the inverse spread.

    Every entry of a pixel block takes its group's latent channel, repeated over the block's
    ``tau`` frames (latent frame 0 gives frame 0 only). No parameters.
    """

    groups: Tensor

    def __init__(self, latent_dim: int, spatial_factor: int, temporal_factor: int) -> None:
        super().__init__()
        self.f, self.tau = spatial_factor, temporal_factor
        self.register_buffer(
            "groups", shortcut_groups(latent_dim, spatial_factor), persistent=False
        )

    def forward(self, codes: Tensor, state: StreamState | None = None) -> Tensor:
        x = codes.index_select(1, self.groups)  # (B, D, t, h, w) -> (B, 3ff, t, h, w)
        if self.tau > 1 and x.shape[2] > 0:
            x = x.repeat_interleave(self.tau, dim=2)  # -> (B, 3ff, t*tau, h, w)
            if state is None or not state.started(self):
                x = x[:, :, self.tau - 1 :]  # latent frame 0 stands for frame 0 alone
            if state is not None:
                state.put(self, x.new_empty(0))  # marks "stream started"
        f = self.f
        return rearrange(x, "b (c p1 p2) t h w -> b c t (h p1) (w p2)", p1=f, p2=f)
