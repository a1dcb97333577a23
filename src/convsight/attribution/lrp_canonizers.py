"""zennit canonizers for torchvision's MobileNetV2, in the style of zennit's ``ResNetCanonizer``.

torchvision's MobileNetV2 pools in its own code (``adaptive_avg_pool2d`` in
``MobileNetV2._forward_impl``) and adds each residual ``InvertedResidual``'s input to its output
in code (``x + self.conv(x)``); no LRP rule covers either. These canonizers give each model and
block a forward that does the same through a module (an ``nn.AdaptiveAvgPool2d``, zennit's
``Sum``), so the composites' rules cover them (average pooling and sums by zennit's ``Norm``
rule: relevance in proportion to the contributions). Removing them deletes the attributes they
set, leaving the modules as they were. Imported only once zennit is known to be installed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual, MobileNetV2
from zennit.canonizers import AttributeCanonizer, CompositeCanonizer, SequentialMergeBatchNorm
from zennit.layer import Sum


class MobileNetV2PoolCanonizer(AttributeCanonizer):
    """The global average pooling of a torchvision MobileNetV2 done by a module."""

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name: str, module: nn.Module) -> dict[str, Any] | None:
        if isinstance(module, MobileNetV2):
            pool = nn.AdaptiveAvgPool2d((1, 1))
            return {"forward": cls.forward.__get__(module), "canonizer_pool": pool}
        return None

    @staticmethod
    def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        """MobileNetV2's forward with its pooling through ``canonizer_pool``."""
        x = self.features(x)
        x = self.canonizer_pool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


class InvertedResidualCanonizer(AttributeCanonizer):
    """The residual sum of a torchvision ``InvertedResidual`` block done by zennit's ``Sum``."""

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name: str, module: nn.Module) -> dict[str, Any] | None:
        if isinstance(module, InvertedResidual) and module.use_res_connect:
            return {"forward": cls.forward.__get__(module), "canonizer_sum": Sum()}
        return None

    @staticmethod
    def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        """The residual block's forward with its sum through ``canonizer_sum``."""
        return self.canonizer_sum(torch.stack([x, self.conv(x)], dim=-1))


class MobileNetV2Canonizer(CompositeCanonizer):
    """For torchvision's MobileNetV2: batch norm merged into the convolution before it (unless
    ``merge_batch_norm`` is off), the pooling and the residual sums done by modules."""

    def __init__(self, merge_batch_norm: bool = True) -> None:
        merge = [SequentialMergeBatchNorm()] if merge_batch_norm else []
        super().__init__((*merge, MobileNetV2PoolCanonizer(), InvertedResidualCanonizer()))


def is_mobilenet_v2(module: nn.Module) -> bool:
    """Whether ``module`` is (or holds) a torchvision MobileNetV2."""
    return any(isinstance(m, MobileNetV2) for m in module.modules())
