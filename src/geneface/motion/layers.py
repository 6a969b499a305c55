"""Building blocks shared by the motion models: 1-D conv blocks, a gated WaveNet stack and a coupling flow.

All tensors here are channels-first sequences ``[B, C, T]``; masks are ``[B, 1, T]`` with 1 on valid steps.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ChannelNorm(nn.Module):
    """Layer norm over the channels of each time step of ``[B, C, T]`` (independent of length and batch)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class ConvBlock(nn.Module):
    """Conv1d -> channel norm -> activation, with an optional residual connection (same shape in and out)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, padding: int | None = None,
                 residual: bool = False, negative_slope: float = 0.0) -> None:
        super().__init__()
        if residual and (cin != cout or stride != 1):
            raise ValueError("a residual block keeps its channels and length")
        self.conv = nn.Conv1d(cin, cout, kernel, stride, kernel // 2 if padding is None else padding)
        self.norm = ChannelNorm(cout)
        self.residual = residual
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm(self.conv(x))
        if self.residual:
            out = out + x
        return F.leaky_relu(out, self.negative_slope) if self.negative_slope else F.relu(out)


class WaveNet(nn.Module):
    """Non-causal gated residual conv stack (WaveNet style) conditioned on a sequence ``g``.

    ``x`` [B, H, T], ``mask`` [B, 1, T], ``g`` [B, G, T] or None -> [B, H, T] (the sum of skip outputs).
    Each layer: ``a = conv(x) + proj(g)``; ``h = tanh(a_1) * sigmoid(a_2)``; ``x += res(h)``; ``out += skip(h)``.
    """

    def __init__(self, hidden: int, kernel: int, layers: int, cond_channels: int = 0,
                 dilation_rate: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError("WaveNet kernel size must be odd")
        self.hidden = hidden
        self.layers = layers
        self.in_layers = nn.ModuleList()
        self.res_skip = nn.ModuleList()
        for i in range(layers):
            dilation = dilation_rate ** i
            self.in_layers.append(nn.Conv1d(hidden, 2 * hidden, kernel, dilation=dilation,
                                            padding=dilation * (kernel - 1) // 2))
            self.res_skip.append(nn.Conv1d(hidden, 2 * hidden if i < layers - 1 else hidden, 1))
        self.cond = nn.Conv1d(cond_channels, 2 * hidden * layers, 1) if cond_channels else None
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        out = torch.zeros_like(x)
        cond = self.cond(g) if (self.cond is not None and g is not None) else None
        h = self.hidden
        for i in range(self.layers):
            a = self.drop(self.in_layers[i](x))
            if cond is not None:
                a = a + cond[:, 2 * h * i: 2 * h * (i + 1)]
            acts = torch.tanh(a[:, :h]) * torch.sigmoid(a[:, h:])
            rs = self.res_skip[i](acts)
            if i < self.layers - 1:
                x = (x + rs[:, :h]) * mask
                out = out + rs[:, h:]
            else:
                out = out + rs
        return out * mask


class CouplingFlow(nn.Module):
    """Volume-preserving normalising flow: mean-only affine couplings alternating with channel flips.

    ``forward(x [B, C, T], mask, g)`` maps a latent to the base (standard normal) space; ``reverse=True``
    maps back. The log-determinant is zero, so the prior density is ``N(flow(z); 0, 1)``.
    """

    def __init__(self, channels: int, hidden: int, kernel: int, layers: int, blocks: int,
                 cond_channels: int = 0) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError("flow channels must be even")
        self.half = channels // 2
        self.pre = nn.ModuleList()
        self.nets = nn.ModuleList()
        self.post = nn.ModuleList()
        for _ in range(blocks):
            self.pre.append(nn.Conv1d(self.half, hidden, 1))
            self.nets.append(WaveNet(hidden, kernel, layers, cond_channels))
            post = nn.Conv1d(hidden, self.half, 1)
            nn.init.zeros_(post.weight)  # each coupling starts as the identity
            nn.init.zeros_(post.bias)
            self.post.append(post)

    def _shift(self, i: int, x0: torch.Tensor, mask: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
        return self.post[i](self.nets[i](self.pre[i](x0) * mask, mask, g)) * mask

    def forward(self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor | None = None,
                reverse: bool = False) -> torch.Tensor:
        order = range(len(self.nets))
        if not reverse:
            for i in order:
                x0, x1 = x[:, :self.half], x[:, self.half:]
                x = torch.cat([x0, (x1 + self._shift(i, x0, mask, g)) * mask], 1).flip(1)
        else:
            for i in reversed(order):
                x = x.flip(1)
                x0, x1 = x[:, :self.half], x[:, self.half:]
                x = torch.cat([x0, (x1 - self._shift(i, x0, mask, g)) * mask], 1)
        return x
