"""Decimal helpers: parsing Bitvavo number strings and formatting them back."""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_HALF_UP, Decimal, InvalidOperation

ZERO = Decimal(0)


def fmt(value: Decimal) -> str:
    """Plain string without exponent or trailing zeros ("75521", "0.015")."""
    if not value:
        return "0"
    text = str(value)  # twice as fast as normalize() + format(); exact unless it has an exponent
    if "E" in text:
        return format(value.normalize(), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def parse_decimal(value: object) -> Decimal | None:
    """A finite Decimal from a JSON string/number, or None when it is not a number."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        value = repr(value)
    try:
        result = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None
    if not result.is_finite():
        return None
    return result


def decimals_of(value: Decimal) -> int:
    exponent = value.normalize().as_tuple().exponent
    return max(0, -int(exponent))


def quantum(decimals: int) -> Decimal:
    return Decimal(1).scaleb(-decimals)


def round_down(value: Decimal, decimals: int) -> Decimal:
    return value.quantize(quantum(decimals), rounding=ROUND_DOWN)


def round_up(value: Decimal, decimals: int) -> Decimal:
    return value.quantize(quantum(decimals), rounding=ROUND_CEILING)


def round_half_up(value: Decimal, decimals: int) -> Decimal:
    return value.quantize(quantum(decimals), rounding=ROUND_HALF_UP)
