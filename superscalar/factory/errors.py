"""Errors of the factory model: bad parameters or inputs are ValueErrors, named by what is wrong."""


class FactoryError(ValueError):
    """Base class of the factory model's errors."""


class ParamsError(FactoryError):
    """Factory parameters or client terms are invalid."""


class ExhaustedError(FactoryError):
    """No Decker-Wattenhofer state is left to advance to."""
