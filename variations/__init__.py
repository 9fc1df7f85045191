"""Interchangeable model components, one file per kind, all registered in `variations.registry`.

Importing this package imports every kind's module, so the registry is complete afterwards.
"""
from variations import activation, attention, mlp, norm, position, softmax  # noqa: F401  (registers)
from variations.registry import KINDS, create, describe, get, names, register  # noqa: F401
