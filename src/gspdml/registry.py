"""The one registry class of gspdml: name -> component, for poolings, losses, backbones, datasets.

Each kind of component has one :class:`Registry` instance (``gspdml.pooling.POOLINGS``,
``gspdml.losses.LOSSES``, ``gspdml.models.BACKBONES``, ``gspdml.data.DATASETS``). Names are
case-insensitive. Registering is a decorator or a call::

    from gspdml.pooling import POOLINGS, Pooling

    @POOLINGS.register("mine")
    class MyPooling(Pooling):
        ...

    model_pool = POOLINGS.build("mine", 128, alpha=0.5)

:meth:`Registry.build` checks the keyword arguments against the component's signature and
raises :class:`~gspdml.errors.ConfigError` naming the component and the accepted arguments; an
unknown name raises the one "unknown choice" message listing the valid names.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Iterator, TypeVar

from gspdml.errors import ConfigError, unknown_choice

__all__ = ["Registry", "accepted_arguments", "check_arguments"]

T = TypeVar("T")


def _signature_target(component: Any) -> Callable:
    return component.__init__ if inspect.isclass(component) else component


def accepted_arguments(component: Any, skip: Iterable[str] = ()) -> list[str] | None:
    """The keyword arguments ``component`` (a class or a function) accepts, minus ``skip``.

    A class may define ``accepted_arguments()`` (a classmethod) to say it itself. Returns
    ``None`` when anything is accepted (``**kwargs``) or the signature cannot be read.
    """
    own = getattr(component, "accepted_arguments", None)
    if inspect.isclass(component) and callable(own):
        return [a for a in own() if a not in skip]
    try:
        params = inspect.signature(_signature_target(component)).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    skipped = {"self", *skip}
    return [
        p.name for p in params.values()
        if p.name not in skipped and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def check_arguments(
    kind: str, name: str, component: Any, kwargs: dict, skip: Iterable[str] = (), noun: str = "argument"
) -> None:
    """Raise ConfigError when ``kwargs`` holds a keyword ``component`` does not accept.

    The message names the component and lists what it accepts, e.g. ``pooling 'gem' does not
    accept argument(s) q; accepted arguments: p, clamp_eps`` (``noun`` replaces "argument").
    """
    accepted = accepted_arguments(component, skip)
    if accepted is None:
        return
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            f"{kind} {name!r} does not accept {noun}(s) {', '.join(unknown)}; "
            f"accepted {noun}s: {', '.join(accepted) if accepted else '(none)'}"
        )


class Registry:
    """A case-insensitive table ``name -> component`` (a class or a factory function).

    Args:
        kind: what the registry holds, singular (``"pooling"``, ``"loss"``, ...): used in messages.
        skip_args: leading arguments that :meth:`build` passes positionally and that therefore
            are not checked as keywords (e.g. ``("dim",)`` for poolings).
        noun: what a keyword is called in messages (``"argument"``; losses say ``"setting"``).
    """

    def __init__(self, kind: str, skip_args: Iterable[str] = (), noun: str = "argument") -> None:
        self.kind = kind
        self.skip_args = tuple(skip_args)
        self.noun = noun
        self._items: dict[str, Any] = {}
        self._display: dict[str, str] = {}

    # -- registering ------------------------------------------------------------------------
    @staticmethod
    def key(name: str) -> str:
        return str(name).strip().lower()

    def register(self, name: str, component: Any = None, *, replace: bool = False):
        """Register ``component`` under ``name``; without ``component``, return a decorator.

        Registering a different component under a taken name is a ConfigError unless
        ``replace=True`` (re-registering the same object, e.g. on a module reload, is fine).
        """
        key = self.key(name)
        if not key:
            raise ConfigError(f"{self.kind} registry: the name must be a non-empty string, got {name!r}")

        def decorator(obj: T) -> T:
            old = self._items.get(key)
            same = old is obj or (
                old is not None and getattr(old, "__qualname__", None) == getattr(obj, "__qualname__", object())
                and getattr(old, "__module__", None) == getattr(obj, "__module__", object())
            )
            if old is not None and not same and not replace:
                where = f"{getattr(old, '__module__', '?')}.{getattr(old, '__qualname__', repr(old))}"
                raise ConfigError(f"{self.kind} name {key!r} is already registered to {where}; pass replace=True")
            self._items[key] = obj
            self._display[key] = str(name).strip()
            return obj

        return decorator if component is None else decorator(component)

    def unregister(self, name: str) -> None:
        key = self.key(name)
        self._items.pop(key, None)
        self._display.pop(key, None)

    # -- looking up --------------------------------------------------------------------------
    def get(self, name: str) -> Any:
        """The component registered as ``name``; ConfigError listing the choices otherwise."""
        key = self.key(name)
        if key not in self._items:
            raise unknown_choice(self.kind, name, self.names())
        return self._items[key]

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """``get(name)(*args, **kwargs)``, after checking the keywords against its signature."""
        component = self.get(name)
        self.check(name, kwargs)
        return component(*args, **kwargs)

    def check(self, name: str, kwargs: dict) -> None:
        """ConfigError when the component ``name`` does not accept one of ``kwargs``."""
        component = self.get(name)
        check_arguments(self.kind, self.display_name(name), component, kwargs, self.skip_args, self.noun)

    def display_name(self, name: str) -> str:
        """The name as it was registered (``"PAnchor"`` for ``"panchor"``)."""
        self.get(name)
        return self._display[self.key(name)]

    def arguments(self, name: str) -> list[str] | None:
        """The keyword arguments the component ``name`` accepts (None: anything)."""
        return accepted_arguments(self.get(name), self.skip_args)

    def names(self) -> list[str]:
        """The registered names as they were written (e.g. ``"PAnchor"``), sorted case-insensitively."""
        return sorted(self._display.values(), key=str.lower)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.key(name) in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
