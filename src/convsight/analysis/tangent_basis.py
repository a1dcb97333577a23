"""An orthonormal basis of the complement of a few orthonormal vectors, from Householder
reflections: the coordinates Lanczos works in for the invariances (the tangent space of a
sphere, or the level set of a response within it)."""

from __future__ import annotations

import numpy as np


def _householder(a: np.ndarray) -> np.ndarray:
    """The unit vector u of the reflection I - 2 u uᵀ that maps a / |a| onto ± the last axis."""
    u = a / np.linalg.norm(a)
    u[-1] += 1.0 if u[-1] >= 0 else -1.0
    return u / np.linalg.norm(u)


class TangentBasis:
    """An orthonormal basis of the complement of orthonormal vectors a_1..a_m (R^(n-m) <->
    R^n): reflection Q_1 maps a_1 onto the last axis, Q_2 the rest of a_2 onto the last axis
    left, and so on; the basis is the first n - m columns of Q_1 Q_2 ... Q_m."""

    def __init__(self, *vectors: np.ndarray) -> None:
        self.us: list[np.ndarray] = []
        for a in vectors:
            self.us.append(_householder(self.restrict(a)) if self.us else _householder(a))

    @staticmethod
    def _reflect(u: np.ndarray, w: np.ndarray) -> np.ndarray:
        return w - 2.0 * u * (u @ w)

    def embed(self, y: np.ndarray) -> np.ndarray:
        for u in reversed(self.us):
            y = self._reflect(u, np.append(y, 0.0))
        return y

    def restrict(self, w: np.ndarray) -> np.ndarray:
        for u in self.us:
            w = self._reflect(u, w)[:-1]
        return w
