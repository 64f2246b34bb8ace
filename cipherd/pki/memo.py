"""
A bounded memo for what is derived from certificates, names and algorithm
identifiers on every message.

C{functools.lru_cache} keeps any argument it is given: the certificates
and names a message carries are chosen by its sender, and a few hundred of
them a megabyte each would stay in memory for good.  This cache keeps only
arguments (and results) of a modest size, so what it holds is bounded by
C{maxsize} times C{limit} bytes, and computes the rest every time.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from cryptography import x509

_F = TypeVar("_F", bound=Callable[..., Any])

# An ordinary certificate is 1-2 KB, a name well under 1 KB.
LIMIT = 16 * 1024


_MISSING = object()


class _Key(tuple[Any, ...]):
    """
    Arguments with their hash worked out once (a certificate's hash digests
    its DER): the look-up, the move to the end and the insert reuse it.
    """

    _hash: int

    def __new__(cls, args: tuple[Any, ...]) -> _Key:
        key = super().__new__(cls, args)
        key._hash = hash(args)
        return key

    def __hash__(self) -> int:
        return self._hash


def small_lru(maxsize: int, weigh: Callable[..., int], limit: int = LIMIT, *,
              key: Callable[..., Any] | None = None) -> Callable[[_F], _F]:
    """
    Memoize a function of hashable arguments, least recently used first out.

    @param weigh: C{weigh(*args, result)}: the bytes an entry would hold;
        an entry over C{limit} is not kept.
    @param key: C{key(*args)}: what to remember the entry by, when not the
        arguments themselves (an object that keeps more alive than it
        weighs, such as a name that holds its whole certificate).
    """

    by = key

    def decorate(function: _F) -> _F:
        entries: OrderedDict[Any, Any] = OrderedDict()
        lock = threading.Lock()

        @functools.wraps(function)
        def memoized(*args: Any) -> Any:
            key = _Key(args) if by is None else by(*args)
            with lock:
                result = entries.get(key, _MISSING)
                if result is not _MISSING:
                    entries.move_to_end(key)
                    return result
            result = function(*args)
            if weigh(*args, result) <= limit:
                with lock:
                    entries[key] = result
                    if len(entries) > maxsize:
                        entries.popitem(last=False)
            return result

        def cache_clear() -> None:
            with lock:
                entries.clear()

        memoized.cache_clear = cache_clear  # type: ignore[attr-defined]
        memoized.cache_len = entries.__len__  # type: ignore[attr-defined]
        return memoized  # type: ignore[return-value]

    return decorate


# What a parsed extension or name attribute keeps alive in cryptography's
# objects beyond its DER (measured: several hundred bytes to a few KB).
PARSED_OVERHEAD = 1024


def certificate_size(cert: x509.Certificate, _result: Any = None) -> int:
    """
    The weight of an entry keyed by a certificate: its DER, and what the
    extensions the trust checks parse keep alive.
    """
    try:
        extensions = len(cert.extensions)
    except ValueError:
        return LIMIT + 1  # malformed extensions: not worth keeping
    return len(cert.tbs_certificate_bytes) + len(cert.signature) + PARSED_OVERHEAD * extensions


def bytes_size(der: bytes, *rest: Any) -> int:
    """
    The weight of an entry keyed by DER bytes (and small extra arguments).
    """
    return len(der)
