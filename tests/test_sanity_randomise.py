"""Model randomisation for the sanity test: blocks in forward order, cascading / independent
re-initialisation (BN statistics kept), determinism, schedule validation."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from failstore.demo.nets import BottleneckCNN
from failstore.errors import ConfigError
from failstore.queries.sanity.randomise import (
    blocks,
    cascading,
    changed_parameters,
    check_layers,
    independent,
    reinitialise,
)

BLOCKS = [
    "features.0",
    "features.1",
    "features.2",
    "features.3",
    "features.4",
    "bottleneck",
    "head",
]
LAYERS = ", ".join(BLOCKS)
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def trained() -> nn.Module:
    """The demo target with non-default weights and BN running statistics, in eval mode."""
    gen = torch.Generator().manual_seed(0)
    model = BottleneckCNN(num_classes=4, widths=(8, 16, 16, 16), bottleneck=12)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
        model.train()
        for _ in range(3):
            model(torch.randn(4, 3, 32, 32, generator=gen) * 2 + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return trained()


@pytest.fixture(scope="module")
def example() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def params_of(model: nn.Module, names: list[str] | tuple[str, ...]) -> set[str]:
    return {n for n, _ in model.named_parameters() if any(n.startswith(b + ".") for b in names)}


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- blocks


def test_blocks_of_demo_cnn(model: nn.Module, example: torch.Tensor) -> None:
    assert blocks(model, example) == BLOCKS


class Odd(nn.Module):
    """Registration order differs from forward order; one registered layer is never called."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(6, 2)
        self.unused = nn.Linear(3, 3)
        self.act = nn.ReLU()
        self.trunk = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 5), nn.Linear(5, 6))
        self.bn = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.bn(self.trunk(x))))


def test_blocks_forward_order_unused_left_out_sequential_expanded() -> None:
    assert blocks(Odd(), torch.randn(3, 4)) == ["trunk.0", "trunk.2", "trunk.3", "bn", "head"]


@pytest.mark.parametrize("train", [True, False])
def test_blocks_leaves_module_as_it_was(train: bool, example: torch.Tensor) -> None:
    model = trained().train(train)
    before = state(model)
    flags = {n: m.training for n, m in model.named_modules()}
    blocks(model, example)
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert same_state(before, state(model))  # no running-statistics update in train mode


def test_blocks_removes_hooks_when_forward_fails() -> None:
    model = Odd()
    with pytest.raises(RuntimeError):
        blocks(model, torch.randn(3, 7))
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert model.training


def test_blocks_refuses_parameters_outside_any_layer() -> None:
    model = Odd()
    model.scale = nn.Parameter(torch.ones(1))
    with pytest.raises(ConfigError) as err:
        blocks(model, torch.randn(3, 4))
    assert str(err.value) == "parameters outside any layer cannot be randomised by layer: scale"


# ---------------------------------------------------------------- cascading / independent


def test_cascading(model: nn.Module, example: torch.Tensor) -> None:
    before = state(model)
    with torch.no_grad():
        logits = model(example)
    top_down = tuple(reversed(BLOCKS))
    copies = set()
    for k, (done, copy) in enumerate(cascading(model, BLOCKS, seed=0), start=1):
        assert done == top_down[:k]
        copies.add(id(copy))
        assert not copy.training
        changed = set(changed_parameters(model, copy))
        assert changed == params_of(model, done)
        assert not any(n.endswith(BN_BUFFERS) for n in changed)
        with torch.no_grad():
            assert not torch.allclose(copy(example), logits)
        for name in done:
            for m in copy.get_submodule(name).modules():
                if isinstance(m, nn.BatchNorm2d):
                    assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    assert len(copies) == 1 and k == len(BLOCKS)
    assert same_state(before, state(model))
    assert not model.training


def test_independent(model: nn.Module, example: torch.Tensor) -> None:
    before = state(model)
    seen = []
    for done, copy in independent(model, BLOCKS, seed=0):
        assert len(done) == 1 and not copy.training and copy is not model
        assert set(changed_parameters(model, copy)) == params_of(model, done)
        seen.append(done[0])
    assert seen == list(reversed(BLOCKS))
    assert same_state(before, state(model))


def test_requires_grad_copied(example: torch.Tensor) -> None:
    model = trained()
    model.features.requires_grad_(False)
    _, copy = next(cascading(model, BLOCKS, seed=0))
    assert {n: p.requires_grad for n, p in copy.named_parameters()} == {
        n: p.requires_grad for n, p in model.named_parameters()
    }


def test_deterministic_and_rng_untouched(model: nn.Module) -> None:
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    *_, (_, a) = cascading(model, BLOCKS, seed=7)
    a_state = state(a)
    *_, (_, b) = cascading(model, BLOCKS, seed=7)
    *_, (_, c) = cascading(model, BLOCKS, seed=8)
    singles = {done[0]: state(m) for done, m in independent(model, BLOCKS, seed=7)}
    assert torch.equal(torch.get_rng_state(), rng)
    assert same_state(a_state, state(b))
    norm = {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)
            for p in ("weight", "bias")}  # fmt: skip
    assert set(changed_parameters(a, c)) == params_of(model, BLOCKS) - norm  # BN: always 1, 0
    for name in BLOCKS:
        keys = params_of(model, [name])
        assert all(torch.equal(singles[name][k], a_state[k]) for k in keys), name


def test_reinitialise_uses_layer_initialiser() -> None:
    model = Odd()
    reinitialise(model, "trunk.0", seed=0)
    bound = 1 / 4**0.5  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert float(model.trunk[0].weight.detach().abs().max()) <= bound


class Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def test_reinitialise_refuses_module_without_initialiser() -> None:
    model = nn.Sequential(nn.Linear(3, 3), Custom())
    with pytest.raises(ConfigError) as err:
        reinitialise(model, "1", seed=0)
    assert str(err.value) == (
        "cannot re-initialise layer '1' (Custom): it owns parameters but has no reset_parameters()"
    )


# ---------------------------------------------------------------- check_layers


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["features.0", "fc9"], f"unknown layer 'fc9'; the model's layers are: {LAYERS}"),
        (["head", "head"], "layer 'head' is given twice"),
        (
            ["features.0.0", "features.0"],
            "layer 'features.0.0' is inside layer 'features.0'; give one of them",
        ),
        (["pool"], f"layer 'pool' has no parameters; the model's layers are: {LAYERS}"),
        ([], f"no layers to randomise; the model's layers are: {LAYERS}"),
    ],
)
def test_check_layers_errors(model: nn.Module, names: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_layers(model, names)
    assert str(err.value) == message
    with pytest.raises(ConfigError):
        cascading(model, names, seed=0)  # checked before the first step


def test_check_layers_accepts_any_parametrised_modules(model: nn.Module) -> None:
    names = ["features.0.0", "features.1", "bottleneck.0", "head"]
    assert check_layers(model, names) == names


def test_module_does_not_import_torch() -> None:
    code = "import sys, failstore.queries.sanity.randomise; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
