"""Name -> factory registries (one per kind: tokenizers, generators, extractors).

Modelled on timm's ``_registry``: a name is registered once (a duplicate raises), names
carry their size (``sdvae-f8``), and ``create(name, **overrides)`` builds the object.
A user's own class is reachable without registration as ``"package.module:Class"``.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable


class Registry:
    """A dict of factories that refuses duplicate names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._factories: dict[str, Callable[..., Any]] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str = "") -> Callable[[Callable], Callable]:
        """Decorator: register ``fn`` (a class or a function returning one) under ``name``."""

        def deco(fn: Callable) -> Callable:
            if name in self._factories:
                raise KeyError(f"{self.kind} {name!r} is already registered (by {self._factories[name]!r})")
            self._factories[name] = fn
            doc = (fn.__doc__ or "").strip()
            self._help[name] = help or (doc.splitlines()[0] if doc else "")
            return fn

        return deco

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._factories)

    def help(self, name: str) -> str:
        """One-line description of a registered name."""
        return self._help.get(name, "")

    def __contains__(self, name: str) -> bool:
        return name in self._factories

    def get(self, name: str) -> Callable[..., Any]:
        """The factory for a registered name or a ``module:Class`` path."""
        if name in self._factories:
            return self._factories[name]
        if ":" in name:
            return import_object(name)
        close = difflib.get_close_matches(name, self.names(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(
            f"unknown {self.kind} {name!r}.{hint} Registered: {', '.join(self.names())}. "
            f"A class of your own is given as 'package.module:ClassName'."
        )

    def create(self, name: str, **kwargs: Any) -> Any:
        """Build the object registered as ``name`` (or imported from ``module:Class``)."""
        return self.get(name)(**kwargs)


def import_object(path: str) -> Any:
    """Import ``"package.module:attr"`` with an error that says what went wrong."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{path!r} is not of the form 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        missing = getattr(e, "name", None)
        if missing and not (module_name == missing or module_name.startswith(missing + ".")):
            # the module was found; something it imports is not installed (re-raised: the traceback shows the line)
            raise ImportError(f"module {module_name!r} (for {path!r}) imports {missing!r}, which is not installed here: "
                              f"{e}. Install it into this environment (.venv/bin/pip install ...)") from e
        raise ImportError(f"cannot import module {module_name!r} for {path!r}: {e}. Is it on PYTHONPATH? (the "
                          f"folder that holds {module_name.split('.')[0]}/ or {module_name.split('.')[0]}.py)") from e
    except SyntaxError as e:  # the user's file, not a frame of the traceback: name it here
        raise ImportError(f"module {module_name!r} (for {path!r}) does not compile: {e.msg} at {e.filename}, line "
                          f"{e.lineno}") from e
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ImportError(f"module {module_name!r} has no attribute {attr!r} (from {path!r})") from None


def require_positive(**values: Any) -> None:
    """ValueError naming the first of ``values`` (a constructor's sizes, counts and bases) that is not above zero;
    None is an unset option and passes.

    Constructors call it first: a zero or negative size otherwise builds an empty layer that runs (FlowMo with
    ``latent_tokens: 0`` encodes nothing and a bench records it), fails later as a shape error naming no option,
    or divides by zero (a RoPE base below zero gives NaN positions)."""
    for name, value in values.items():
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
