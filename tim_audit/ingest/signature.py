"""Tencent's callback authentication.

``Sign`` is the lowercase hex SHA-256 of the console token followed by
``RequestTime`` (Unix seconds): a plain concatenation, not an HMAC, and it
does not cover the body. A RequestTime too far from our clock is refused so
that a captured request cannot be replayed later.
"""

import hashlib
import hmac
import re
import time

_SECONDS = re.compile(r"[0-9]{1,15}")


class SignatureError(Exception):
    """Base of the reasons a request is not authentic."""


class BadRequestTime(SignatureError):
    """RequestTime is missing or not a whole number of seconds."""


class StaleRequestTime(SignatureError):
    """RequestTime is further from our clock than the window allows."""


class BadSign(SignatureError):
    """Sign is missing or matches no configured token."""


def sign(token, request_time):
    return hashlib.sha256(f"{token}{request_time}".encode("utf-8")).hexdigest()


def check(tokens, given_sign, request_time, max_age):
    """Raise a SignatureError unless ``given_sign`` was made with one of
    ``tokens`` for a ``request_time`` within ``max_age`` seconds of now.

    Every token is compared, in constant time, so neither the position of a
    matching token nor a matching prefix shows in the timing.
    """
    if request_time is None or not _SECONDS.fullmatch(request_time):
        raise BadRequestTime("RequestTime is missing or not an integer number of seconds")
    skew = int(time.time()) - int(request_time)
    if abs(skew) > max_age:
        raise StaleRequestTime(
            f"RequestTime is {abs(skew)} s {'behind' if skew > 0 else 'ahead of'}"
            f" this server's clock; at most {max_age} s is allowed"
        )
    given = (given_sign or "").lower().encode("utf-8")
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(sign(token, request_time).encode("ascii"), given)
    if not given_sign or not matched:
        raise BadSign("Sign is missing or does not match the callback token")
