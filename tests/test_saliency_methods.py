"""Attribution methods (failstore.queries.saliency.methods) against answers known in closed form
(linear models), computed by hand with autograd (Grad-CAM) or constructed (guided backprop)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from failstore.errors import ConfigError
from failstore.queries.saliency import methods as sm
from failstore.queries.saliency.methods import (
    METHODS,
    attribute,
    last_conv_layer,
    method_params,
    resolved_layer,
)

TOL = dict(rtol=1e-5, atol=1e-5)
STATS = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def linear_model() -> tuple[nn.Module, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(3 * 4 * 5, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(3, 60, generator=g))
        lin.bias.copy_(torch.randn(3, generator=g))
    return nn.Sequential(nn.Flatten(), lin).eval(), lin.weight.detach().reshape(3, 3, 4, 5)


def conv_model(stride: int = 1) -> nn.Sequential:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, stride=stride),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    ).eval()


def batch(shape: tuple[int, ...] = (2, 3, 4, 5), seed: int = 3) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


TARGET = torch.tensor([2, 0])


def hooks(module: nn.Module) -> int:
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(m._backward_pre_hooks)
        for m in module.modules()
    )


# --- a linear model: d logit_t / d x = W[t] --------------------------------------------------


def test_gradient_of_a_linear_model_is_its_weight_row():
    model, w = linear_model()
    x = batch()
    wt = w[TARGET]  # (N, 3, 4, 5)
    np.testing.assert_allclose(attribute(model, x, TARGET, "gradient"), wt.abs().sum(1), **TOL)
    signed = attribute(model, x, TARGET, "gradient", {"abs": False})
    np.testing.assert_allclose(signed, wt.sum(1), **TOL)
    assert not np.allclose(signed, wt.abs().sum(1))  # the abs flag matters here


def test_input_x_gradient_and_integrated_gradients_of_a_linear_model():
    model, w = linear_model()
    x = batch()
    want = (x * w[TARGET]).sum(1)
    np.testing.assert_allclose(attribute(model, x, TARGET, "input_x_gradient"), want, **TOL)
    for params in (
        {},
        {"n_steps": 1},
        {"n_steps": 7, "method": "riemann_left", "internal_batch_size": 3},
    ):
        got = attribute(model, x, TARGET, "integrated_gradients", params)
        np.testing.assert_allclose(got, want, **TOL)


def test_integrated_gradients_black_baseline_is_normalised_pixel_zero():
    model, w = linear_model()
    x = batch()
    mean, std = torch.tensor(STATS[0]), torch.tensor(STATS[1])
    black = ((0 - mean) / std).view(1, 3, 1, 1)
    got = attribute(
        model, x, TARGET, "integrated_gradients", {"baseline": "black"}, pixel_stats=STATS
    )
    np.testing.assert_allclose(got, ((x - black) * w[TARGET]).sum(1), **TOL)
    with pytest.raises(ConfigError, match="baseline 'black' needs the preprocessing mean/std"):
        attribute(model, x, TARGET, "integrated_gradients", {"baseline": "black"})
    with pytest.raises(ConfigError, match="pixel_stats needs 3 means and 3 positive stds"):
        attribute(
            model,
            x,
            TARGET,
            "integrated_gradients",
            {"baseline": "black"},
            pixel_stats=([0.5], [0.5]),
        )


def test_smoothgrad_and_guided_backprop_of_a_linear_model_equal_the_gradient():
    model, w = linear_model()
    x = batch()
    wt = w[TARGET]
    got = attribute(model, x, TARGET, "smoothgrad", {"abs": False, "nt_samples": 5})
    np.testing.assert_allclose(got, wt.sum(1), **TOL)
    got = attribute(model, x, TARGET, "smoothgrad", {"nt_samples": 5}, pixel_stats=STATS)
    np.testing.assert_allclose(got, wt.abs().sum(1), **TOL)
    np.testing.assert_allclose(attribute(model, x, TARGET, "guided_backprop"), wt.sum(1), **TOL)


# --- Grad-CAM by hand -------------------------------------------------------------------------


def grad_cam_by_hand(
    model: nn.Sequential, x: torch.Tensor, target: torch.Tensor, upto: int, relu: bool = True
) -> np.ndarray:
    """Activations A = model[:upto+1](x); alpha_k = mean over space of d logit_t / d A_k;
    cam = relu(sum_k alpha_k A_k), upsampled bilinearly (align_corners=False) to x's size."""
    a = model[: upto + 1](x)
    logits = model[upto + 1 :](a)
    (g,) = torch.autograd.grad(logits[torch.arange(len(x)), target].sum(), a)
    cam = (g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True)
    if relu:
        cam = F.relu(cam)
    up = F.interpolate(cam, x.shape[2:], mode="bilinear", align_corners=False)
    return up[:, 0].detach().numpy()


def test_grad_cam_equals_the_hand_computation():
    model = conv_model()
    x = batch((2, 3, 6, 7))
    t = torch.tensor([1, 0])
    assert last_conv_layer(model) == "0"
    np.testing.assert_allclose(attribute(model, x, t, "grad_cam"), grad_cam_by_hand(model, x, t, 0))
    got = attribute(model, x, t, "grad_cam", {"layer": "1", "relu_attributions": False})
    np.testing.assert_allclose(got, grad_cam_by_hand(model, x, t, 1, relu=False), **TOL)


def test_grad_cam_upsamples_bilinearly_without_aligned_corners():
    model = conv_model(stride=2)  # a 3 x 4 feature map for a 6 x 7 input
    x = batch((2, 3, 6, 7))
    t = torch.tensor([1, 0])
    got = attribute(model, x, t, "grad_cam")
    np.testing.assert_allclose(got, grad_cam_by_hand(model, x, t, 0), **TOL)
    a = model[0](x)
    (g,) = torch.autograd.grad(model[1:](a)[torch.arange(2), t].sum(), a)
    cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True))
    aligned = F.interpolate(cam, (6, 7), mode="bilinear", align_corners=True)[:, 0]
    assert not np.allclose(got, aligned.detach().numpy(), atol=1e-4)
    nearest = attribute(model, x, t, "grad_cam", {"interpolate": "nearest"})
    np.testing.assert_allclose(
        nearest, F.interpolate(cam, (6, 7), mode="nearest")[:, 0].detach().numpy(), **TOL
    )


def test_guided_grad_cam_shape_and_layers():
    model = conv_model()
    x = batch((2, 3, 6, 7))
    got = attribute(model, x, torch.tensor([1, 0]), "guided_grad_cam")
    assert got.shape == (2, 6, 7) and got.dtype == np.float32 and np.isfinite(got).all()
    nested = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)),
    )
    assert last_conv_layer(nested) == "0.2"
    assert resolved_layer(nested, method_params("grad_cam")) == "0.2"
    assert resolved_layer(nested, method_params("guided_grad_cam", {"layer": "0.0"})) == "0.0"
    assert resolved_layer(nested, method_params("gradient")) is None
    with pytest.raises(ConfigError) as e:
        resolved_layer(nested, method_params("grad_cam", {"layer": "conv9"}))
    assert str(e.value) == (
        "the model has no layer 'conv9'; give a name from named_modules(), "
        "e.g. the conv layers 0.0, 0.2"
    )
    linear, _ = linear_model()
    with pytest.raises(ConfigError) as e:
        attribute(linear, batch(), TARGET, "grad_cam")
    assert str(e.value) == (
        "the model has no nn.Conv2d layer: grad_cam needs a convolutional layer; "
        "choose another method or give layer"
    )
    with pytest.raises(ConfigError, match="grad_cam needs a layer with a \\(N, C, h, w\\) output"):
        attribute(model, x, torch.tensor([1, 0]), "grad_cam", {"layer": "4"})


# --- guided backprop on a ReLU model ------------------------------------------------------------


def test_guided_backprop_zeroes_negative_gradients_and_leaves_no_hooks():
    # logit = relu(h0) - relu(h1), both hidden units active: the gradient is W1[0] - W1[1];
    # guided backprop drops the negative gradient reaching h1 at the ReLU, leaving W1[0].
    g = torch.Generator().manual_seed(4)
    first, second = nn.Linear(60, 2), nn.Linear(2, 1)
    with torch.no_grad():
        first.weight.copy_(0.01 * torch.randn(2, 60, generator=g))
        first.bias.fill_(10.0)
        second.weight.copy_(torch.tensor([[1.0, -1.0]]))
        second.bias.zero_()
    model = nn.Sequential(nn.Flatten(), first, nn.ReLU(), second).eval()
    x, t = batch(), torch.tensor([0, 0])
    w = first.weight.detach().reshape(2, 3, 4, 5)
    out_before = model(x).detach()
    plain = attribute(model, x, t, "gradient", {"abs": False})
    np.testing.assert_allclose(plain, (w[0] - w[1]).sum(0).expand(2, 4, 5), **TOL)
    guided = attribute(model, x, t, "guided_backprop")
    np.testing.assert_allclose(guided, w[0].sum(0).expand(2, 4, 5), **TOL)
    assert hooks(model) == 0
    np.testing.assert_array_equal(attribute(model, x, t, "gradient", {"abs": False}), plain)
    assert torch.equal(model(x), out_before)


# --- parameters -------------------------------------------------------------------------------


def test_methods_and_defaults():
    assert list(METHODS) == [
        "gradient",
        "input_x_gradient",
        "integrated_gradients",
        "smoothgrad",
        "guided_backprop",
        "grad_cam",
        "guided_grad_cam",
    ]
    assert method_params("smoothgrad", {"seed": 3}) == {
        "nt_samples": 25,
        "noise_level": 0.15,
        "abs": True,
        "seed": 3,
    }
    assert method_params("integrated_gradients")["baseline"] == "zeros"
    assert [n for n, s in METHODS.items() if s.uses_layer] == ["grad_cam", "guided_grad_cam"]
    assert METHODS["grad_cam"].defaults == {
        "layer": None,
        "relu_attributions": True,
        "interpolate": "bilinear",
    }


def test_method_params_errors():
    with pytest.raises(ConfigError) as e:
        method_params("x")
    assert str(e.value) == (
        "unknown saliency method 'x'; choose one of gradient, input_x_gradient, "
        "integrated_gradients, smoothgrad, guided_backprop, grad_cam, guided_grad_cam"
    )
    with pytest.raises(ConfigError) as e:
        method_params("smoothgrad", {"n_steps": 3})
    assert str(e.value) == (
        "unknown parameter 'n_steps' for saliency method smoothgrad; "
        "its parameters: nt_samples, noise_level, abs, seed"
    )
    with pytest.raises(ConfigError) as e:
        method_params("guided_backprop", {"abs": True})
    assert str(e.value) == (
        "unknown parameter 'abs' for saliency method guided_backprop; its parameters: none"
    )
    with pytest.raises(ConfigError) as e:
        method_params("integrated_gradients", {"n_steps": 0})
    assert str(e.value) == "integrated_gradients: parameter n_steps must be an integer >= 1, not 0"


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("integrated_gradients", {"n_steps": 2.5}),
        ("integrated_gradients", {"baseline": "white"}),
        ("integrated_gradients", {"method": "simpson"}),
        ("integrated_gradients", {"internal_batch_size": 0}),
        ("smoothgrad", {"nt_samples": 0}),
        ("smoothgrad", {"noise_level": 0}),
        ("smoothgrad", {"noise_level": 1.5}),
        ("smoothgrad", {"seed": "1"}),
        ("gradient", {"abs": 1}),
        ("grad_cam", {"interpolate": "cubic"}),
        ("grad_cam", {"layer": ""}),
    ],
)
def test_method_params_range_checks(name, overrides):
    with pytest.raises(ConfigError, match=f"^{name}: parameter {next(iter(overrides))} must be"):
        method_params(name, overrides)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_runs_and_leaves_the_model_and_input_alone(name):
    model = conv_model()
    x = batch((2, 3, 6, 7))
    x_before = x.clone()
    out_before = model(x).detach()
    got = attribute(model, x, torch.tensor([1, 0]), name, pixel_stats=STATS)
    assert got.shape == (2, 6, 7) and got.dtype == np.float32 and np.isfinite(got).all()
    assert torch.equal(x, x_before) and not x.requires_grad
    assert hooks(model) == 0 and not model.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert torch.equal(model(x), out_before)
    np.testing.assert_allclose(
        attribute(model, x, torch.tensor([1, 0]), "gradient"), _plain_gradient(model, x), **TOL
    )


def _plain_gradient(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg)[torch.arange(2), torch.tensor([1, 0])].sum(), xg)
    return g.abs().sum(1).numpy()


def test_refuses_a_training_model_and_a_scripted_model_for_hooked_methods():
    model = conv_model().train()
    with pytest.raises(ConfigError, match=r"the model is in training mode; call \.eval\(\) first"):
        attribute(model, batch((2, 3, 6, 7)), torch.tensor([1, 0]), "gradient")
    assert model.training
    with pytest.warns(Warning):  # torch.jit.script is deprecated
        scripted = torch.jit.script(conv_model())
    with pytest.raises(ConfigError, match="guided_backprop hooks the model's modules"):
        attribute(scripted, batch((2, 3, 6, 7)), torch.tensor([1, 0]), "guided_backprop")


# --- SmoothGrad noise and seeds ---------------------------------------------------------------


def test_smoothgrad_is_reproducible_per_seed_and_per_image():
    model = conv_model()
    x, t = batch((3, 3, 6, 7)), torch.tensor([1, 0, 1])
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = attribute(model, x, t, "smoothgrad", {"nt_samples": 40}, pixel_stats=STATS)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is kept
    b = attribute(model, x, t, "smoothgrad", {"nt_samples": 40}, pixel_stats=STATS)
    np.testing.assert_array_equal(a, b)
    c = attribute(model, x, t, "smoothgrad", {"nt_samples": 40, "seed": 1}, pixel_stats=STATS)
    assert not np.allclose(a, c)
    one = attribute(model, x[1:2], t[1:2], "smoothgrad", {"nt_samples": 40}, pixel_stats=STATS)
    np.testing.assert_allclose(one[0], a[1], **TOL)  # a map does not depend on its batch


def test_smoothgrad_noise_stdev(monkeypatch):
    from captum.attr import NoiseTunnel

    seen: list[tuple[float, int | None]] = []
    original = NoiseTunnel.attribute

    def spy(self, inputs, **kwargs):
        seen.append((kwargs["stdevs"], kwargs["nt_samples_batch_size"]))
        return original(self, inputs, **kwargs)

    monkeypatch.setattr(NoiseTunnel, "attribute", spy)
    model = conv_model()
    x, t = batch((2, 3, 6, 7)), torch.tensor([1, 0])
    attribute(model, x, t, "smoothgrad", {"noise_level": 0.2, "nt_samples": 50}, pixel_stats=STATS)
    want = 0.2 * float(np.mean([1 / s for s in STATS[1]]))
    assert len(seen) == 2 and all(s == pytest.approx(want, rel=1e-5) for s, _ in seen)
    assert seen[0][1] == sm.SMOOTHGRAD_CHUNK < 50
    seen.clear()
    attribute(model, x, t, "smoothgrad", {"noise_level": 0.2, "nt_samples": 4})
    want = 0.2 * float(x.max() - x.min())
    assert all(s == pytest.approx(want, rel=1e-5) and n == 4 for s, n in seen)


# --- light import -----------------------------------------------------------------------------


def test_importing_the_module_does_not_import_torch_or_captum():
    probe = (
        "import sys; import failstore.queries.saliency.methods; "
        "print(sorted(m for m in ('torch', 'captum') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]", r.stderr
