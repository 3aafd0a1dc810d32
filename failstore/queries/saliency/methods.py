"""Attribution methods for saliency maps, computed with Captum.

Each method explains one logit per image (``target``) of a module returning logits ``(N, K)``
for an input ``x`` that is already normalised (``(pixel/255 - mean) / std`` per channel). The map
of every method is returned as ``(N, H, W)`` float32: the input attribution summed over colour
channels (a signed sum), or for ``grad_cam`` its single-channel map upsampled to ``H x W``.
torch and captum are imported inside the functions, so importing this module stays light.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from failstore.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

IG_METHODS = (
    "gausslegendre",
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
)
INTERPOLATE_MODES = ("bilinear", "nearest", "bicubic", "area")
HOOKED = ("guided_backprop", "grad_cam", "guided_grad_cam")  # need module hooks (not TorchScript)
SMOOTHGRAD_CHUNK = 32  # noisy copies of one image per forward/backward pass (bounds memory)


@dataclass(frozen=True)
class MethodSpec:
    """An attribution method: its parameters with their defaults (JSON-able) and a help line."""

    name: str
    defaults: dict[str, Any]
    help: str
    uses_layer: bool


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "gradient",
            {"abs": True},
            "vanilla gradient d logit / d x (captum Saliency); abs takes |gradient| before the "
            "channel sum",
            False,
        ),
        MethodSpec("input_x_gradient", {}, "x * d logit / d x (captum InputXGradient)", False),
        MethodSpec(
            "integrated_gradients",
            {
                "n_steps": 50,
                "method": "gausslegendre",
                "baseline": "zeros",
                "internal_batch_size": 64,
            },
            "integrated gradients (captum IntegratedGradients) from a baseline: 'zeros' is the "
            "zero normalised input, i.e. the dataset-mean colour image; 'black' is pixel value 0 "
            "(needs the preprocessing mean/std)",
            False,
        ),
        MethodSpec(
            "smoothgrad",
            {"nt_samples": 25, "noise_level": 0.15, "abs": True, "seed": 0},
            "SmoothGrad: mean gradient over nt_samples noisy copies (captum NoiseTunnel over "
            "Saliency); noise stdev = noise_level x the range of the normalised input",
            False,
        ),
        MethodSpec(
            "guided_backprop",
            {},
            "guided backpropagation (captum GuidedBackprop); only nn.ReLU modules are guided, "
            "a functional relu (F.relu, torch.relu) is not",
            False,
        ),
        MethodSpec(
            "grad_cam",
            {"layer": None, "relu_attributions": True, "interpolate": "bilinear"},
            "Grad-CAM at a layer (default: the last nn.Conv2d; captum LayerGradCam), upsampled "
            "to the input size",
            True,
        ),
        MethodSpec(
            "guided_grad_cam",
            {"layer": None},
            "guided Grad-CAM (captum GuidedGradCam): guided backprop times the layer's Grad-CAM "
            "(nearest-neighbour upsampled, captum's default)",
            True,
        ),
    )
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check(name: str, key: str, value: Any) -> None:
    bad = None
    if key in ("abs", "relu_attributions") and not isinstance(value, bool):
        bad = "true or false"
    elif key in ("n_steps", "nt_samples") and not (_is_int(value) and value >= 1):
        bad = "an integer >= 1"
    elif key == "internal_batch_size" and not (value is None or (_is_int(value) and value >= 1)):
        bad = "an integer >= 1 or null"
    elif key == "seed" and not _is_int(value):
        bad = "an integer"
    elif key == "noise_level" and not (
        isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1
    ):
        bad = "a number in (0, 1]"
    elif key == "baseline" and value not in ("zeros", "black"):
        bad = "one of zeros, black"
    elif key == "method" and value not in IG_METHODS:
        bad = "one of " + ", ".join(IG_METHODS)
    elif key == "interpolate" and value not in INTERPOLATE_MODES:
        bad = "one of " + ", ".join(INTERPOLATE_MODES)
    elif key == "layer" and not (value is None or (isinstance(value, str) and value)):
        bad = "a layer name or null"
    if bad is not None:
        raise ConfigError(f"{name}: parameter {key} must be {bad}, not {value!r}")


def method_params(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The parameters of method ``name``: its defaults updated with ``overrides``, checked."""
    spec = METHODS.get(name)
    if spec is None:
        raise ConfigError(f"unknown saliency method {name!r}; choose one of {', '.join(METHODS)}")
    params = dict(spec.defaults)
    for key, value in (overrides or {}).items():
        if key not in spec.defaults:
            known = ", ".join(spec.defaults) or "none"
            raise ConfigError(
                f"unknown parameter {key!r} for saliency method {name}; its parameters: {known}"
            )
        _check(name, key, value)
        params[key] = value
    return params


def last_conv_layer(module: Any) -> str:
    """The dotted name (as in ``module.named_modules()``) of the last ``nn.Conv2d`` registered."""
    from torch import nn

    names = [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise ConfigError(
            "the model has no nn.Conv2d layer: grad_cam needs a convolutional layer; "
            "choose another method or give layer"
        )
    return names[-1]


def resolved_layer(module: Any, params: Mapping[str, Any]) -> str | None:
    """The layer a layer method uses: ``params["layer"]`` (checked to exist in the module), or
    :func:`last_conv_layer` when it is None; None when ``params`` (as resolved by
    :func:`method_params`) has no ``layer`` parameter."""
    if "layer" not in params:
        return None
    name = params["layer"]
    if name is None:
        return last_conv_layer(module)
    if name not in dict(module.named_modules()):
        from torch import nn

        convs = [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)][-5:]
        hint = f"e.g. the conv layers {', '.join(convs)}" if convs else "it has no nn.Conv2d"
        raise ConfigError(
            f"the model has no layer {name!r}; give a name from named_modules(), {hint}"
        )
    return str(name)


def _channel_stats(
    pixel_stats: tuple[Sequence[float], Sequence[float]], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    mean = torch.as_tensor([float(v) for v in pixel_stats[0]], dtype=x.dtype, device=x.device)
    std = torch.as_tensor([float(v) for v in pixel_stats[1]], dtype=x.dtype, device=x.device)
    c = x.shape[1]
    if mean.numel() != c or std.numel() != c or bool((std <= 0).any()):
        raise ConfigError(
            f"pixel_stats needs {c} means and {c} positive stds (one per input channel), "
            f"got {list(pixel_stats[0])} and {list(pixel_stats[1])}"
        )
    return mean, std


def attribute(
    module: Any,
    x: torch.Tensor,
    target: torch.Tensor,
    method: str,
    params: Mapping[str, Any] | None = None,
    *,
    pixel_stats: tuple[Sequence[float], Sequence[float]] | None = None,
    channels: bool = False,
) -> np.ndarray:
    """The saliency maps ``(N, H, W)`` float32 of ``method`` for logit ``target[i]`` of image i
    (``channels``: the attribution before the channel sum, ``(N, C, H, W)``; ``(N, 1, H, W)``
    for grad_cam).

    ``module`` (eval mode) maps the normalised batch ``x`` ``(N, C, H, W)`` to logits ``(N, K)``;
    ``target`` holds N class indices; ``params`` are overrides of the method's defaults
    (:func:`method_params`). ``pixel_stats`` is the preprocessing ``(mean, std)`` per channel on
    the 0..1 pixel scale; it is needed by integrated_gradients with baseline ``black`` (the
    baseline is ``(0 - mean) / std``) and sets the SmoothGrad noise: stdev = ``noise_level *``
    the mean over channels of ``1 / std`` (the range of the normalised input over pixels 0..255);
    without it the stdev is ``noise_level * (x.max() - x.min())`` over the whole batch.
    SmoothGrad reseeds torch with ``seed`` before each image (inside ``torch.random.fork_rng``,
    so the caller's random state is kept), so a map does not depend on the rest of the batch
    when pixel_stats is given. ``x``, the module's mode, its parameters and hooks are left as
    they were.
    """
    import torch

    p = method_params(method, params)
    if x.ndim != 4 or not x.is_floating_point():
        raise ConfigError(f"saliency needs a float batch (N, C, H, W), got {tuple(x.shape)}")
    if tuple(target.shape) != (x.shape[0],):
        raise ConfigError(f"target must hold {x.shape[0]} class indices, got {tuple(target.shape)}")
    if any(m.training for m in module.modules()):
        raise ConfigError(
            "the model is in training mode; call .eval() first (batch norm and dropout would "
            "change the maps, and batch norm statistics would be updated)"
        )
    if method in HOOKED and isinstance(module, torch.jit.ScriptModule):
        raise ConfigError(
            f"{method} hooks the model's modules, which a TorchScript model does not run; "
            "choose gradient, input_x_gradient, integrated_gradients or smoothgrad"
        )
    target = target.to(device=x.device, dtype=torch.long)
    xc = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        attr = _run(module, xc, target, method, p, pixel_stats)
    if method != "grad_cam" and tuple(attr.shape) != tuple(x.shape):
        raise ConfigError(f"{method} returned shape {tuple(attr.shape)} for input {tuple(x.shape)}")
    if not channels:
        attr = attr[:, 0] if method == "grad_cam" else attr.sum(dim=1)
    return attr.detach().to("cpu", torch.float32).numpy().astype(np.float32, copy=False)


def _run(
    module: Any,
    xc: torch.Tensor,
    target: torch.Tensor,
    method: str,
    p: dict[str, Any],
    pixel_stats: tuple[Sequence[float], Sequence[float]] | None,
) -> torch.Tensor:
    """The captum attribution of ``method``: (N, C, H, W), or (N, 1, H, W) for grad_cam."""
    import torch
    from captum import attr as ca

    if method == "gradient":
        return ca.Saliency(module).attribute(xc, target=target, abs=p["abs"])
    if method == "input_x_gradient":
        return ca.InputXGradient(module).attribute(xc, target=target)
    if method == "integrated_gradients":
        baseline = torch.zeros_like(xc[:1]).detach()
        if p["baseline"] == "black":
            if pixel_stats is None:
                raise ConfigError(
                    "integrated_gradients baseline 'black' needs the preprocessing mean/std "
                    "(pixel_stats); use baseline 'zeros' or give them"
                )
            mean, std = _channel_stats(pixel_stats, xc)
            baseline = baseline + ((0 - mean) / std).view(1, -1, 1, 1)
        return ca.IntegratedGradients(module).attribute(
            xc,
            baselines=baseline,
            target=target,
            n_steps=p["n_steps"],
            method=p["method"],
            internal_batch_size=p["internal_batch_size"],
        )
    if method == "smoothgrad":
        if pixel_stats is not None:
            stdev = p["noise_level"] * float((1.0 / _channel_stats(pixel_stats, xc)[1]).mean())
        else:
            stdev = p["noise_level"] * float(xc.detach().max() - xc.detach().min())
        nt = ca.NoiseTunnel(ca.Saliency(module))
        dev = xc.device
        devices = [] if dev.type == "cpu" else [dev.index if dev.index is not None else 0]
        rows = []
        for i in range(xc.shape[0]):
            with torch.random.fork_rng(devices=devices, device_type=dev.type):
                torch.manual_seed(p["seed"])
                rows.append(
                    nt.attribute(
                        xc[i : i + 1].detach().requires_grad_(True),
                        nt_type="smoothgrad",
                        nt_samples=p["nt_samples"],
                        nt_samples_batch_size=min(p["nt_samples"], SMOOTHGRAD_CHUNK),
                        stdevs=float(stdev),
                        target=target[i : i + 1],
                        abs=p["abs"],
                    )
                )
        return torch.cat(rows)
    if method == "guided_backprop":
        return ca.GuidedBackprop(module).attribute(xc, target=target)
    layer = dict(module.named_modules())[resolved_layer(module, p)]
    if method == "guided_grad_cam":
        return ca.GuidedGradCam(module, layer).attribute(xc, target=target)
    cam = ca.LayerGradCam(module, layer).attribute(
        xc, target=target, relu_attributions=p["relu_attributions"]
    )
    if cam.ndim != 4:
        raise ConfigError(
            f"grad_cam needs a layer with a (N, C, h, w) output; layer {p['layer']!r} gives "
            f"{tuple(cam.shape)} after the channel sum; choose a convolutional layer"
        )
    size = (int(xc.shape[2]), int(xc.shape[3]))
    return ca.LayerAttribution.interpolate(cam, size, interpolate_mode=p["interpolate"])
