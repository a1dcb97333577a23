"""Render-time hooks on the model itself: a perturbed network each step (ghost noise), a
prior on the statistics the network sees (batch norm inputs), and a damped gradient through
residual branches (skip gradient).

Each registers on construction only when switched on, acts only while the render says so
(``rng`` set / ``active`` / a gradient is being recorded), and is removed by ``close()``,
which the render calls in its ``finally``.
"""

from __future__ import annotations

import operator
import warnings
import weakref
from dataclasses import dataclass

import torch
from torch import fx, nn
from torchvision.models.convnext import CNBlock
from torchvision.models.resnet import BasicBlock, Bottleneck

from convsight.errors import ConvsightError
from convsight.optvis.transforms import RowRandom


def _conv_layers(module: nn.Module) -> list[nn.Conv2d]:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConvsightError("ghost noise needs conv layers; the model has none")
    return convs


def _batch_norms(module: nn.Module) -> list[nn.BatchNorm2d]:
    norms = [
        m for m in module.modules() if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None
    ]
    if not norms:
        raise ConvsightError(
            "the batch norm prior needs batch norm layers with running statistics; "
            "the model has none"
        )
    return norms


@dataclass(frozen=True)
class ResidualAddition:
    """One residual addition: ``block`` (a ``named_modules`` name, "" for the root) adds its
    input (or a shortcut of it) to the output of ``branch``, the last module of the branch."""

    block: str
    branch: str


_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_ADD_METHODS = ("add", "add_")
_RESIDUALS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def residual_additions(module: nn.Module) -> list[ResidualAddition]:
    """Every residual addition in ``module``, found in the code of each block, not by class.

    Each module that has children is traced one level deep with ``torch.fx`` (its children
    stay calls). An addition (``+``, ``+=``, ``torch.add``, ``.add``) counts when one operand is
    a value ``x`` of the block, or one step from it (a downsample / shortcut), and the other is
    computed from ``x`` through more steps; its last module is the branch. This finds the
    blocks of torchvision (ResNet, MobileNet, EfficientNet, ConvNeXt) and timm (ResNet,
    ConvNeXt, EfficientNet, ...) alike; a torchvision block that cannot be traced is found by
    its class. Cached per module.
    """
    key = tuple(id(m) for m in module.modules())
    cached = _RESIDUALS.get(module)
    if cached is None or cached[0] != key:
        found: list[ResidualAddition] = []
        for name, block in module.named_modules():
            if next(block.children(), None) is None or type(block).__module__.startswith(
                "torch.nn."
            ):
                continue  # a leaf, or torch's own containers (Sequential, ...): no addition
            branches = _traced_branches(block)
            if branches is None:
                branches = _torchvision_branch(block)
            found += [ResidualAddition(name, _join(name, b)) for b in branches]
        cached = (key, found)
        _RESIDUALS[module] = cached
    return list(cached[1])


def residual_branches(module: nn.Module) -> list[nn.Module]:
    """The branch module of every residual addition (:func:`residual_additions`); hooking a
    branch's last module scales the gradient of the whole branch. Empty without any."""
    return [module.get_submodule(a.branch) for a in residual_additions(module)]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class _OneLevel(fx.Tracer):
    """Traces one module's own forward; every submodule stays one call."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def _traced_branches(block: nn.Module) -> list[str] | None:
    """Names (relative to ``block``) of the branch modules its own forward adds to a skip
    connection; None when ``torch.fx`` cannot trace it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = _OneLevel().trace(block)
    except Exception:  # noqa: BLE001 - control flow on values, odd inputs: not traceable
        return None
    nodes = list(graph.nodes)
    order = {node: i for i, node in enumerate(nodes)}
    calls: dict[str, int] = {}
    for node in nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    ancestors: dict[fx.Node, set[fx.Node]] = {}
    for node in nodes:
        ancestors[node] = {node}.union(*(ancestors[i] for i in node.all_input_nodes))
    found = []
    for node in nodes:
        is_add = (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or (
            node.op == "call_method" and node.target in _ADD_METHODS
        )
        if not is_add or node.kwargs or len(node.args) != 2:
            continue
        a, b = node.args
        if not isinstance(a, fx.Node) or not isinstance(b, fx.Node):
            continue
        common = [n for n in ancestors[a] & ancestors[b] if n.op != "get_attr"]
        if not common:
            continue
        source = max(common, key=order.__getitem__)  # the latest value both come from
        (skip_steps, _), (branch_steps, branch) = sorted(
            ((_steps(source, a, ancestors), a), (_steps(source, b, ancestors), b)),
            key=lambda pair: pair[0],
        )
        if skip_steps > 1 or branch_steps <= skip_steps:
            continue  # not a skip connection beside a deeper branch
        hooked = _branch_module(branch, source, node, ancestors)
        if hooked is not None and calls[hooked.target] == 1:
            found.append(str(hooked.target))
    return found


def _steps(source: fx.Node, node: fx.Node, ancestors: dict) -> int:
    """Operations on the longest path from ``source`` to ``node``."""
    if node is source:
        return 0
    inputs = [i for i in node.all_input_nodes if source in ancestors[i]]
    return 1 + max(_steps(source, i, ancestors) for i in inputs)


def _branch_module(
    branch: fx.Node, source: fx.Node, add: fx.Node, ancestors: dict
) -> fx.Node | None:
    """The last module call of the branch: ``branch`` itself or the module it comes from
    through single-input steps (a layer scale, a permute) that nothing else reads."""
    node = branch
    while node.op != "call_module":
        inputs = [i for i in node.all_input_nodes if source in ancestors[i]]
        if len(inputs) != 1 or inputs[0] is source or len(node.users) != 1:
            return None
        node = inputs[0]
    return node if node is not source and len(node.users) == 1 else None


def _torchvision_branch(m: nn.Module) -> list[str]:
    """The branch of a torchvision residual block, by its class (for untraceable blocks)."""
    if isinstance(m, BasicBlock):
        return ["bn2"]
    if isinstance(m, Bottleneck):
        return ["bn3"]
    if isinstance(m, CNBlock):
        return ["block"]
    if getattr(m, "use_res_connect", False) is True:
        return [a for a in ("conv", "block") if isinstance(getattr(m, a, None), nn.Module)][:1]
    return []


def check_model_hooks(
    module: nn.Module, ghost: float = 0.0, bn_prior: float = 0.0, skip_gradient: float = 1.0
) -> None:
    """Fail now (one sentence) if the model lacks the layers a switched-on hook needs."""
    if ghost > 0:
        _conv_layers(module)
    if bn_prior > 0:
        _batch_norms(module)
    if skip_gradient < 1 and not residual_branches(module):
        raise ConvsightError(
            "skip-gradient needs residual blocks (a block that adds its input to a branch "
            "computed from it, as in ResNet, MobileNet v2/v3, EfficientNet or ConvNeXt); "
            "the model has none"
        )


class GhostNoise:
    """Multiply every channel of every conv output by 1 + N(0, std^2) while ``rng`` is set.

    A slightly different network each step (Li et al. 2020, "Learning transferable
    adversarial examples via ghost networks", https://arxiv.org/abs/1812.03413): an image
    that only one exact set of weights likes stops paying. Draws come per row from the
    rows' own generators (:class:`RowRandom`), so a row's noise ignores the other rows.
    """

    def __init__(self, module: nn.Module, std: float) -> None:
        self.std = std
        self.rng: RowRandom | None = None
        self.handles = []
        if std > 0:
            self.handles = [c.register_forward_hook(self._hook) for c in _conv_layers(module)]

    def _hook(self, _module: nn.Module, _inputs: object, out: torch.Tensor) -> torch.Tensor | None:
        if self.rng is None or not isinstance(out, torch.Tensor) or out.dim() != 4:
            return None
        noise = self.rng.normal((out.shape[1], 1, 1)).to(out.device, out.dtype)
        return out * (1 + self.std * noise)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


class BatchNormPrior:
    """Per row: how far each batch norm layer's input statistics are from its running ones.

    DeepInversion's feature-distribution prior (Yin et al. 2020, "Dreaming to distill",
    https://arxiv.org/abs/1912.08795), per image instead of per batch so rows stay
    independent: the sum over batch norm layers of ||mean - running mean|| + ||var -
    running var|| (means and variances over positions, per channel). Collected by
    pre-forward hooks while ``active``; ``take`` returns it per row and resets.
    """

    def __init__(self, module: nn.Module, weight: float) -> None:
        self.active = False
        self.total: torch.Tensor | int = 0
        self.handles = []
        if weight > 0:
            self.handles = [
                norm.register_forward_pre_hook(self._hook) for norm in _batch_norms(module)
            ]

    def _hook(self, layer: nn.BatchNorm2d, inputs: tuple) -> None:
        if not self.active:
            return
        x = inputs[0].float()
        mean, var = x.mean((2, 3)), x.var((2, 3), unbiased=False)
        self.total = (
            self.total
            + (mean - layer.running_mean).norm(dim=1)
            + (var - layer.running_var).norm(dim=1)
        )

    def take(self, views: int) -> torch.Tensor | int:
        total, self.total = self.total, 0
        if isinstance(total, int) or views == 1:
            return total
        return total.reshape(views, -1).mean(0)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


class _ScaleGradient(torch.autograd.Function):
    """Identity forward (a copy, so later in-place ops are safe); gradient times ``gamma``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, gamma: float) -> torch.Tensor:  # type: ignore[override]
        ctx.gamma = gamma
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.gamma, None


class SkipGradient:
    """Multiply the gradient through every residual branch by ``gamma`` (values unchanged).

    The skip gradient method (Wu et al. 2020, "Skip connections matter: on the
    transferability of adversarial examples generated with ResNets",
    https://arxiv.org/abs/2002.05990): the image follows more of the gradient that reaches
    it along skip connections, i.e. through fewer nonlinear layers, and less of the
    gradient specific to this network's deep branches. The objective and the network's
    outputs are unchanged; only the ascent direction is. Acts whenever a gradient is
    recorded; on a model without residual blocks it does nothing (``describe`` says so).
    """

    def __init__(self, module: nn.Module, gamma: float) -> None:
        self.gamma = gamma
        self.handles = []
        self.branch_names: list[str] = []
        if gamma < 1:
            self.branch_names = [a.branch for a in residual_additions(module)]
            self.handles = [
                module.get_submodule(name).register_forward_hook(self._hook)
                for name in self.branch_names
            ]
        self.branches = len(self.handles)

    def describe(self) -> str:
        if self.gamma >= 1:
            return ""
        if not self.branches:
            return f"skip gradient {self.gamma:g} off: no residual blocks"
        return f"skip gradient {self.gamma:g} on {self.branches} residual branches"

    def _hook(self, _module: nn.Module, _inputs: object, out: torch.Tensor) -> torch.Tensor | None:
        if not isinstance(out, torch.Tensor) or not out.requires_grad:
            return None
        return _ScaleGradient.apply(out, self.gamma)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
