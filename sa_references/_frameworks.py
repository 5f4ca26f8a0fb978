"""Sessions of the frameworks that host SQLAlchemy, combined with ReferencesSession.

Flask-SQLAlchemy builds its sessions as ``class_(db=db, **options)``, and its own
``Session`` routes every statement by the model's ``__bind_key__``.  Given
``session_options={"class_": ReferencesSession}``, the session made is a class
combining both (cached), so the queue works and the routing is kept.
"""

from __future__ import annotations

from typing import Any

#: by ReferencesSession subclass: that class combined with Flask-SQLAlchemy's Session
_combined: dict[type, type] = {}


def session_class_for(cls: type, kwargs: dict[str, Any]) -> type:
    """The class to instantiate for ``cls(**kwargs)``: ``cls`` itself, or ``cls`` combined
    with Flask-SQLAlchemy's Session when that is who asks (``db=`` given)."""
    if "db" not in kwargs:
        return cls
    try:
        from flask_sqlalchemy.session import Session as FlaskSession
    except ImportError:
        return cls  # not Flask-SQLAlchemy's db: Session reports the unknown argument
    if issubclass(cls, FlaskSession):
        return cls
    try:
        return _combined[cls]
    except KeyError:
        combined = type(cls.__name__, (cls, FlaskSession), {"__module__": cls.__module__})
        combined.__qualname__ = f"{cls.__qualname__}[flask_sqlalchemy]"
        _combined[cls] = combined
        return combined
