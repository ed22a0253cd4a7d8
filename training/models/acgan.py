"""AcGAN (Zhu, Huang, Shan, Zhang, "Look Globally, Age Locally", ICASSP 2020): generator and discriminator.

The generator reads an aligned face x in [-1, 1] plus a one-hot target age group c, tiled over the image
and concatenated after the 3 image channels, and predicts a colour map C = tanh(.) and an attention mask
A = sigmoid(.). The aged face is Eq. (1): out = A * x + (1 - A) * C, so A = 1 keeps the input pixel.
The discriminator is one trunk with two heads: a WGAN-GP critic score D_I and age-group logits D_y.

Module and parameter names follow the official code (JensonZhu14/AcGAN, models/networks/AcGANs.py) so that
its state dicts load after stripping DataParallel's ``module.`` prefix (docs/models/acgan.md section 5); the
parameter registration order is the official one, so official optimizer states line up too. Two deliberate
differences (docs/models/acgan.md section 7 items 9-10): D returns logits, not softmax probabilities, and returns
[B] and [B, c_dim] instead of squeezing (which crashed the official code at B = 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The common 112x112 five-point template (left eye, right eye, nose, left and right mouth corner), in pixels.
ALIGN_TEMPLATE_112 = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)


@dataclass(frozen=True)
class AcGANConfig:
    """Sizes of G and D plus the crop they expect (docs/models/acgan.md sections 2-4).

    ``image_size`` is enforced: the conditioning reaches G only through the zero-padding frame of the stem
    (docs/models/acgan.md section 9 item 5), so weights trained at one size do not transfer to another.
    ``align_template`` (in 112x112 pixel units, scaled by image_size / 112) and ``align_margin`` (the crop is
    shrunk about its centre by 1 / (1 + margin): 0.1 for Morph weights, 0.2 for CACD) describe the crop the
    face pipeline must produce; ``data_age_range`` is the training set's age span (Morph 16-77, CACD 16-62):
    target ages beyond it are extrapolation.
    """

    image_size: int = 224
    c_dim: int = 5
    g_conv_dim: int = 64
    g_repeat_num: int = 6
    d_conv_dim: int = 64
    d_repeat_num: int = 7
    align_template: tuple[tuple[float, float], ...] = ALIGN_TEMPLATE_112
    align_margin: float = 0.1
    data_age_range: tuple[int, int] = (16, 77)

    @classmethod
    def paper(cls) -> AcGANConfig:
        """The official Generator(64, 5, 6) and Discriminator(5, 224, 64, 7): G 8,433,664, D 178,981,824 params."""
        return cls()

    @classmethod
    def tiny(cls) -> AcGANConfig:
        """Every code path with a few channels at 48x48 (D maps 24, 12, 6, 3, 1): G 62,464, D 176,504 params."""
        return cls(image_size=48, g_conv_dim=8, g_repeat_num=2, d_conv_dim=8, d_repeat_num=5)


class InstanceNorm2d(nn.InstanceNorm2d):
    """nn.InstanceNorm2d(affine=True) that computes in float32 for half-precision inputs.

    Same parameters (``weight``, ``bias``) and no buffers, as the official layer; statistics over 56x56 or
    224x224 values lose too much in fp16 (docs/models/acgan.md section 8 item 9).
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, eps=1e-5, affine=True, track_running_stats=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            y = F.instance_norm(x.float(), weight=self.weight.float(), bias=self.bias.float(), eps=self.eps)
            return y.to(x.dtype)  # [B, C, H, W]
        return super().forward(x)  # [B, C, H, W]


class ResidualBlock(nn.Module):
    """x + IN(conv3x3(ReLU(IN(conv3x3(x))))); keys main.{0,1,3,4}; no activation after the sum."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, bias=False),
            InstanceNorm2d(dim),
            nn.ReLU(),
            nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, bias=False),
            InstanceNorm2d(dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.main(x)  # [B, D, H/4, W/4]


def tile_condition(x: Tensor, c: Tensor) -> Tensor:
    """The generator input: x followed by c broadcast over H and W.

    Args:
        x: Tensor[B, 3, H, W] image in [-1, 1].
        c: Tensor[B, c_dim] condition (one-hot group).

    Returns:
        Tensor[B, 3 + c_dim, H, W]; channels 3 ... 3 + c_dim - 1 hold c.
    """
    maps = c[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3]).to(x.dtype)  # [B, c_dim, H, W]
    return torch.cat([x, maps], dim=1)  # [B, 3 + c_dim, H, W]


def mask_blend(x: Tensor, a: Tensor, c: Tensor) -> Tensor:
    """Eq. (1): out = A * x + (1 - A) * C.

    Written with both products so that the endpoints are exact: A == 1 gives x + 0 * C == x and A == 0 gives
    0 * x + C == C bitwise (the cheaper C + A * (x - C) rounds at A == 1; docs/models/acgan.md section 8 item 3).

    Args:
        x: Tensor[B, 3, H, W] input image.
        a: Tensor[B, 1, H, W] attention mask in [0, 1].
        c: Tensor[B, 3, H, W] colour map.

    Returns:
        Tensor[B, 3, H, W], elementwise between x and C.
    """
    return a * x + (1 - a) * c  # [B, 3, H, W]


def one_hot_groups(groups: Tensor, c_dim: int) -> Tensor:
    """Group indices Tensor[B] (integer, in [0, c_dim)) -> one-hot float Tensor[B, c_dim]."""
    if groups.dim() != 1 or groups.is_floating_point() or groups.is_complex():
        raise ValueError(f"groups must be an integer Tensor[B], got {groups.dtype} of shape {tuple(groups.shape)}")
    if groups.numel() and groups.device.type != "meta" and (int(groups.min()) < 0 or int(groups.max()) >= c_dim):
        raise ValueError(f"groups must lie in [0, {c_dim - 1}], got {groups.tolist()}")
    return F.one_hot(groups.long(), c_dim).float()  # [B, c_dim]


def _check_one_hot(c: Tensor, batch: int, c_dim: int) -> None:
    if c.shape != (batch, c_dim):
        raise ValueError(f"condition c must be Tensor[{batch}, {c_dim}] (one-hot groups), got {tuple(c.shape)}")
    # A data-dependent check cannot be traced (ONNX / torch.export; the exporters build c themselves) and meta
    # tensors (FLOP counting) hold no values.
    if c.device.type == "meta" or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return
    binary = bool(((c == 0) | (c == 1)).all())
    if not binary or not bool((c.sum(dim=1) == 1).all()):
        raise ValueError("condition c must be one-hot: exactly one 1 per row, zeros elsewhere")


class Generator(nn.Module):
    """G(x, c) -> (C, A): StarGAN/GANimation encoder, residual bottleneck, decoder and two 7x7 heads.

    Keys: main.0-2 stem (conv 7x7, 3+c_dim -> d), main.3-8 two stride-2 downsamplings, main.9 ... 8+R
    residual blocks, main.9+R ... 14+R two transposed-conv upsamplings, img_reg.0 (C), attention_reg.0 (A).
    No convolution has a bias.
    """

    def __init__(self, config: AcGANConfig) -> None:
        super().__init__()
        self.config = config
        d, c_dim = config.g_conv_dim, config.c_dim
        layers: list[nn.Module] = [
            nn.Conv2d(3 + c_dim, d, kernel_size=7, stride=1, padding=3, bias=False),
            InstanceNorm2d(d),
            nn.ReLU(),
        ]
        for mult in (1, 2):  # down-sampling: d -> 2d -> 4d
            layers += [
                nn.Conv2d(d * mult, d * mult * 2, kernel_size=4, stride=2, padding=1, bias=False),
                InstanceNorm2d(d * mult * 2),
                nn.ReLU(),
            ]
        layers += [ResidualBlock(4 * d) for _ in range(config.g_repeat_num)]
        for mult in (4, 2):  # up-sampling: 4d -> 2d -> d
            layers += [
                nn.ConvTranspose2d(d * mult, d * mult // 2, kernel_size=4, stride=2, padding=1, bias=False),
                InstanceNorm2d(d * mult // 2),
                nn.ReLU(),
            ]
        self.main = nn.Sequential(*layers)
        self.img_reg = nn.Sequential(nn.Conv2d(d, 3, kernel_size=7, stride=1, padding=3, bias=False), nn.Tanh())
        self.attention_reg = nn.Sequential(
            nn.Conv2d(d, 1, kernel_size=7, stride=1, padding=3, bias=False), nn.Sigmoid()
        )

    def _check_input(self, x: Tensor) -> None:
        s = self.config.image_size
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != s or x.shape[3] != s:
            raise ValueError(f"x must be Tensor[B, 3, {s}, {s}] (this config's crop), got {tuple(x.shape)}")

    def forward(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """Official interface.

        Args:
            x: Tensor[B, 3, S, S] image in [-1, 1], S = config.image_size.
            c: Tensor[B, c_dim] one-hot target group.

        Returns:
            (C Tensor[B, 3, S, S] in [-1, 1], A Tensor[B, 1, S, S] in [0, 1]).
        """
        self._check_input(x)
        _check_one_hot(c, x.shape[0], self.config.c_dim)
        h = tile_condition(x, c)  # [B, 3 + c_dim, S, S]
        features = self.main(h)  # [B, d, S, S]
        return self.img_reg(features), self.attention_reg(features)  # [B, 3, S, S], [B, 1, S, S]

    def generate(self, x: Tensor, groups: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Age x to ``groups``: returns (out, A, C), out = A * x + (1 - A) * C.

        Args:
            x: Tensor[B, 3, S, S] image in [-1, 1].
            groups: integer Tensor[B] of group indices in [0, c_dim).

        Returns:
            out Tensor[B, 3, S, S] in [-1, 1], A Tensor[B, 1, S, S], C Tensor[B, 3, S, S].
        """
        if groups.shape != (x.shape[0],):
            raise ValueError(f"groups must be Tensor[{x.shape[0]}] (one per image), got {tuple(groups.shape)}")
        c = one_hot_groups(groups, self.config.c_dim).to(x.device)  # [B, c_dim]
        color, attention = self(x, c)  # [B, 3, S, S], [B, 1, S, S]
        return mask_blend(x, attention, color), attention, color

    def condition_response(self, group: int) -> Tensor:
        """The stem conv's response to the tiled condition of ``group`` alone: Tensor[d, S, S] (fp32 math).

        Constant inside, with a 3-pixel frame where the zero padding cuts the 7x7 kernel; adding it to the
        stem conv of the 3 image channels gives the 8-channel stem (docs/models/acgan.md section 9 item 5).
        """
        s, c_dim = self.config.image_size, self.config.c_dim
        if not 0 <= group < c_dim:
            raise ValueError(f"group must lie in [0, {c_dim - 1}], got {group}")
        weight = self.main[0].weight[:, 3 + group : 4 + group].float()  # [d, 1, 7, 7]
        plane = torch.ones(1, 1, s, s, device=weight.device)  # [1, 1, S, S]
        return F.conv2d(plane, weight, padding=3)[0]  # [d, S, S]


class Discriminator(nn.Module):
    """D(x) -> (critic score Tensor[B], age logits Tensor[B, c_dim]).

    Keys main.{0,2,...}: R convs 4x4 stride 2 with bias, each followed by LeakyReLU(0.01), channels
    3 -> d -> 2d -> ... -> d * 2^(R-1); prob_layer (3x3, no bias) and cond_layer (k x k, k = int(S / 2^R),
    no bias). No normalisation layers. Only configs whose last map makes both heads 1x1 are accepted.
    """

    def __init__(self, config: AcGANConfig) -> None:
        super().__init__()
        self.config = config
        d, repeat = config.d_conv_dim, config.d_repeat_num
        size = config.image_size
        for _ in range(repeat):
            size //= 2  # conv 4x4 stride 2 padding 1: floor(S / 2)
        k = int(config.image_size / 2**repeat)
        if size != 1 or k != 1:
            raise ValueError(
                f"Discriminator: image_size {config.image_size} with repeat_num {repeat} leaves a {size}x{size} map "
                f"and a {k}x{k} cond kernel; this implementation needs both to be 1 (224 with 7, 48 with 5)"
            )
        layers: list[nn.Module] = []
        in_ch = 3
        for i in range(repeat):
            out_ch = d * 2**i
            layers += [nn.Conv2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.01)]
            in_ch = out_ch
        self.main = nn.Sequential(*layers)
        self.prob_layer = nn.Conv2d(in_ch, 1, kernel_size=3, stride=1, padding=1, bias=False)
        self.cond_layer = nn.Conv2d(in_ch, config.c_dim, kernel_size=k, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Args: x Tensor[B, 3, S, S]. Returns (D_I score Tensor[B], D_y logits Tensor[B, c_dim])."""
        h = self.main(x)  # [B, d * 2^(R-1), 1, 1]
        score = self.prob_layer(h).flatten(1)[:, 0]  # [B]
        logits = self.cond_layer(h).flatten(1)  # [B, c_dim]
        return score, logits


def init_weights(module: nn.Module, std: float = 0.02, generator: torch.Generator | None = None) -> nn.Module:
    """The official init (models/utils/ops.weights_init): conv and transposed-conv weights N(0, std), biases 0,
    InstanceNorm affine 1 / 0. Returns ``module``."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.weight.normal_(0.0, std, generator=generator)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.InstanceNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()
    return module
