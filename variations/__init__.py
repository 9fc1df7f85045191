"""Interchangeable model components, one file per kind, all registered in `variations.registry`.

Importing this package imports every kind's module, so the registry is complete afterwards.
"""
from variations import activation, attention, linear, mlp, norm, position, softmax  # noqa: F401  (registers)
from variations import lr_schedule, optimizer  # noqa: F401  (registers the training kinds)
from variations.cost import Cost  # noqa: F401
from variations.registry import KINDS, create, describe, get, knob, names, register  # noqa: F401
