"""Layer-wise Relevance Propagation (Bach et al. 2015) through zennit's rules and composites.

The rules are zennit's (https://github.com/chr5tphr/zennit, the optional extra
``convsight[lrp]``), not written here. :func:`lrp_context` registers a composite on a model for
the length of a block and takes it off again (zennit's context manager: its hooks removed, its
canonizers' changes to the modules undone), also when the block raises. A model with a layer
zennit has no rule for, or that pools in its own code (outside every module, found by one
forward pass: :mod:`convsight.attribution.lrp_code`), is refused before any work
(:func:`check_lrp_support`); torchvision's MobileNetV2 gets a canonizer that pools and adds its
residuals through modules (:mod:`convsight.attribution.lrp_canonizers`).

Relevance starts at the output as ``output * d score / d output`` (:func:`output_relevance`):
for a class, the class's logit at its place and zero elsewhere, so with the epsilon rule on a
bias-free network the input relevance sums to the target's score.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Annotated, Any, Literal, cast, get_args
from weakref import WeakKeyDictionary

import torch
from torch import nn

from convsight.attribution.base import Method
from convsight.attribution.lrp_code import CodeOps, find_code_ops
from convsight.engines import memory_format_for, select
from convsight.errors import ConvsightError
from convsight.layers import require_hookable
from convsight.models import Model
from convsight.models.extras import import_extra
from convsight.targets import TargetLike, Targets

CompositeName = Literal["epsilon_plus_flat", "epsilon_gamma_box"]
"""zennit's composites offered: EpsilonPlusFlat (flat rule on the first layer, z+ on the other
convolutions, epsilon on linear layers) and EpsilonGammaBox (z-box on the first convolution,
gamma on the others, epsilon on linear layers)."""
COMPOSITES: tuple[str, ...] = get_args(CompositeName)
RULES_COVER = (
    "convolutions, linear layers, batch norm, activations, pooling, flatten, dropout and identity"
)


def zennit(part: str = "") -> ModuleType:
    """zennit (or its submodule ``part``); a missing install names the ``lrp`` extra."""
    return import_extra(f"zennit.{part}" if part else "zennit", "LRP", "lrp", ("zennit",))


def supported_layers() -> tuple[type, ...]:
    """The leaf module types LRP can pass: those zennit's composites give a rule (or pass
    through as they should: max pooling routes relevance like its gradient)."""
    types, layer = zennit("types"), zennit("layer")
    return (
        types.Convolution,
        types.Linear,
        types.BatchNorm,
        types.Activation,
        types.AvgPool,
        types.MaxPool,
        layer.Sum,
        nn.Flatten,
        nn.Unflatten,
        nn.modules.dropout._DropoutNd,
        nn.Identity,
    )


def check_lrp_support(model: Model, canonize: bool = True) -> None:
    """Refuse, in one sentence and before any work, a model with a layer zennit has no rule
    for (a leaf module of another type), or one that pools in its own code where no canonizer
    puts the pooling in a module (see :func:`code_ops`)."""
    require_hookable(model.module)
    supported = supported_layers()
    for name, module in model.module.named_modules():
        leaf = next(module.children(), None) is None and type(module) is not nn.Module
        if leaf and not isinstance(module, supported):
            where = f"layer '{name}'" if name else "the model itself"
            raise ConvsightError(
                f"LRP has no rule for {where} ({type(module).__name__}) of model "
                f"'{model.card.name}': zennit's rules cover {RULES_COVER}"
            )
    pools = code_ops(model, canonize).pools
    if pools:
        op, where = pools[0]
        raise ConvsightError(
            f"model '{model.card.name}' pools in its own code ({op} in {where}): LRP's rules "
            "cannot cover it, they cover pooling done by a module (nn.AvgPool2d, "
            "nn.AdaptiveAvgPool2d, nn.MaxPool2d, ...)"
        )


_CODE_OPS: WeakKeyDictionary[nn.Module, dict[bool, CodeOps]] = WeakKeyDictionary()


def code_ops(model: Model, canonize: bool = True) -> CodeOps:
    """What the model does in its own code, outside the modules LRP has rules for, with its
    canonizers applied: one forward pass on a zero input of the model's size (once per module
    and ``canonize``; batch norm is not merged for it), the module put back as it was after."""
    known = _CODE_OPS.setdefault(model.module, {})
    if canonize not in known:
        canonizers = structural(canonizers_for(model, canonize)[0])
        instances = [instance for c in canonizers for instance in c.apply(model.module)]
        try:
            known[canonize] = find_code_ops(model.module, model.example_input())
        finally:
            for instance in reversed(instances):
                instance.remove()
    return known[canonize]


def has_batch_norm(module: nn.Module) -> bool:
    """Whether ``module`` holds a batch norm layer."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def unmerged_batch_norms(module: nn.Module) -> list[str]:
    """The batch norm layers that do not follow a convolution or linear layer directly (in
    module order, as zennit's canonizer walks them): not merged, their relevance passes them
    unchanged."""
    found, last = [], None
    for name, leaf in module.named_modules():
        if next(leaf.children(), None) is not None:
            continue
        after_linear = isinstance(last, (nn.modules.conv._ConvNd, nn.Linear))
        if isinstance(leaf, nn.modules.batchnorm._BatchNorm) and not after_linear:
            found.append(name)
        last = leaf
    return found


def structural(canonizers: list[Any]) -> list[Any]:
    """The canonizers that change what the model computes in code (a residual sum or pooling
    through a module), without those that merge batch norm (which change only weights)."""
    merge, composite = zennit("canonizers").MergeBatchNorm, zennit("canonizers").CompositeCanonizer
    found = []
    for canonizer in canonizers:
        if isinstance(canonizer, composite):
            found += structural(list(canonizer.canonizers))
        elif not isinstance(canonizer, merge):
            found.append(canonizer)
    return found


def canonizers_for(model: Model, canonize: bool) -> tuple[list[Any], str | None]:
    """zennit's canonizers for the model and their name: for a torchvision MobileNetV2, its
    pooling and residual sums as modules (:class:`MobileNetV2Canonizer`; batch norm merged too
    unless ``canonize`` is off); else none without batch norm (or with ``canonize`` off);
    torchvision's ResNet canonizer (batch norm merged, residual sums as modules) where the
    model has torchvision ResNet blocks; else batch norm merged into the linear layer right
    before it (SequentialMergeBatchNorm)."""
    vision = zennit("torchvision")
    from convsight.attribution import lrp_canonizers

    if lrp_canonizers.is_mobilenet_v2(model.module):
        name = "MobileNetV2Canonizer" + ("" if canonize else " (batch norm not merged)")
        return [lrp_canonizers.MobileNetV2Canonizer(merge_batch_norm=canonize)], name
    if not canonize or not has_batch_norm(model.module):
        return [], None
    from torchvision.models.resnet import BasicBlock, Bottleneck

    if any(isinstance(m, (BasicBlock, Bottleneck)) for m in model.module.modules()):
        return [vision.ResNetCanonizer()], "ResNetCanonizer"
    return [zennit("canonizers").SequentialMergeBatchNorm()], "SequentialMergeBatchNorm"


def composite_name(name: str) -> CompositeName:
    """``name`` as one of :data:`COMPOSITES`; another is refused in one sentence."""
    if name not in COMPOSITES:
        raise ConvsightError(f"unknown LRP composite '{name}': choose {' or '.join(COMPOSITES)}")
    return cast(CompositeName, name)


def make_composite(model: Model, name: str, canonize: bool = True) -> tuple[Any, str | None]:
    """zennit's composite ``name`` for ``model`` with its canonizers, and their name."""
    if name not in COMPOSITES:
        raise ConvsightError(f"unknown LRP composite '{name}' ({', '.join(COMPOSITES)})")
    composites = zennit("composites")
    canonizers, canonizer = canonizers_for(model, canonize)
    if name == "epsilon_gamma_box":
        corner = torch.zeros(1, model.card.channels, 1, 1, device=model.device)
        low, high = model.normalize(corner), model.normalize(corner + 1)
        return composites.EpsilonGammaBox(low=low, high=high, canonizers=canonizers), canonizer
    return composites.EpsilonPlusFlat(canonizers=canonizers), canonizer


@contextmanager
def lrp_context(model: Model, name: str, canonize: bool = True) -> Iterator[str | None]:
    """Register composite ``name`` on the model inside the block (checked first: a layer
    without a rule is refused); yields the canonizer's name. On exit zennit removes its hooks
    and undoes its canonizers, leaving the module as it was."""
    check_lrp_support(model, canonize)
    composite, canonizer = make_composite(model, name, canonize)
    with composite.context(model.module):
        yield canonizer


def score_gradient(output: torch.Tensor, targets: Targets) -> torch.Tensor:
    """``d score / d output`` of each row's target, taken on a detached copy of ``output``."""
    out = output.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(select(out, targets).sum(), out)
    return grad


def output_relevance(output: torch.Tensor, targets: Targets) -> torch.Tensor:
    """The relevance LRP starts from: ``output * d score / d output`` per row, which sums to
    the score for a class, a margin, a mask of class scores or an output index."""
    return output.detach() * score_gradient(output, targets)


def lrp_relevance(
    model: Model, x: torch.Tensor, targets: Targets, name: str, canonize: bool = True
) -> tuple[torch.Tensor, str | None]:
    """Input relevance (shaped like ``x``, the model's normalized input) of each row's target
    under composite ``name``, and the canonizer used."""
    with lrp_context(model, name, canonize) as canonizer, torch.enable_grad():
        x = x.detach().requires_grad_(True)
        output = model.module(x)
        (relevance,) = torch.autograd.grad(output, x, output_relevance(output, targets))
    return relevance, canonizer


class LRP(Method):
    """Layer-wise Relevance Propagation (Bach et al. 2015), through zennit's composites.

    https://doi.org/10.1371/journal.pone.0130140 — each layer passes the relevance of its
    output down to its inputs by a rule (zennit's): ``epsilon_plus_flat`` (default) or
    ``epsilon_gamma_box`` (VGG-style, Montavon et al. 2019). A model with batch norm has it
    merged into the convolution before it first (zennit's canonizers; torchvision ResNets also
    get their residual sums as modules) unless ``canonize`` is off; torchvision MobileNetV2s
    always get their pooling and residual sums as modules; ``last_run`` records which, and how
    many sums of two tensors ran in the model's own code, outside every rule
    (``sums_outside_rules``: their relevance passes as the gradient, not conserved). The map is
    the relevance of the model's (normalized) input, per pixel and colour; a model with a layer
    zennit has no rule for, or that pools in its own code, is refused before any work. Needs
    ``convsight[lrp]``.
    """

    name = "lrp"
    title = "LRP"
    paper = "https://doi.org/10.1371/journal.pone.0130140"

    def attribute(
        self, inputs: torch.Tensor, target: TargetLike = None, **options: Any
    ) -> torch.Tensor:
        """As :meth:`Method.attribute`; a model with a layer zennit has no rule for is
        refused first, before any forward pass."""
        check_lrp_support(self.model, bool(options.get("canonize", True)))
        return super().attribute(inputs, target, **options)

    def _attribute(
        self,
        inputs: torch.Tensor,
        targets: Targets,
        *,
        composite: Annotated[CompositeName, "zennit's rules per layer type"] = "epsilon_plus_flat",
        canonize: Annotated[bool, "merge batch norm into the layer before it first"] = True,
    ) -> torch.Tensor:
        layout, _ = memory_format_for(self.model)
        x = self.model.normalize(inputs).contiguous(memory_format=layout)
        relevance, canonizer = lrp_relevance(self.model, x, targets, composite, canonize)
        unmerged = unmerged_batch_norms(self.model.module) if canonizer and canonize else []
        self.last_run.update(
            composite=composite,
            canonizer=canonizer,
            unmerged_batch_norms=unmerged,
            sums_outside_rules=code_ops(self.model, canonize).sums,
        )
        return relevance.contiguous()
