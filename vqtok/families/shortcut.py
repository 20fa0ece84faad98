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

The *linear* shortcuts (``shortcut: "linear"``) replace the fixed averages by a projection
fitted to footage: each causal block of ``tau x f x f x 3`` pixels (frame 0 alone, repeated,
for latent frame 0) is centred and projected on the first ``D`` principal components of such
blocks (`fit_linear_shortcut`), and the decoder maps codes back with the transposed basis. The
basis is orthonormal, so distances between latents equal distances between the blocks' linear
parts, and nearest-code search in latent space minimises that part's pixel error. The basis and
mean are stored with the model (buffers in ``model.safetensors``), not trained by gradients.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from vqtok.families.layers import CausalConv3d, StreamState

__all__ = [
    "LinearPoolShortcut",
    "LinearUnpoolShortcut",
    "PoolShortcut",
    "UnpoolShortcut",
    "block_vectors",
    "fit_linear_shortcut",
    "shortcut_groups",
]


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


def block_vectors(video: Tensor, spatial_factor: int, temporal_factor: int) -> Tensor:
    """Causal pixel blocks of a clip as rows: (B, 3, 1 + k*tau, H, W) -> (N, 3*f*f*tau).

    Row layout is (channel, row, column, frame in block); latent frame 0's block is frame 0
    repeated ``tau`` times, as the causal padding of `LinearPoolShortcut` sees it.
    """
    f, tau = spatial_factor, temporal_factor
    if tau > 1:
        video = torch.cat([video[:, :, :1].expand(-1, -1, tau - 1, -1, -1), video], dim=2)
    return rearrange(
        video, "b c (t k) (h p1) (w p2) -> (b t h w) (c p1 p2 k)", k=tau, p1=f, p2=f
    )


@torch.no_grad()
def fit_linear_shortcut(blocks: Tensor, latent_dim: int) -> tuple[Tensor, Tensor]:
    """Principal components of pixel blocks.

    Args:
        blocks: (N, E) float rows from `block_vectors`, N >= 2.
        latent_dim: D <= E, components to keep.

    Returns:
        (basis (D, E) float32 with orthonormal rows, largest variance first; mean (E,) float32).
    """
    x = blocks.double()
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / max(1, x.shape[0] - 1)
    _, vectors = torch.linalg.eigh(cov)  # ascending eigenvalues
    basis = vectors[:, -latent_dim:].flip(1).T
    # a fixed sign per component (largest entry positive), so a refit gives the same basis
    signs = basis.gather(1, basis.abs().argmax(1, keepdim=True)).sign()
    return (basis * signs).float(), mean.float()


def _default_basis(latent_dim: int, spatial_factor: int, temporal_factor: int) -> Tensor:
    """(D, 3ff*tau) orthonormal block-average rows (the pooling shortcut, normalised)."""
    groups = shortcut_groups(latent_dim, spatial_factor).repeat_interleave(temporal_factor)
    member = (groups[None, :] == torch.arange(latent_dim)[:, None]).float()
    return member / member.sum(1, keepdim=True).clamp_min(1).sqrt()


class LinearPoolShortcut(nn.Module):
    """Video (B, 3, T, H, W) -> basis @ (block - mean), (B, D, 1 + (T-1)/tau, H/f, W/f).

    Buffers (saved with the model): ``basis`` (D, 3ff*tau), ``mean`` (3ff*tau,), both float32;
    `set_basis` installs a fitted pair. Starts as the normalised block average.
    """

    basis: Tensor
    mean: Tensor

    def __init__(self, latent_dim: int, spatial_factor: int, temporal_factor: int) -> None:
        super().__init__()
        self.f, self.tau = spatial_factor, temporal_factor
        entries = 3 * spatial_factor**2
        self.register_buffer("basis", _default_basis(latent_dim, spatial_factor, temporal_factor))
        self.register_buffer("mean", torch.zeros(entries * temporal_factor))
        kernel = (temporal_factor, 1, 1)
        self.proj = CausalConv3d(entries, latent_dim, kernel, kernel, bias=True)
        # weight (D, 3ff, tau, 1, 1) and bias (D,) are derived from basis and mean: buffers,
        # recomputed when a basis is set or loaded, never saved or trained
        del self.proj.weight, self.proj.bias
        self.proj.register_buffer("weight", torch.empty(0), persistent=False)
        self.proj.register_buffer("bias", torch.empty(0), persistent=False)
        self._sync()
        self.register_load_state_dict_post_hook(lambda module, _keys: module._sync())

    @torch.no_grad()
    def _sync(self) -> None:
        d, tau = self.basis.shape[0], self.tau
        self.proj.weight = self.basis.reshape(d, -1, tau)[..., None, None].clone()
        self.proj.bias = -(self.basis @ self.mean)

    @torch.no_grad()
    def set_basis(self, basis: Tensor, mean: Tensor) -> None:
        self.basis.copy_(basis)
        self.mean.copy_(mean)
        self._sync()

    def forward(self, video: Tensor, state: StreamState | None = None) -> Tensor:
        f = self.f
        # space-to-depth: (B, 3, T, H, W) -> (B, 3*f*f, T, H/f, W/f)
        blocks = rearrange(video, "b c t (h p1) (w p2) -> b (c p1 p2) t h w", p1=f, p2=f)
        return self.proj(blocks, state)


class LinearUnpoolShortcut(nn.Module):
    """Codes (B, D, t, h, w) -> basis.T @ codes + mean as video (B, 3, 1 + (t-1)*tau, hf, wf).

    Latent frame 0 stands for frame 0 alone: its ``tau`` reconstructed copies are averaged.
    Buffers as in `LinearPoolShortcut`.
    """

    basis: Tensor
    mean: Tensor

    def __init__(self, latent_dim: int, spatial_factor: int, temporal_factor: int) -> None:
        super().__init__()
        self.f, self.tau = spatial_factor, temporal_factor
        entries = 3 * spatial_factor**2 * temporal_factor
        self.register_buffer("basis", _default_basis(latent_dim, spatial_factor, temporal_factor))
        self.register_buffer("mean", torch.zeros(entries))

    @torch.no_grad()
    def set_basis(self, basis: Tensor, mean: Tensor) -> None:
        self.basis.copy_(basis)
        self.mean.copy_(mean)

    def forward(self, codes: Tensor, state: StreamState | None = None) -> Tensor:
        f, tau = self.f, self.tau
        basis, mean = self.basis.to(codes.dtype), self.mean.to(codes.dtype)
        # (B, D, t, h, w) -> blocks (B, t, h, w, 3ff*tau)
        blocks = torch.einsum("bdthw,de->bthwe", codes, basis) + mean
        x = rearrange(blocks, "b t h w (c k) -> b c (t k) h w", k=tau)  # (B, 3ff, t*tau, h, w)
        if x.shape[2] and (state is None or not state.started(self)):
            first = x[:, :, :tau].mean(2, keepdim=True)  # frame 0, seen tau times
            x = torch.cat([first, x[:, :, tau:]], dim=2)
        if state is not None and x.shape[2]:
            state.put(self, x.new_empty(0))  # marks "stream started"
        return rearrange(x, "b (c p1 p2) t h w -> b c t (h p1) (w p2)", p1=f, p2=f)
