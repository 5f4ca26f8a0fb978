"""How a merge is carried out: one options object for every entry point and the CLI."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any, Literal

from sqlalchemy.exc import ArgumentError

OnConflict = Literal["raise", "delete", "ignore"]
OnSelfReference = Literal["raise", "null"]
SynchronizeMode = Literal["evaluate", "fetch", "expire", False]

ON_CONFLICT: tuple[OnConflict, ...] = ("raise", "delete", "ignore")
ON_SELF_REFERENCE: tuple[OnSelfReference, ...] = ("raise", "null")
SYNCHRONIZE_MODES: tuple[SynchronizeMode, ...] = ("evaluate", "fetch", "expire", False)


def check_options(
    on_conflict: object,
    synchronize_session: object = "evaluate",
    on_self_reference: object = "raise",
) -> None:
    if on_conflict not in ON_CONFLICT:
        raise ArgumentError(
            f"on_conflict must be one of {', '.join(map(repr, ON_CONFLICT))}; got {on_conflict!r}"
        )
    if synchronize_session is True or synchronize_session not in SYNCHRONIZE_MODES:
        raise ArgumentError(
            "synchronize_session must be 'evaluate', 'fetch', 'expire' or False; "
            f"got {synchronize_session!r}"
        )
    if on_self_reference not in ON_SELF_REFERENCE:
        raise ArgumentError(
            f"on_self_reference must be 'raise' or 'null'; got {on_self_reference!r}"
        )


class _UseSessionDefault(enum.Enum):
    USE_SESSION_DEFAULT = "USE_SESSION_DEFAULT"

    def __repr__(self) -> str:
        return "USE_SESSION_DEFAULT"


#: ``synchronize_session=USE_SESSION_DEFAULT`` (the default of ``merge_into``): the
#: ReferencesSession's own ``synchronize_session``, or ``"evaluate"`` on a plain Session
USE_SESSION_DEFAULT = _UseSessionDefault.USE_SESSION_DEFAULT
SessionDefault = Literal[_UseSessionDefault.USE_SESSION_DEFAULT]


@dataclass(frozen=True, slots=True)
class MergeOptions:
    """The choices of one merge; validated when made, extended with :meth:`but`."""

    on_conflict: OnConflict = "raise"
    on_self_reference: OnSelfReference = "raise"
    synchronize_session: SynchronizeMode = "evaluate"
    delete: bool = False
    dry_run: bool = False

    def __post_init__(self) -> None:
        check_options(self.on_conflict, self.synchronize_session, self.on_self_reference)
        for name in ("delete", "dry_run"):
            if not isinstance(getattr(self, name), bool):
                raise ArgumentError(f"{name} must be True or False; got {getattr(self, name)!r}")

    def but(self, **changes: Any) -> MergeOptions:
        """These options with ``changes`` (unchanged options are shared, not copied)."""
        if all(getattr(self, name) == value for name, value in changes.items()):
            return self
        return interned(replace(self, **changes))

    @property
    def fetch(self) -> bool:
        return self.synchronize_session == "fetch"


DEFAULT_OPTIONS = MergeOptions()

#: each distinct options value once: queued merges share them rather than hold their own
_interned: dict[MergeOptions, MergeOptions] = {DEFAULT_OPTIONS: DEFAULT_OPTIONS}


def interned(options: MergeOptions) -> MergeOptions:
    return _interned.setdefault(options, options)


#: merge_options() results by their arguments: the usual call is one dict lookup
_by_arguments: dict[tuple[Any, ...], MergeOptions] = {}


def merge_options(
    on_conflict: Any = "raise",
    on_self_reference: Any = "raise",
    synchronize_session: Any = "evaluate",
    delete: Any = False,
    dry_run: Any = False,
) -> MergeOptions:
    """The interned :class:`MergeOptions` of these arguments (validated, ArgumentError)."""
    arguments = (on_conflict, on_self_reference, synchronize_session, delete, dry_run)
    # 1 == True and 0 == False as dict keys: only exact types may hit the cache
    exact = (
        type(delete) is bool
        and type(dry_run) is bool
        and (synchronize_session is False or type(synchronize_session) is str)
        and type(on_conflict) is str
        and type(on_self_reference) is str
    )
    if exact:
        found = _by_arguments.get(arguments)
        if found is not None:
            return found
    options = interned(MergeOptions(*arguments))
    if exact:
        _by_arguments[arguments] = options
    return options
