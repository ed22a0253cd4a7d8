"""AgeFlow: Glow blocks, G, T, the adapter and the official-checkpoint converter (docs/models/ageflow.md section 8).

Random-weight tests perturb the zero-initialised layers first (``perturb_zero_init``, or ``_perturb`` for
single modules), else every coupling is the identity and the test could not fail.

Tolerances (max-abs in model space, pixels in [-0.5, 0.5]) follow docs/models/ageflow.md: per-module inverses 1e-12 and
the tiny G round trip 1e-10 in float64 (a few ulps times the ~30 sequential ops), 1e-5 for the float32 round trip
(docs/models/ageflow.md section 8 item 3); logdet 1e-8 relative (docs/models/ageflow.md section 8 item 6).
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from pyagingrt.checkpoints.ageflow import config_for_layout
from pyagingrt.errors import CheckpointError, InputError
from pyagingrt.models.ageflow import AgeFlowAdapter, perturb_zero_init
from pyagingrt.training.layers.glow import (
    ActNorm,
    AdditiveCoupling,
    FlowStep,
    InvConv2dLU,
    ZeroConv2d,
    squeeze2d,
    unsqueeze2d,
)
from pyagingrt.training.layers.inv_conv1x1 import fold_actnorm_inv_conv1x1
from pyagingrt.training.models.ageflow import (
    AgeFlow,
    AgeFlowConfig,
    postprocess_output,
    quantize_input,
)

ADAPTER = AgeFlowAdapter()
TINY = AgeFlowConfig.tiny()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tiny convolutions are dominated by thread hand-off on the shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny_model() -> AgeFlow:
    torch.manual_seed(1)
    return ADAPTER.build(TINY).eval()


def _perturb(module: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    """Random values for every zero-initialised or identity-initialised parameter of a single block."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, ZeroConv2d):
                layer.conv.weight.normal_(0.0, std)
                layer.conv.bias.normal_(0.0, std)
                layer.scale.normal_(0.0, 0.1)
            elif isinstance(layer, ActNorm):
                layer.loc.normal_(0.0, 0.1)
                layer.scale.copy_(torch.exp(0.1 * torch.randn_like(layer.scale)))
                layer.initialized.fill_(1)
            elif isinstance(layer, InvConv2dLU):
                lu_std = 0.3 / math.sqrt(layer.w_s.numel())  # triangular noise of spectral norm ~0.6: cond(W) ~ 4
                layer.w_l.add_(lu_std * torch.randn_like(layer.w_l))
                layer.w_u.add_(lu_std * torch.randn_like(layer.w_u))
                layer.w_s.add_(0.1 * torch.randn_like(layer.w_s))
    return module


def _images(batch: int, size: int = 32) -> torch.Tensor:
    return torch.rand(batch, 3, size, size)  # [B, 3, S, S] in [0, 1]


# --- Glow blocks ----------------------------------------------------------------------------------------
class TestGlowBlocks:
    def test_squeeze_channel_order_and_exact_inverse(self):
        x = torch.randn(2, 3, 6, 4, dtype=torch.float64)
        y = squeeze2d(x)
        assert y.shape == (2, 12, 3, 2)
        for c in range(3):
            for dy in range(2):
                for dx in range(2):
                    assert torch.equal(y[:, 4 * c + 2 * dy + dx], x[:, c, dy::2, dx::2])
        assert torch.equal(unsqueeze2d(y), x)
        assert torch.equal(squeeze2d(unsqueeze2d(y)), y)

    @pytest.mark.parametrize("kind", ["actnorm", "invconv", "coupling", "ictm_flow"])
    @pytest.mark.parametrize("training", [False, True])
    def test_module_inverse_float64(self, kind, training):
        modules = {
            "actnorm": lambda: ActNorm(12),
            "invconv": lambda: InvConv2dLU(12),
            "coupling": lambda: AdditiveCoupling(12, 16),  # its zero conv pads with 1
            "ictm_flow": lambda: FlowStep(12, 16, actnorm=False, invconv_init="reverse", attention=4),
        }
        module = _perturb(modules[kind]()).double().train(training)
        x = torch.randn(3, 12, 5, 4, dtype=torch.float64)
        y, _ = module(x)
        assert (y - x).abs().max() > 1e-3  # perturbed: not the identity
        torch.testing.assert_close(module.reverse(y), x, atol=1e-12, rtol=0)

    def test_zero_conv_pads_with_one(self):
        # ZeroConv(x) = (conv(x, zero pad) + border bias) * exp(3 scale), the fold of docs/models/ageflow.md section 9
        layer = _perturb(ZeroConv2d(4, 5)).double()
        x = torch.randn(2, 4, 6, 7, dtype=torch.float64)
        w, b = layer.conv.weight, layer.conv.bias
        ones_ring = F.pad(torch.zeros(1, 4, 6, 7, dtype=torch.float64), [1, 1, 1, 1], value=1.0)  # [1, 4, 8, 9]
        border = F.conv2d(ones_ring, w)  # [1, 5, 6, 7], non-zero only on the ring
        want = (F.conv2d(x, w, b, padding=1) + border) * torch.exp(3 * layer.scale)
        torch.testing.assert_close(layer(x), want, atol=1e-12, rtol=0)
        assert border[..., 1:-1, 1:-1].abs().max() == 0
        assert border.abs().max() > 0

    def test_zero_conv_starts_at_zero_so_coupling_is_identity(self):
        coupling = AdditiveCoupling(8, 16)
        x = torch.randn(2, 8, 5, 5)
        assert torch.equal(coupling(x)[0], x)

    def test_actnorm_data_init_only_in_training(self):
        x = 3.0 + 2.0 * torch.randn(8, 6, 5, 5, dtype=torch.float64)
        norm = ActNorm(6).double().eval()
        y, _ = norm(x)
        assert int(norm.initialized) == 0
        assert torch.equal(y, x)
        y, _ = norm.train()(x)
        assert int(norm.initialized) == 1
        flat = y.transpose(0, 1).reshape(6, -1)
        torch.testing.assert_close(flat.mean(1), torch.zeros(6, dtype=torch.float64), atol=1e-12, rtol=0)
        torch.testing.assert_close(flat.std(1), torch.ones(6, dtype=torch.float64), atol=1e-5, rtol=0)  # 1e-6 eps
        loc = norm.loc.clone()
        norm(x + 1.0)  # initialised: a second training batch does not re-initialise
        assert torch.equal(norm.loc, loc)

    def test_invconv_logdet_inverse_and_reversal_init(self):
        conv = _perturb(InvConv2dLU(16)).double()
        weight = conv.calc_weight()
        torch.testing.assert_close(conv.w_s.sum(), torch.linalg.slogdet(weight)[1], atol=1e-12, rtol=0)
        w, w_inv = conv.prepare_inference()
        error = (w_inv @ w - torch.eye(16, dtype=torch.float64)).abs().max()
        assert error <= 1e-12 * torch.linalg.cond(w)
        rev = InvConv2dLU(6, init="reverse")
        assert torch.equal(rev.calc_weight(), torch.eye(6).flip(0))

    def test_inference_cache_follows_weight_changes(self):
        conv = InvConv2dLU(8).eval()
        x = torch.randn(1, 8, 3, 3)
        first = conv(x)[0]
        with torch.no_grad():
            conv.w_s.add_(0.5)  # bumps the version counter: the cached W must be rebuilt
        cached = conv(x)[0]
        assert (cached - first).abs().max() > 1e-2
        live = conv.train()(x)[0]  # W rebuilt from the factors in float32
        torch.testing.assert_close(cached, live, atol=1e-5, rtol=0)  # float32 rounding of an 8x8 product

    @pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
    def test_actnorm_folding(self, dtype, tol):
        # W' = W diag(s), b' = W (s * loc) reproduce ActNorm -> conv; the inverse is (W'^-1, -loc)
        norm, conv = _perturb(ActNorm(12)).double(), _perturb(InvConv2dLU(12)).double()
        x = torch.randn(2, 12, 4, 4, dtype=torch.float64)
        want = conv(norm(x)[0])[0]
        folded = fold_actnorm_inv_conv1x1(norm.loc, norm.scale, conv.calc_weight(), dtype=dtype)
        got = folded.forward(x.to(dtype)).double()
        torch.testing.assert_close(got, want, atol=tol * want.abs().max().item(), rtol=0)
        back = folded.inverse(want.to(dtype)).double()
        torch.testing.assert_close(back, norm.reverse(conv.reverse(want)), atol=tol * 10, rtol=0)
        logdet = (norm.logdet(4, 4) + conv.logdet(4, 4)).item()
        assert folded.logdet_per_pixel * 16 == pytest.approx(logdet, rel=1e-12)


# --- G and T --------------------------------------------------------------------------------------------
class TestFlowAndICTM:
    def test_latent_shapes_sum_to_pixels(self, tiny_model):
        latents = tiny_model.flow.encode(quantize_input(_images(2)))
        shapes = [tuple(z.shape[1:]) for z in [*latents.lower, latents.top]]
        assert shapes == [(6, 16, 16), (12, 8, 8), (48, 4, 4)] == TINY.latent_shapes()
        assert sum(math.prod(s) for s in shapes) == 3 * 32 * 32

    @pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
    @pytest.mark.parametrize("standardize", [False, True])
    def test_round_trip(self, tiny_model, dtype, tol, standardize):
        model = copy.deepcopy(tiny_model).to(dtype)
        x = quantize_input(_images(2)).to(dtype)
        latents = model.flow.encode(x, standardize=standardize)
        back = model.flow.decode(latents.lower, latents.top, standardized=standardize)
        assert (back - x).abs().max() <= tol

    @pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
    def test_ictm_inverse(self, tiny_model, dtype, tol):
        ictm = _perturb(copy.deepcopy(tiny_model.ictm), std=0.02).to(dtype)
        z, mu, rho = (torch.randn(3, 48, 4, 4, dtype=dtype) for _ in range(3))
        z_t, mu_s, rho_s, _ = ictm(z, mu, rho)
        assert (z_t - z).abs().max() > 1e-2
        for got, want in zip(ictm.reverse(z_t, mu_s, rho_s), (z, mu, rho), strict=True):
            assert (got - want).abs().max() <= tol

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
    def test_ictm_is_exactly_identity_at_init(self, dtype):
        model = AgeFlow(TINY).to(dtype).eval()
        z, mu, rho = (torch.randn(2, 48, 4, 4).to(dtype) for _ in range(3))
        z_t, mu_s, rho_s, logdet = model.ictm(z, mu, rho)
        assert torch.equal(z_t, z)
        assert torch.equal(mu_s, mu)
        assert torch.equal(rho_s, rho)
        assert torch.equal(logdet, torch.zeros(2, dtype=dtype))

    def test_flow_logdet_matches_autograd_jacobian(self):
        torch.manual_seed(3)
        model = ADAPTER.build(AgeFlowConfig.jacobian()).double().eval()
        x = quantize_input(_images(1, size=8)).double()  # [1, 3, 8, 8]: 192 values

        def encode(flat):
            latents = model.flow.encode(flat.view(1, 3, 8, 8))
            return torch.cat([z.flatten() for z in [*latents.lower, latents.top]])

        jac = torch.autograd.functional.jacobian(encode, x.flatten())  # [192, 192]
        logdet = model.flow.encode(x).logdet[0]
        assert logdet.abs() > 1.0  # ActNorm and w_s terms are non-trivial
        torch.testing.assert_close(logdet, torch.linalg.slogdet(jac)[1], rtol=1e-8, atol=0)
        official = model.flow.encode(x, official_logdet=True).logdet[0]
        actnorm = sum(f.actnorm.logdet(4 >> l, 4 >> l) for l, b in enumerate(model.flow.blocks) for f in b.flows)
        torch.testing.assert_close(official - logdet, actnorm, rtol=0, atol=1e-12)

    def test_ictm_logdet_matches_autograd_jacobian(self):
        ictm = _perturb(AgeFlow(AgeFlowConfig.jacobian()).ictm, std=0.05).double().eval()
        u = torch.randn(72 * 2 * 2, dtype=torch.float64)  # z | mu | rho, 24 channels each, 2x2

        def forward(flat):
            z, mu, rho = flat.view(1, 72, 2, 2).split(24, dim=1)
            return torch.cat([t.flatten() for t in ictm(z, mu, rho)[:3]])

        jac = torch.autograd.functional.jacobian(forward, u)  # [288, 288]
        z, mu, rho = u.view(1, 72, 2, 2).split(24, dim=1)
        logdet = ictm(z, mu, rho)[3][0]
        torch.testing.assert_close(logdet, torch.linalg.slogdet(jac)[1], rtol=1e-8, atol=0)

    def test_log_prob_uses_the_priors(self, tiny_model):
        x = quantize_input(_images(2)).double()
        model = copy.deepcopy(tiny_model).double()
        log_p = model.flow.log_prob(x)
        assert log_p.shape == (2,)
        assert torch.isfinite(log_p).all()
        with torch.no_grad():
            model.flow.blocks[0].prior.conv.bias.add_(1.0)
        assert (model.flow.log_prob(x) - log_p).abs().min() > 1e-3

    def test_ageing_then_undo_returns_input(self, tiny_model):
        x = quantize_input(_images(2))
        with torch.no_grad():
            result = tiny_model.age(x, torch.tensor([3, 0]))
            assert (result.image - x).abs().max() > 1e-3
            # docs/models/ageflow.md section 8 item 5 = item 3 bound
            assert (tiny_model.undo(result.image, result) - x).abs().max() <= 1e-5


# --- quantiser and ages ---------------------------------------------------------------------------------
class TestQuantiserAndAges:
    def test_quantiser(self):
        v = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
        k = (v.long() >> 3).float()
        torch.testing.assert_close(quantize_input(v), (k + 0.5) / 32 - 0.5, atol=0, rtol=0)
        torch.testing.assert_close(quantize_input(v.float() / 255), quantize_input(v), atol=0, rtol=0)
        lower_edges = quantize_input(v, bin_centre=False)
        torch.testing.assert_close(lower_edges, k / 32 - 0.5, atol=0, rtol=0)
        official = postprocess_output(lower_edges, quantize=True)
        torch.testing.assert_close(official, 8 * k / 255, atol=0, rtol=0)
        # bin centres: requantisation is exact for any latent error below 1/64
        noisy = quantize_input(v) + (torch.rand(v.shape) - 0.5) * (2 / 64 - 1e-6)
        torch.testing.assert_close(postprocess_output(noisy, quantize=True), 8 * k / 255, atol=0, rtol=0)
        torch.testing.assert_close(postprocess_output(quantize_input(v)), (8 * k + 4) / 255, atol=1e-7, rtol=0)

    def test_age_mapping(self):
        ages = torch.tensor([15.0, 30.0, 30.9, 31.0, 40.5, 41.0, 50.0, 50.99, 51.0, 120.0], dtype=torch.float64)
        groups = ADAPTER.validate_ages(TINY, ages)  # no warning from 15 up (filterwarnings = error)
        assert groups.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
        with pytest.warns(UserWarning, match="below 15"):
            assert ADAPTER.validate_ages(TINY, torch.tensor([14.0, 0.0], dtype=torch.float64)).tolist() == [0, 0]

    @pytest.mark.parametrize("age", [-1.0, 121.0, float("nan")])
    def test_bad_age_raises(self, age):
        with pytest.raises(InputError, match=r"0\.\.120"):
            ADAPTER.validate_ages(TINY, torch.tensor([30.0, age], dtype=torch.float64))

    @pytest.mark.parametrize(
        "options",
        [{"strength": 1.0}, {"lower_latents": "noise"}, {"quantize_output": 1}, {"target_group": 4},
         {"target_group": [0, 1]}, {"target_group": 1.0}, {"target_group": True}],
    )  # fmt: skip
    def test_bad_options_raise(self, options):
        with pytest.raises(InputError):
            ADAPTER.validate_options(TINY, 3, options)

    def test_configs(self):
        for name in ADAPTER.config_names:
            config = ADAPTER.make_config(name)
            assert ADAPTER.config_from_dict(ADAPTER.config_to_dict(config)) == config
        with pytest.raises(InputError, match="unknown AgeFlow config"):
            ADAPTER.make_config("huge")
        with pytest.raises(InputError, match="divisible"):
            ADAPTER.config_from_dict({**ADAPTER.config_to_dict(TINY), "image_size": 36})
        with pytest.raises(ValueError, match="even"):
            dataclasses.replace(TINY, ictm_flows=3)


# --- adapter --------------------------------------------------------------------------------------------
class TestAdapter:
    def run(self, model, images, groups, **options):
        opts = ADAPTER.validate_options(model.config, images.shape[0], options)
        return ADAPTER.run(model, images, torch.as_tensor(groups), None, opts)

    def test_output_shape_range_and_target_dependence(self, tiny_model):
        images = _images(3)
        out = self.run(tiny_model, images, [0, 1, 3])
        assert out.shape == images.shape
        assert out.dtype == torch.float32
        assert out.min() >= 0
        assert out.max() <= 1
        other = self.run(tiny_model, images, [3, 3, 0])
        assert (other[0] - out[0]).abs().max() > 1e-3  # different targets, different outputs
        torch.testing.assert_close(other[1], self.run(tiny_model, images[1:2], [3])[0], atol=1e-5, rtol=0)

    def test_quantized_output_is_five_bit(self, tiny_model):
        out = self.run(tiny_model, _images(2), [1, 2], quantize_output=True)
        values = out * 255  # 8 k for k = 0..31, or 255 where 8 * 32 was clamped (the official form)
        torch.testing.assert_close(values, values.round(), atol=1e-4, rtol=0)
        values = values.round()
        assert bool(((values % 8 == 0) | (values == 255)).all())

    def test_target_group_overrides_ages(self, tiny_model):
        images = _images(2)
        torch.testing.assert_close(
            self.run(tiny_model, images, [0, 0], target_group=[2, 3]), self.run(tiny_model, images, [2, 3])
        )

    def test_batch_equals_single_images(self, tiny_model):
        # batched and single convolutions differ only in accumulation order: the float32 round-trip bound
        images, groups = _images(4), [0, 1, 2, 3]
        batched = self.run(tiny_model, images, groups)
        single = torch.cat([self.run(tiny_model, images[i : i + 1], groups[i : i + 1]) for i in range(4)])
        torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)

    def test_deterministic_and_inputs_untouched(self, tiny_model):
        images = _images(2)
        copy_in = images.clone()
        first = self.run(tiny_model, images, [1, 2], lower_latents="eps")
        assert torch.equal(images, copy_in)
        assert torch.equal(first, self.run(tiny_model, images, [1, 2], lower_latents="eps"))

    def test_eval_forward_changes_no_state(self):
        model = AgeFlow(TINY).eval()  # ActNorm not initialised: an eval pass must not initialise it
        before = {k: v.clone() for k, v in model.state_dict().items()}
        self.run(model, _images(2), [0, 3])
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)

    def test_no_matrix_inversion_at_run_time(self, monkeypatch):
        model = ADAPTER.build(TINY).eval()

        def forbidden(*args, **kwargs):
            raise AssertionError("a matrix was inverted during a run")

        with monkeypatch.context() as patch:  # shows the patch would catch a lazy build
            patch.setattr(torch.linalg, "inv", forbidden)
            with pytest.raises(AssertionError, match="inverted"):
                self.run(model, _images(1), [2])
        model.prepare_inference()
        monkeypatch.setattr(torch.linalg, "inv", forbidden)
        monkeypatch.setattr(torch, "inverse", forbidden)
        for _ in range(2):
            self.run(model, _images(1), [2])

    @pytest.mark.parametrize(("dtype", "tol"), [(torch.float16, 1e-2), (torch.bfloat16, 8e-2)])
    def test_half_precision_module(self, tiny_model, dtype, tol):
        # everything (stream included) runs in dtype here; measured error is about 5 unit roundoffs
        # (fp16 2.4e-3, bf16 2.2e-2), the bound is about 20 (fp16 u = 4.9e-4, bf16 u = 3.9e-3)
        images = _images(2)
        want = self.run(tiny_model, images, [0, 3])
        got = self.run(copy.deepcopy(tiny_model).to(dtype), images, [0, 3])
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=tol, rtol=0)

    def test_wrong_image_size_raises(self, tiny_model):
        with pytest.raises(InputError, match="32x32"):
            self.run(tiny_model, _images(1, size=64), [0])


# --- counts ---------------------------------------------------------------------------------------------
def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def paper_on_meta() -> AgeFlow:
    with torch.device("meta"):
        return AgeFlow(AgeFlowConfig.paper()).eval()


def test_paper_parameter_counts_on_meta(paper_on_meta):
    config, model = AgeFlowConfig.paper(), paper_on_meta
    assert _count(model.flow) == 177_559_056
    assert len(model.flow.state_dict()) == 3_474
    assert _count(model.ictm) == 264_365_056
    assert _count(model.disc) == 3_411_461
    assert _count(model.prior) == 49_152
    assert sum(math.prod(s) for s in config.latent_shapes()) == 196_608


def test_paper_flops_on_meta(paper_on_meta):
    # docs/models/ageflow.md sections 3.1, 3.2: 481.5 GFLOP per G direction, 7.06 GFLOP per T direction (2 per MAC;
    # docs/models/ageflow.md rounds to 4 digits, hence rel 1e-3). The one-off float64 W / W^-1 build is done first.
    from torch.utils.flop_counter import FlopCounterMode

    model = paper_on_meta
    with torch.device("meta"), torch.no_grad():
        model.prepare_inference()
        x = torch.zeros(1, 3, 256, 256)
        with FlopCounterMode(display=False) as encode:
            latents = model.flow.encode(x)
        with FlopCounterMode(display=False) as decode:
            model.flow.decode(latents.lower, latents.top)
        with FlopCounterMode(display=False) as ictm:
            model.translate(latents.top, torch.zeros(1, dtype=torch.int64))
    assert encode.get_total_flops() == pytest.approx(481.5e9, rel=1e-3)
    assert decode.get_total_flops() == pytest.approx(481.5e9, rel=1e-3)
    assert ictm.get_total_flops() == pytest.approx(7.06e9, rel=1e-3)


@pytest.mark.gpu
@pytest.mark.slow
def test_paper_round_trip_on_gpu():
    # docs/models/ageflow.md section 8 item 3: the paper G in fp32 on GPU (TF32 off, conftest) within 1e-4, and
    # bit-exact after 5-bit requantisation (bin centres leave a 1/64 margin)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AgeFlow(AgeFlowConfig.paper()).eval()
    perturb_zero_init(model)
    x = quantize_input(_images(2, size=256).cuda())  # [2, 3, 256, 256]
    with torch.no_grad():
        latents = model.flow.encode(x)
        back = model.flow.decode(latents.lower, latents.top)
    assert (back - x).abs().max() <= 1e-4
    assert torch.equal(postprocess_output(back, quantize=True), postprocess_output(x, quantize=True))


def test_tiny_parameter_counts():
    model = AgeFlow(TINY)
    counts = (_count(model.flow), _count(model.ictm), _count(model.prior), _count(model.disc))
    assert counts == (112_656, 169_744, 6_144, 25_829)


# --- official checkpoints -------------------------------------------------------------------------------
def official_generator(levels: int, steps: int, hidden: int) -> dict[str, torch.Tensor]:
    """A random config-0 ``generator-*`` state dict built from the key table of docs/models/ageflow.md section 5."""
    sd = {}
    for l in range(levels):
        c = 12 * 2**l
        for k in range(steps):
            p = f"blocks.{l}.flows.{k}."
            sd[p + "actnorm.loc"] = 0.1 * torch.randn(1, c, 1, 1)
            sd[p + "actnorm.scale"] = torch.exp(0.1 * torch.randn(1, c, 1, 1))
            sd[p + "actnorm.initialized"] = torch.tensor(1, dtype=torch.uint8)
            w_p, w_l, w_u = torch.linalg.lu(torch.linalg.qr(torch.randn(c, c))[0])
            upper = torch.triu(torch.ones(c, c), 1)
            sd[p + "invconv.w_p"], sd[p + "invconv.u_mask"] = w_p, upper
            sd[p + "invconv.l_mask"], sd[p + "invconv.l_eye"] = upper.T.contiguous(), torch.eye(c)
            sd[p + "invconv.s_sign"] = torch.sign(torch.diagonal(w_u))
            sd[p + "invconv.w_l"], sd[p + "invconv.w_u"] = w_l, torch.triu(w_u, 1)
            sd[p + "invconv.w_s"] = torch.log(torch.diagonal(w_u).abs())
            sd[p + "coupling.net.0.weight"] = 0.05 * torch.randn(hidden, c // 2, 3, 3)
            sd[p + "coupling.net.0.bias"] = 0.01 * torch.randn(hidden)
            sd[p + "coupling.net.2.weight"] = 0.05 * torch.randn(hidden, hidden, 1, 1)
            sd[p + "coupling.net.2.bias"] = 0.01 * torch.randn(hidden)
            sd[p + "coupling.net.4.conv.weight"] = 0.02 * torch.randn(c // 2, hidden, 3, 3)
            sd[p + "coupling.net.4.conv.bias"] = 0.01 * torch.randn(c // 2)
            sd[p + "coupling.net.4.scale"] = 0.1 * torch.randn(1, c // 2, 1, 1)
        c_in, c_out = (c // 2, c) if l < levels - 1 else (c, 2 * c)
        sd[f"blocks.{l}.prior.conv.weight"] = 0.01 * torch.randn(c_out, c_in, 3, 3)
        sd[f"blocks.{l}.prior.conv.bias"] = 0.01 * torch.randn(c_out)
        sd[f"blocks.{l}.prior.scale"] = 0.01 * torch.randn(1, c_out, 1, 1)
    return {"module." + k: v for k, v in sd.items()}


def official_encode(sd: dict[str, torch.Tensor], x: torch.Tensor, levels: int, steps: int) -> list[torch.Tensor]:
    """The official config-0 encoder written out from docs/models/ageflow.md, straight from the state dict."""
    sd = {k.removeprefix("module."): v.double() for k, v in sd.items()}
    h, latents = x.double(), []
    for l in range(levels):
        b, c, hh, ww = h.shape
        h = h.view(b, c, hh // 2, 2, ww // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, hh // 2, ww // 2)
        for k in range(steps):
            prefix = f"blocks.{l}.flows.{k}."
            p = {key[len(prefix) :]: v for key, v in sd.items() if key.startswith(prefix)}
            h = p["actnorm.scale"] * (h + p["actnorm.loc"])  # [B, C, h, w]
            lower = p["invconv.w_l"] * p["invconv.l_mask"] + p["invconv.l_eye"]  # [C, C]
            upper = p["invconv.w_u"] * p["invconv.u_mask"] + torch.diag(p["invconv.s_sign"] * p["invconv.w_s"].exp())
            h = torch.einsum("oc,bchw->bohw", p["invconv.w_p"] @ lower @ upper, h)  # [B, C, h, w]
            a, rest = h.chunk(2, 1)  # [B, C/2, h, w] each
            n = F.relu(F.conv2d(a, p["coupling.net.0.weight"], p["coupling.net.0.bias"], padding=1))  # [B, H, h, w]
            n = F.relu(F.conv2d(n, p["coupling.net.2.weight"], p["coupling.net.2.bias"]))  # [B, H, h, w]
            n = F.pad(n, [1, 1, 1, 1], value=1.0)  # [B, H, h+2, w+2]: the official 1-padding
            n = F.conv2d(n, p["coupling.net.4.conv.weight"], p["coupling.net.4.conv.bias"])  # [B, C/2, h, w]
            h = torch.cat([a, rest + n * torch.exp(3 * p["coupling.net.4.scale"])], 1)  # [B, C, h, w]
        if l < levels - 1:
            h, z = h.chunk(2, 1)
            latents.append(z)
    return [*latents, h]


@pytest.fixture(scope="module")
def official_tiny() -> dict[str, torch.Tensor]:
    torch.manual_seed(7)
    return official_generator(TINY.levels, TINY.steps, TINY.hidden)


def _save(tmp_path, sd, name="generator-100000"):
    path = tmp_path / name
    torch.save(sd, path)
    return path


class TestOfficialCheckpoint:
    def test_converts_loads_and_matches_the_official_encoder(self, tmp_path, official_tiny):
        config, state_dict = ADAPTER.convert_official(_save(tmp_path, official_tiny))
        assert config == TINY
        model = ADAPTER.build(config)
        model.load_state_dict(state_dict, strict=True)
        model = model.double().eval()
        x = quantize_input(_images(2)).double()
        latents = model.flow.encode(x)
        want = official_encode(official_tiny, x, TINY.levels, TINY.steps)
        for got, ref in zip([*latents.lower, latents.top], want, strict=True):
            torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)  # float64, same maths, other op order

    def test_official_weights_alone_reconstruct(self, tmp_path, official_tiny):
        # T and the prior are not published: T stays the identity, so ageing re-encodes and decodes the input
        path = _save(tmp_path, official_tiny)
        config, state_dict = ADAPTER.convert_official(path, "tiny")
        again = ADAPTER.convert_official(path)[1]  # same file, same tensors (the unpublished parts included)
        assert all(torch.equal(state_dict[k], again[k]) for k in state_dict)
        model = ADAPTER.build(config)
        model.load_state_dict(state_dict, strict=True)
        images = _images(2)
        opts = ADAPTER.validate_options(config, 2, {"quantize_output": True})
        out = ADAPTER.run(model.eval(), images, torch.tensor([3, 0]), None, opts)
        want = postprocess_output(quantize_input(images), quantize=True)
        torch.testing.assert_close(out, want, atol=0, rtol=0)  # round trip 1e-5 << the 1/64 margin

    @pytest.mark.parametrize(
        ("edit", "key"),
        [
            ("missing", "blocks.1.flows.0.coupling.net.2.bias"),
            ("shape", "blocks.2.prior.conv.weight"),
            ("unexpected", "blocks.0.flows.0.coupling.net.6.weight"),
            ("nan", "blocks.0.flows.1.invconv.w_u"),
            ("uninitialised", "blocks.2.flows.1.actnorm.initialized"),
            ("not_permutation", "blocks.1.flows.1.invconv.w_p"),
            ("mask", "blocks.0.flows.0.invconv.l_mask"),
            ("sign", "blocks.2.flows.0.invconv.s_sign"),
            ("dtype", "blocks.0.flows.0.actnorm.loc"),
        ],
    )
    def test_refusals_name_the_key(self, tmp_path, official_tiny, edit, key):
        sd = dict(official_tiny)
        full = "module." + key
        if edit == "missing":
            del sd[full]
        elif edit == "shape":
            sd[full] = sd[full][:, :-1]
        elif edit == "unexpected":
            sd[full] = torch.zeros(1)
        elif edit == "nan":
            sd[full] = sd[full].clone()
            sd[full][0, 1] = float("nan")
        elif edit == "uninitialised":
            sd[full] = torch.tensor(0, dtype=torch.uint8)
        elif edit == "not_permutation":
            sd[full] = torch.linalg.qr(torch.randn(sd[full].shape))[0]
        elif edit == "mask":
            sd[full] = torch.ones_like(sd[full])
        elif edit == "sign":
            sd[full] = sd[full] * 0.5
        elif edit == "dtype":
            sd[full] = sd[full].double()
        with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
            ADAPTER.convert_official(_save(tmp_path, sd))

    def test_refuses_other_files(self, tmp_path, official_tiny):
        config1 = {**official_tiny, "module.blocks.0.flows.0.invconv.indices": torch.arange(12)}
        with pytest.raises(CheckpointError, match="mixes config 1"):
            ADAPTER.convert_official(_save(tmp_path, config1))
        classifier = {"module.0.weight": torch.zeros(512, 768), "module.0.bias": torch.zeros(512)}
        with pytest.raises(CheckpointError, match="generator"):
            ADAPTER.convert_official(_save(tmp_path, classifier, "y_classifier-100000"))
        with pytest.raises(CheckpointError, match="not a state dict"):
            ADAPTER.convert_official(_save(tmp_path, [torch.zeros(1)]))
        with pytest.raises(CheckpointError, match="config 'paper'"):
            ADAPTER.convert_official(_save(tmp_path, official_tiny), "paper")
        with pytest.raises(CheckpointError, match="does not exist"):
            ADAPTER.convert_official(tmp_path / "missing")


def test_config_inferred_from_layout():
    assert config_for_layout(6, 32, 512, None, "file") == AgeFlowConfig.paper()
    other = config_for_layout(4, 1, 8, None, "file")  # no named config: a 4x4 top latent, paper T sizes
    assert (other.image_size, other.levels, other.steps, other.hidden) == (64, 4, 1, 8)
    assert other.ictm_flows == AgeFlowConfig.paper().ictm_flows


def test_build_perturbs_zero_initialised_layers():
    model = AgeFlow(TINY)
    perturb_zero_init(model)
    zero_convs = [m for m in model.modules() if isinstance(m, ZeroConv2d)]
    assert zero_convs
    assert all(m.conv.weight.abs().max() > 0 for m in zero_convs)
    assert all(int(m.initialized) == 1 for m in model.modules() if isinstance(m, ActNorm))
    assert model.prior.linear.weight.abs().max() > 0


# --- config 1: the README's 64x64 FFHQ-Aging recipe (ActNormIdentity, Permute2d(shuffle=True)) --------------
CONFIG1_LAYOUT = (4, 2, 16)  # levels, steps, width: the 64x64 recipe's 4 levels, few steps and channels


def official_generator_config1(levels: int, steps: int, hidden: int) -> dict[str, torch.Tensor]:
    """A random config-1 ``generator-*``: config 0's coupling and prior keys, a shuffled permutation per step
    (``invconv.indices`` and its inverse, int64) and no ActNorm keys."""
    sd = {k: v for k, v in official_generator(levels, steps, hidden).items() if ".actnorm." not in k}
    sd = {k: v for k, v in sd.items() if ".invconv." not in k}
    for l in range(levels):
        c = 12 * 2**l
        for k in range(steps):
            indices = torch.randperm(c)
            sd[f"module.blocks.{l}.flows.{k}.invconv.indices"] = indices
            sd[f"module.blocks.{l}.flows.{k}.invconv.indices_inverse"] = torch.argsort(indices)
    return sd


def _coupling_net(p: dict[str, torch.Tensor], a: torch.Tensor) -> torch.Tensor:
    n = F.relu(F.conv2d(a, p["coupling.net.0.weight"], p["coupling.net.0.bias"], padding=1))
    n = F.relu(F.conv2d(n, p["coupling.net.2.weight"], p["coupling.net.2.bias"]))
    n = F.conv2d(F.pad(n, [1, 1, 1, 1], value=1.0), p["coupling.net.4.conv.weight"], p["coupling.net.4.conv.bias"])
    return n * torch.exp(p["coupling.net.4.scale"] * 3)


def _steps(sd, l, steps):
    for k in range(steps):
        prefix = f"module.blocks.{l}.flows.{k}."
        yield {key[len(prefix) :]: v for key, v in sd.items() if key.startswith(prefix)}


def official_config1_encode(sd, x, levels, steps):
    """The official config-1 flow: squeeze, then per step x[:, indices] and the additive coupling; split."""
    h, latents = x, []
    for l in range(levels):
        b, c, hh, ww = h.shape
        h = h.view(b, c, hh // 2, 2, ww // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, hh // 2, ww // 2)
        for p in _steps(sd, l, steps):
            h = h[:, p["invconv.indices"]]
            a, rest = h.chunk(2, 1)
            h = torch.cat([a, rest + _coupling_net(p, a)], 1)
        if l < levels - 1:
            h, z = h.chunk(2, 1)
            latents.append(z)
    return [*latents, h]


def official_config1_decode(sd, latents, levels, steps):
    """The official reverse with ``reconstruct=True``: the given latents, flows undone in reverse order."""
    h = None
    for l in reversed(range(levels)):
        h = latents[l] if h is None else torch.cat([h, latents[l]], 1)
        for p in reversed(list(_steps(sd, l, steps))):
            a, rest = h.chunk(2, 1)
            h = torch.cat([a, rest - _coupling_net(p, a)], 1)
            h = h[:, p["invconv.indices_inverse"]]
        b, c4, hh, ww = h.shape
        h = h.view(b, c4 // 4, 2, 2, hh, ww).permute(0, 1, 4, 2, 5, 3).reshape(b, c4 // 4, 2 * hh, 2 * ww)
    return h


def test_config1_converts_exactly_and_is_not_labelled_paper(tmp_path):
    import pyagingrt

    torch.manual_seed(5)
    levels, steps, hidden = CONFIG1_LAYOUT
    sd = official_generator_config1(levels, steps, hidden)
    path = _save(tmp_path, sd)
    config, state_dict = ADAPTER.convert_official(path)
    assert (config.image_size, config.levels, config.steps, config.hidden) == (64, *CONFIG1_LAYOUT)
    model = ADAPTER.build(config)
    model.load_state_dict(state_dict, strict=True)
    flow = model.flow.eval()
    x = quantize_input(_images(2, size=64))
    with torch.no_grad():
        latents = flow.encode(x)
        want = official_config1_encode(sd, x, levels, steps)
        for got, ref in zip([*latents.lower, latents.top], want, strict=True):
            torch.testing.assert_close(got, ref, atol=0, rtol=0)  # 0/1 weights: the same z, bit for bit
        torch.testing.assert_close(
            flow.decode(latents.lower, latents.top), official_config1_decode(sd, want, levels, steps), atol=0, rtol=0
        )
    engine = pyagingrt.load("ageflow", checkpoint=path, device="cpu")
    assert engine.config_name is None
    assert engine.info()["config"] == "custom"
    bad = dict(sd)
    bad["module.blocks.1.flows.0.invconv.indices_inverse"] = torch.arange(24)
    with pytest.raises(CheckpointError, match=r"blocks\.1\.flows\.0\.invconv\.indices_inverse does not invert"):
        ADAPTER.convert_official(_save(tmp_path, bad))
