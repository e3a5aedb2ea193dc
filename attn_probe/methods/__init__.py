"""Explanation methods: token importance for one target, attention-derived and gradient / perturbation based.

Every method follows the contract of ``base.py`` and is listed by :func:`list_methods`.
"""

# Importing a method module registers its methods.
from attn_probe.methods import alti as alti  # importing registers it (a line of its own: `as` keeps it apart)
from attn_probe.methods import attention, flow, gradient, perturbation  # noqa: F401  (importing registers them)
from attn_probe.methods.base import (
    METHOD_FAMILIES,
    ExplainContext,
    Explanation,
    MethodInfo,
    explain,
    get_method,
    list_methods,
    register,
)

__all__ = [
    "METHOD_FAMILIES",
    "ExplainContext",
    "Explanation",
    "MethodInfo",
    "explain",
    "get_method",
    "list_methods",
    "register",
]
