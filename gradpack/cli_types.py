"""What every ``gradpack`` subcommand checks its flags with: argparse ``type=`` converters, the
error for a bad flag found after parsing, and the parser that reports either in one line.

A bad flag is a user error: one line on stderr and exit status 2, in the parent process and
before any work starts, never a traceback. A converter raises ``argparse.ArgumentTypeError``
(argparse names the flag); a check after parsing raises :func:`flag_error`'s
``argparse.ArgumentError``, which :func:`gradpack.cli.main` hands to :class:`OneLineParser`.
This module imports nothing but the standard library (``gradpack --help`` stays cheap).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")


class OneLineParser(argparse.ArgumentParser):
    """``prog: error: message`` on one line, exit status 2: argparse's convention without the
    usage block (``-h`` still prints it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())}\n")


def flag_error(flag: str, message: str) -> argparse.ArgumentError:
    """The error for a bad ``flag`` found after parsing, worded as argparse words its own."""
    return argparse.ArgumentError(None, f"argument {flag}: {message}")


def _number(text: str, kind: type[T]) -> T:
    try:
        if kind is int:
            try:
                return int(text)
            except ValueError:
                value = float(text)  # "1e6" is an int too
                if not value.is_integer():
                    raise
                return int(value)
        return kind(text)
    except (TypeError, ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"expected {'an int' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None


def _finite(text: str) -> float:
    value = _number(text, float)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {text!r}")
    return value


def seed(text: str) -> int:
    """A Philox seed, as :mod:`gradpack.kernels.philox` takes them: an int in ``[0, 2**63)``."""
    from gradpack.kernels.philox import SEED_MAX

    value = nonnegative_int(text)
    if value >= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected an int in [0, 2**63), got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = _finite(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    value = _finite(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def one_of(choices: Iterable[str]) -> Callable[[str], str]:
    """Like ``choices=``, for a converter that :func:`list_of` can use."""
    choices = tuple(choices)

    def convert(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(choices)}")
        return text
    return convert


def list_of(convert: Callable[[str], T]) -> Callable[[str], list[T]]:
    """A comma-separated, non-empty list, each item through ``convert``."""
    def convert_list(text: str) -> list[T]:
        items = [item.strip() for item in text.split(",")]
        if not any(items) or not all(items):
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return [convert(item) for item in items]
    return convert_list


def hparam_value(key: str, value: Any) -> Any:
    """An algorithm hyperparameter's value as given: a non-finite float (``inf``, ``nan``) is
    never one, whatever the algorithm."""
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{key} must be finite, got {value!r}")
    return value


def number_or_text(text: str) -> int | float | str:
    """``text`` as an int, else a float, else the text itself (a graph's name)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def key_value(text: str) -> tuple[str, int | float | str]:
    """``KEY=VALUE`` with the value through :func:`number_or_text` (finite if a number)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, hparam_value(key, number_or_text(value.strip()))


def checked_build(build: Callable[..., T], hparams: dict, sources: dict[str, str], flag: str,
                  what: str = "") -> T:
    """``build(**hparams)`` (an algorithm from its hyperparameters), where a ``ValueError`` or
    ``TypeError`` becomes :func:`flag_error` naming ``flag`` if ``build()`` fails without
    them, else the flag (``sources[key]``) of the first hyperparameter that fails on its own,
    else all their flags. A string where a number is wanted (a ``TypeError``) reads "KEY must be a
    number". ``what`` (a run's name) prefixes the message."""
    def fail(flag: str, message: str) -> argparse.ArgumentError:
        return flag_error(flag, f"{what}: {message}" if what else message)

    try:
        return build(**hparams)
    except (ValueError, TypeError) as e:
        error = e
    for key, value in [(None, None), *hparams.items()]:
        try:
            build() if key is None else build(**{key: value})
        except (ValueError, TypeError) as e:
            if isinstance(value, str) and isinstance(e, TypeError):
                raise fail(sources[key], f"{key} must be a number, got {value!r}") from None
            raise fail(flag if key is None else sources[key], one_line(e)) from None
    raise fail("/".join(sorted({sources[k] for k in hparams})) or flag, one_line(error))


def one_line(error: BaseException) -> str:
    """An exception's message as one line (for :func:`flag_error`)."""
    return " ".join(str(error).split()) or type(error).__name__


__all__ = [
    "OneLineParser", "checked_build", "flag_error", "hparam_value", "key_value", "list_of",
    "nonnegative_float", "nonnegative_int", "number_or_text", "one_line", "one_of",
    "positive_float", "positive_int", "seed",
]
