"""Compressor specs: ``name[:arg[:arg...]]`` strings, parsed into registered classes.

A spec may nest another compressor's spec as its arguments (``randk:0.5:qsgd:1:512:inf``);
at most ``MAX_DEPTH`` compressors in one spec (the nesting is counted before anything is
parsed, so a hostile spec such as ``randk:0.5:`` repeated 2,000 times is a ``ValueError``,
not a ``RecursionError``), and at most ``MAX_LENGTH`` characters."""

from __future__ import annotations

from collections.abc import Callable

from .base import Compressor

_REGISTRY: dict[str, Callable[..., Compressor]] = {}
#: compressors one spec may name (``randk:R:CODE`` needs 2)
MAX_DEPTH = 4
MAX_LENGTH = 1000


def register(name: str):
    """Class decorator: ``from_spec("name:a:b")`` calls ``cls.from_args(["a", "b"], **kw)``."""
    def wrap(cls):
        if name in _REGISTRY:
            raise ValueError(f"compressor {name!r} registered twice")
        _REGISTRY[name] = cls
        cls.name = name
        return cls
    return wrap


def names() -> list[str]:
    return sorted(_REGISTRY)


def from_spec(spec: str, *, backend: str = "auto", check_finite: bool = True) -> Compressor:
    """Build a compressor from its spec, e.g. ``"qsgd:15:512"``, ``"topk:0.01"``, ``"sign"``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"compressor spec must be a non-empty string, got {spec!r}")
    if len(spec) > MAX_LENGTH:
        raise ValueError(f"compressor spec is {len(spec)} characters long; at most {MAX_LENGTH}")
    name, *args = spec.strip().split(":")
    depth = sum(field in _REGISTRY for field in (name, *args))
    if depth > MAX_DEPTH:
        raise ValueError(f"compressor spec {spec[:60]!r}... nests {depth} compressors; at most "
                         f"{MAX_DEPTH}")
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ValueError(f"unknown compressor {name!r} in spec {spec!r}; known: {names()}")
    return cls.from_args(args, backend=backend, check_finite=check_finite)


def parse_int(text: str, what: str, spec: str, lo: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{what} must be an integer in spec {spec!r}, got {text!r}") from None
    if value < lo:
        raise ValueError(f"{what} must be >= {lo} in spec {spec!r}, got {value}")
    return value


def no_args(args: list[str], name: str) -> None:
    if args:
        raise ValueError(f"compressor {name!r} takes no arguments, got {':'.join([name, *args])!r}")
