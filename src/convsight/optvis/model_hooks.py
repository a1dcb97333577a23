"""Render-time hooks on the model itself: a perturbed network each step (ghost noise), a
prior on the statistics the network sees (batch norm inputs), and a damped gradient through
residual branches (skip gradient).

A render takes its model hooks as a sequence of context managers and enters them all for its
duration (:func:`entered`), without knowing their kinds; a recipe builds the sequence from
the settings. A hook registers its PyTorch hooks when entered and removes them on exit, also
on an exception. A :class:`ModelHook` may also act around each forward pass of a step
(:meth:`ModelHook.around_pass`), change the objective that pass computed
(:meth:`ModelHook.adjust`) and describe itself; any other context manager is entered only.
"""

from __future__ import annotations

import contextlib
import operator
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import torch
from torch import fx, nn
from torch.utils.hooks import RemovableHandle
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
        if hooked is not None and calls[str(hooked.target)] == 1:
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


_Hook = TypeVar("_Hook", bound="ModelHook")


class ModelHook(contextlib.AbstractContextManager):
    """A hook on the model for one render: :meth:`register` makes its PyTorch hooks when the
    render enters it (a model without the layers it needs fails there, before any step) and
    exit removes them, also on an exception. Per forward pass it may act while
    :meth:`around_pass` is entered and change the pass's objective in :meth:`adjust`."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.handles: list[RemovableHandle] = []

    def register(self) -> Iterator[RemovableHandle]:
        """The hooks on :attr:`module`, made one at a time (none by default)."""
        return iter(())

    def __enter__(self: _Hook) -> _Hook:
        try:
            for handle in self.register():
                self.handles.append(handle)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Remove the hooks (again: a no-op)."""
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def around_pass(self, rng: RowRandom) -> contextlib.AbstractContextManager[Any]:
        """Entered around one forward pass of some rows; ``rng`` draws their randomness in
        the pass's order (after the transforms'). Does nothing by default."""
        return contextlib.nullcontext()

    def adjust(self, total: torch.Tensor, views: int) -> torch.Tensor:
        """The objective per row of the pass just run (``views`` views per row), changed."""
        return total

    def describe(self) -> str:
        """A note for the render's description ("" for none)."""
        return ""


@contextlib.contextmanager
def entered(hooks: Sequence[contextlib.AbstractContextManager[Any]]) -> Iterator[None]:
    """Enter ``hooks`` in order and exit them in reverse, also when one fails to enter."""
    with contextlib.ExitStack() as stack:
        for hook in hooks:
            stack.enter_context(hook)
        yield


def pass_hooks(hooks: Sequence[object]) -> list[ModelHook]:
    """The hooks of ``hooks`` that act per forward pass."""
    return [hook for hook in hooks if isinstance(hook, ModelHook)]


@contextlib.contextmanager
def _setting(owner: object, name: str, value: object, after: object) -> Iterator[None]:
    """``owner.name`` is ``value`` while entered and ``after`` once left."""
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, after)


class GhostNoise(ModelHook):
    """Multiply every channel of every conv output by 1 + N(0, std^2) during each pass.

    A slightly different network each step (Li et al. 2020, "Learning transferable
    adversarial examples via ghost networks", https://arxiv.org/abs/1812.03413): an image
    that only one exact set of weights likes stops paying. Draws come per row from the
    rows' own generators (:class:`RowRandom`), so a row's noise ignores the other rows.
    """

    def __init__(self, module: nn.Module, std: float) -> None:
        super().__init__(module)
        self.std = std
        self.rng: RowRandom | None = None

    def register(self) -> Iterator[RemovableHandle]:
        if self.std > 0:
            for conv in _conv_layers(self.module):
                yield conv.register_forward_hook(self._hook)

    def around_pass(self, rng: RowRandom) -> contextlib.AbstractContextManager[None]:
        return _setting(self, "rng", rng, None)

    def _hook(self, _module: nn.Module, _inputs: object, out: torch.Tensor) -> torch.Tensor | None:
        if self.rng is None or not isinstance(out, torch.Tensor) or out.dim() != 4:
            return None
        noise = self.rng.normal((out.shape[1], 1, 1)).to(out.device, out.dtype)
        return out * (1 + self.std * noise)


class BatchNormPrior(ModelHook):
    """Per row: how far each batch norm layer's input statistics are from its running ones.

    DeepInversion's feature-distribution prior (Yin et al. 2020, "Dreaming to distill",
    https://arxiv.org/abs/1912.08795), per image instead of per batch so rows stay
    independent: the sum over batch norm layers of ||mean - running mean|| + ||var -
    running var|| (means and variances over positions, per channel). Collected by
    pre-forward hooks while ``active`` (during each pass); ``take`` returns it per row and
    resets; :meth:`adjust` subtracts ``weight`` times it from the pass's objective.
    """

    def __init__(self, module: nn.Module, weight: float) -> None:
        super().__init__(module)
        self.weight = weight
        self.active = False
        self.total: torch.Tensor | int = 0

    def around_pass(self, rng: RowRandom) -> contextlib.AbstractContextManager[None]:
        return _setting(self, "active", True, False)

    def register(self) -> Iterator[RemovableHandle]:
        norms = _batch_norms(self.module) if self.weight > 0 else []
        return (norm.register_forward_pre_hook(self._hook) for norm in norms)

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

    def adjust(self, total: torch.Tensor, views: int) -> torch.Tensor:
        if not self.handles:
            return total
        return total - self.weight * self.take(views)


class _ScaleGradient(torch.autograd.Function):
    """Identity forward (a copy, so later in-place ops are safe); gradient times ``gamma``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, gamma: float) -> torch.Tensor:
        ctx.gamma = gamma
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.gamma, None


class SkipGradient(ModelHook):
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
        super().__init__(module)
        self.gamma = gamma
        self.branch_names: list[str] = []
        self.branches = 0

    def register(self) -> Iterator[RemovableHandle]:
        if self.gamma < 1:
            self.branch_names = [a.branch for a in residual_additions(self.module)]
            self.branches = len(self.branch_names)
            for name in self.branch_names:
                yield self.module.get_submodule(name).register_forward_hook(self._hook)

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
