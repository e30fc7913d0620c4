"""`once`: a value computed on first access and kept on the instance, for immutable objects.

Like `functools.cached_property` without its per-property lock (Python 3.11 takes an RLock on
every first access; a factory of 1,024 clients makes hundreds of thousands of such accesses). The
objects it serves are immutable and each lives in one thread, so two racing computations would
only compute the same value twice.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Optional, TypeVar, overload

T = TypeVar("T")


class once(Generic[T]):
    """Non-data descriptor: the first access stores the value in the instance's __dict__, which
    later lookups find before the descriptor."""

    def __init__(self, func: Callable[[Any], T]) -> None:
        self.func = func
        self.name = func.__name__
        self.__doc__ = func.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: Optional[type] = None) -> "once[T]": ...

    @overload
    def __get__(self, instance: object, owner: Optional[type] = None) -> T: ...

    def __get__(self, instance: Optional[object], owner: Optional[type] = None) -> "T | once[T]":
        if instance is None:
            return self
        value = self.func(instance)
        instance.__dict__[self.name] = value
        return value
