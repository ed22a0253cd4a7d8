"""Oracle for ``winograd_conv3x3``: a 3x3, stride-1, zero-padded ("same") convolution computed by Winograd's minimal
filtering algorithm F(4x4, 3x3) (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks", section 4).

Symbols (the paper's, for F(m x m, r x r) with m = 4, r = 3, tile side m + r - 1 = 6):
    d      a 6x6 input tile (rows 4 ty - 1 .. 4 ty + 4, columns 4 tx - 1 .. 4 tx + 4, zeros outside the image)
    g      a 3x3 filter w[o, c]
    B^T, G, A^T    [6, 6], [6, 3], [4, 6] matrices from the interpolation points 0, 1, -1, 2, -2 and infinity
    U = G g G^T        (eq. 8: the filter transform, once per weight)
    V = B^T d B        (the input transform)
    M = sum_c U . V    (elementwise in the 36 points, summed over input channels: 36 GEMMs over all tiles)
    Y = A^T M A        (the output transform: the 4x4 output tile)

It is the same function as ``F.conv2d(x, weight, padding=1)``, with 36 multiplications per 16 outputs instead of 144
and a larger rounding error in fp32 (coefficients up to 8 and 1/24). In float64 the two agree to ~1e-14 relative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

TILE = 4  # m: output pixels per tile side
POINTS = 36  # (m + r - 1)^2

B_T = (
    (4, 0, -5, 0, 1, 0),
    (0, -4, -4, 1, 1, 0),
    (0, 4, -4, -1, 1, 0),
    (0, -2, -1, 2, 1, 0),
    (0, 2, -1, -2, 1, 0),
    (0, 4, 0, -5, 0, 1),
)
G = (
    (1 / 4, 0, 0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0, 0, 1),
)
A_T = (
    (1, 1, 1, 1, 1, 0),
    (0, 1, -1, 2, -2, 0),
    (0, 1, 1, 4, 4, 0),
    (0, 1, -1, 8, -8, 1),
)


def winograd_weight(weight: Tensor) -> Tensor:
    """U = G g G^T for every filter, computed in float64: Tensor[36, C, O] in weight's dtype (point p = 6 a + b).

    Args:
        weight: Tensor[O, C, 3, 3].
    """
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"winograd_weight needs a [O, C, 3, 3] weight, got {tuple(weight.shape)}")
    g = torch.tensor(G, dtype=torch.float64, device=weight.device)  # [6, 3]
    u = torch.einsum("ai,ocij,bj->abco", g, weight.double(), g)  # [6, 6, C, O]
    return u.reshape(POINTS, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()  # [36, C, O]


def winograd_conv3x3(x: Tensor, u: Tensor) -> Tensor:
    """Y = A^T [sum_c U . (B^T d B)] A over all 4x4 tiles: ``F.conv2d(x, weight, padding=1)`` for ``u =
    winograd_weight(weight)``, computed in x's dtype.

    Args:
        x: Tensor[N, C, H, W], any memory format.
        u: Tensor[36, C, O] (:func:`winograd_weight`), x's dtype.

    Returns:
        Tensor[N, O, H, W], channels_last.
    """
    n, c, h, w = x.shape
    o = u.shape[2]
    th, tw = -(-h // TILE), -(-w // TILE)  # tiles per column / row
    b_t = torch.tensor(B_T, dtype=x.dtype, device=x.device)  # [6, 6]
    a_t = torch.tensor(A_T, dtype=x.dtype, device=x.device)  # [4, 6]
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, TILE * tw + 1 - w, 1, TILE * th + 1 - h))  # [N, 4th+2, 4tw+2, C]
    s_n, s_h, s_w, s_c = padded.stride()
    d = padded.as_strided((6, 6, n, th, tw, c), (s_h, s_w, s_n, TILE * s_h, TILE * s_w, s_c))  # d[i, j, n, y, x, c]
    v = torch.einsum("ai,bj,ijnyxc->abnyxc", b_t, b_t, d)  # V = B^T d B: [6, 6, N, th, tw, C]
    m = torch.einsum("abnyxc,abco->abnyxo", v, u.reshape(6, 6, c, o))  # M: [6, 6, N, th, tw, O]
    y = torch.einsum("ra,sb,abnyxo->nyrxso", a_t, a_t, m)  # Y = A^T M A: [N, th, 4, tw, 4, O]
    y = y.reshape(n, TILE * th, TILE * tw, o)[:, :h, :w]  # [N, H, W, O]
    return y.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)  # [N, O, H, W]
