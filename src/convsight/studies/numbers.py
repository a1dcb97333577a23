"""What the study reports: the one table of its numbers, read by the parts and the template."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StudyNumbers:
    """The study's reported figures of merit, as printed in the study."""

    mnist_test_accuracy: float
    five_class_train_accuracy: float
    five_class_test_accuracy: float
    vgg16_five_class_test_accuracy: float

    def five_class_json(self) -> dict[str, Any]:
        """The five-class numbers in the shape ``results.json`` records them."""
        return {
            "self_built": {
                "train": self.five_class_train_accuracy,
                "test": self.five_class_test_accuracy,
            },
            "vgg16": {"test": self.vgg16_five_class_test_accuracy},
        }


STUDY = StudyNumbers(
    mnist_test_accuracy=0.982,
    five_class_train_accuracy=0.879,
    five_class_test_accuracy=0.801,
    vgg16_five_class_test_accuracy=0.927,
)
