"""Integer arguments checked against the range of the C++ type they are passed as."""
from __future__ import annotations

from . import _core


def int_in(name: str, value: int, lo: int, hi: int) -> int:
    """`value` if it is an integer in [lo, hi], the range of the C++ type it goes into: a
    moxin.Error naming the parameter instead of the binding's generic TypeError. (What values
    make sense is the engine's to check, with its own messages.)"""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise _core.Error(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def int32(name: str, value: int) -> int:
    return int_in(name, value, -(2**31), 2**31 - 1)


def uint64(name: str, value: int) -> int:
    return int_in(name, value, 0, 2**64 - 1)
