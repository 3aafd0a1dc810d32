"""Model parameter randomisation (Adebayo et al., "Sanity Checks for Saliency Maps").

A trained model's parametrised blocks are re-initialised from the top (logits) down, either
cumulatively (:func:`cascading`: one copy, one more block each step) or one at a time
(:func:`independent`: a fresh copy per block). As in the reference, every parameter of a block
gets its layer's own initialiser (``reset_parameters()``), normalisation layers get weight 1 and
bias 0, and batch-norm running statistics (buffers, not parameters) are kept.

A block is re-initialised from a seed derived from (seed, block name) inside a forked RNG, so it
gets the same weights in both schedules and whatever was re-initialised before it, and the
caller's global RNG state is untouched. torch is imported inside the functions only.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from failstore.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

Step = tuple[tuple[str, ...], "nn.Module"]


def _norm_types() -> tuple[type[nn.Module], ...]:
    """Normalisation layer types (BatchNorm*, InstanceNorm*, GroupNorm, LayerNorm, RMSNorm)."""
    from torch import nn
    from torch.nn.modules.batchnorm import _NormBase

    rms = getattr(nn, "RMSNorm", None)
    return (_NormBase, nn.GroupNorm, nn.LayerNorm, *([rms] if rms is not None else []))


def _has_params(module: nn.Module) -> bool:
    return next(iter(module.parameters()), None) is not None


def _weight_layers(module: nn.Module) -> int:
    """How many modules under ``module`` (itself included) own a ``weight`` and are not norms."""
    norms = _norm_types()
    return sum(
        1
        for m in module.modules()
        if "weight" in m._parameters and m._parameters["weight"] is not None
        and not isinstance(m, norms)
    )  # fmt: skip


def _candidates(module: nn.Module, strict: bool) -> list[str]:
    """Block names in registration order (see :func:`blocks` for the rule).

    ``strict``: parameters owned directly by the root or an expanded container are an error.
    """
    from torch import nn

    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    out: list[str] = []
    seen: set[int] = set()

    def expand(node: nn.Module, prefix: str) -> None:
        own = [prefix + n for n, p in node._parameters.items() if p is not None]
        if own and strict:
            raise ConfigError(
                f"parameters outside any layer cannot be randomised by layer: {', '.join(own)}"
            )
        for name, child in node.named_children():
            if id(child) in seen or not _has_params(child):
                continue
            seen.add(id(child))
            if isinstance(child, containers) and _weight_layers(child) > 1:
                expand(child, f"{prefix}{name}.")
            else:
                out.append(prefix + name)

    expand(module, "")
    return out


def blocks(module: nn.Module, example: torch.Tensor) -> list[str]:
    """Dotted names of the model's parametrised blocks in forward order (input side first).

    From the root down: a child without parameters is skipped; an ``nn.Sequential`` /
    ``ModuleList`` / ``ModuleDict`` holding more than one weight layer (a non-normalisation
    module owning a ``weight``) is expanded into its children by the same rule; any other child
    with parameters is one block. The order is measured with one ``module(example)`` in eval mode
    under ``torch.no_grad()``; blocks not called are left out. The module is left as it was
    (hooks removed, every ``training`` flag restored, running statistics untouched).
    """
    import torch

    names = _candidates(module, strict=True)
    order: list[str] = []
    handles = []
    flags = [(m, m.training) for m in module.modules()]

    def hook_for(name: str) -> Callable[[nn.Module, object], None]:
        def hook(_m: nn.Module, _args: object) -> None:
            if name not in order:
                order.append(name)

        return hook

    try:
        for name in names:
            handles.append(module.get_submodule(name).register_forward_pre_hook(hook_for(name)))
        module.eval()
        with torch.no_grad():
            module(example)
    finally:
        for handle in handles:
            handle.remove()
        for m, flag in flags:
            m.training = flag
    if not order:
        raise ConfigError("the model's forward pass calls none of its parametrised layers")
    return order


def check_layers(module: nn.Module, names: Sequence[str]) -> list[str]:
    """Validate a user-given schedule (bottom-up): known modules with parameters, each once,
    none inside another. Returns the names as given."""

    def fail(message: str) -> ConfigError:
        valid = ", ".join(_candidates(module, strict=False))
        return ConfigError(message, hint=f"the model's layers are: {valid}")

    modules = dict(module.named_modules())
    if not names:
        raise fail("no layers to randomise")
    for i, name in enumerate(names):
        if not name or name not in modules:
            raise fail(f"unknown layer {name!r}")
        if not _has_params(modules[name]):
            raise fail(f"layer {name!r} has no parameters")
        if name in names[:i]:
            raise ConfigError(f"layer {name!r} is given twice")
    for inner in names:
        for outer in names:
            if inner.startswith(outer + "."):
                raise ConfigError(f"layer {inner!r} is inside layer {outer!r}; give one of them")
    return list(names)


def _derived_seed(seed: int, name: str) -> int:
    """A stable 63-bit seed from (seed, block name)."""
    digest = hashlib.blake2b(f"{seed}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def reinitialise(module: nn.Module, name: str, seed: int) -> None:
    """Re-initialise every parameter of submodule ``name`` in place.

    Normalisation layers get weight 1 and bias 0 (running statistics kept); any other module
    owning parameters has its ``reset_parameters()`` (or ``_reset_parameters()``, as
    ``nn.MultiheadAttention``) called: PyTorch's default initialiser for that layer type.
    """
    import torch

    check_layers(module, [name])
    sub = module.get_submodule(name)
    norms = _norm_types()
    owners = [
        (n, m) for n, m in sub.named_modules() if any(p is not None for p in m._parameters.values())
    ]
    cuda = any(p.device.type == "cuda" for p in sub.parameters())
    devices = list(range(torch.cuda.device_count())) if cuda else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(_derived_seed(seed, name))
        for sub_name, m in owners:
            full = f"{name}.{sub_name}" if sub_name else name
            reset = getattr(m, "reset_parameters", None) or getattr(m, "_reset_parameters", None)
            if isinstance(m, norms):
                for pname, value in (("weight", 1.0), ("bias", 0.0)):
                    param = m._parameters.get(pname)
                    if param is not None:
                        param.fill_(value)
            elif callable(reset):
                reset()
            else:
                raise ConfigError(
                    f"cannot re-initialise layer {full!r} ({type(m).__name__}): "
                    "it owns parameters but has no reset_parameters()"
                )


def _copy(module: nn.Module) -> nn.Module:
    """A deep copy in eval mode (``requires_grad`` flags are copied with the parameters)."""
    return copy.deepcopy(module).eval()


def cascading(module: nn.Module, names: Sequence[str], seed: int) -> Iterator[Step]:
    """Cumulative randomisation of one deep copy, from the top block down.

    ``names`` are blocks bottom-up (as :func:`blocks` returns). Step k yields (the k blocks
    randomised so far, top first; the copy): the same copy object, mutated in place. The
    original is never touched. Names are checked before the first step.
    """
    order = tuple(reversed(check_layers(module, names)))

    def steps() -> Iterator[Step]:
        model = _copy(module)
        for k, name in enumerate(order, start=1):
            reinitialise(model, name, seed)
            yield order[:k], model

    return steps()


def independent(module: nn.Module, names: Sequence[str], seed: int) -> Iterator[Step]:
    """One block at a time, from the top down: a fresh deep copy with only that block
    re-initialised per step, yielded as ((name,), copy)."""
    order = tuple(reversed(check_layers(module, names)))

    def steps() -> Iterator[Step]:
        for name in order:
            model = _copy(module)
            reinitialise(model, name, seed)
            yield (name,), model

    return steps()


def changed_parameters(a: nn.Module, b: nn.Module) -> list[str]:
    """Names of state_dict entries whose tensors differ between two same-structured modules
    (NaNs in the same places count as equal)."""
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    if list(sa) != list(sb):
        diff = sorted(set(sa) ^ set(sb))[:5]
        raise ConfigError(f"the two models differ in structure: {', '.join(diff) or 'order'}")
    changed = []
    for key, x in sa.items():
        y = sb[key].to(x.device)
        if x.shape != y.shape or x.dtype != y.dtype:
            same = False
        elif x.is_floating_point() or x.is_complex():
            same = bool(torch.allclose(x, y, rtol=0.0, atol=0.0, equal_nan=True))
        else:
            same = torch.equal(x, y)
        if not same:
            changed.append(key)
    return changed
