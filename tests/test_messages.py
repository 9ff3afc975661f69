"""Every message type round-trips through the wire format; the decoder rejects the rest."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.stubs import event
from tradestack.errors import PoisonMessage
from tradestack.messages import Message, decode, derive_id, encode, message_types

decimals = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False, places=8, min_value=Decimal("-1e12"), max_value=Decimal("1e12")),
    # values whose str() has an exponent: the encoder must still write them plainly
    st.sampled_from([Decimal("1E-8"), Decimal("0E-8"), Decimal("1E+3"), Decimal("-2.5E+12"), Decimal("1.23E-7")]),
)
PLAIN_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")
text = st.text(min_size=1, max_size=20)
ints = st.integers(min_value=0, max_value=2**53)


def strategy_for(annotation: Any) -> st.SearchStrategy[Any]:
    """A hypothesis strategy from a field's type, with decimals for money."""
    from typing import Literal, Union, get_args, get_origin

    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Literal:
        return st.sampled_from(args)
    if origin in (Union, type(int | None)):
        return st.one_of(*(strategy_for(a) for a in args))
    if annotation is type(None):
        return st.none()
    if origin is list:
        return st.lists(strategy_for(args[0]), max_size=4)
    if origin is tuple:
        return st.tuples(*(strategy_for(a) for a in args))
    if origin is dict:
        return st.dictionaries(text, strategy_for(args[1]), max_size=3)
    if getattr(annotation, "__metadata__", None) is not None or annotation is Decimal:
        return decimals
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return ints
    if annotation is float:
        return st.floats(allow_nan=False, allow_infinity=False, width=64)
    if annotation is str:
        return text
    if isinstance(annotation, type) and issubclass(annotation, Message.__mro__[1]):  # nested model (Trace, ...)
        return st.builds(annotation, **{n: strategy_for(f.annotation) for n, f in annotation.model_fields.items()})
    raise TypeError(f"no strategy for {annotation!r}")


def message_strategy(cls: type[Message]) -> st.SearchStrategy[Message]:
    fields = {name: strategy_for(f.annotation) for name, f in cls.model_fields.items() if name != "v"}
    return st.builds(cls, **fields)


def assert_money_written_plainly(value: Any, wire: Any, path: str = "") -> None:
    """Every Decimal of the message is a JSON string of digits on the wire: no exponent, not a number."""
    if isinstance(value, Decimal):
        assert isinstance(wire, str) and PLAIN_DECIMAL.fullmatch(wire), f"{path}: {wire!r} is not a plain decimal string"
    elif isinstance(value, dict):
        assert isinstance(wire, dict) and wire.keys() == value.keys(), path
        for key, item in value.items():
            assert_money_written_plainly(item, wire[key], f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        assert isinstance(wire, list) and len(wire) == len(value), path
        for i, item in enumerate(value):
            assert_money_written_plainly(item, wire[i], f"{path}[{i}]")


def test_money_check_catches_an_exponent() -> None:
    assert_money_written_plainly({"a": [Decimal("1E-8")]}, {"a": ["0.00000001"]})
    for wire in ({"a": ["1E-8"]}, {"a": ["1e-8"]}, {"a": [1e-08]}):
        with pytest.raises(AssertionError):
            assert_money_written_plainly({"a": [Decimal("1E-8")]}, wire)


@pytest.mark.parametrize("mtype", sorted(message_types()))
def test_every_message_type_round_trips(mtype: str) -> None:
    cls = message_types()[mtype]

    @settings(max_examples=60, deadline=None)
    @given(message_strategy(cls))
    def round_trip(msg: Message) -> None:
        fields = encode(msg)
        assert fields[b"type"] == mtype.encode()
        assert_money_written_plainly(msg.model_dump(), orjson.loads(fields[b"data"]))
        back = decode(fields)
        assert back == msg and type(back) is cls

    round_trip()


def test_decode_rejects_unknown_fields_types_versions_and_floats() -> None:
    good = encode(event(1))
    data = good[b"data"]
    cases = {
        "unknown message type": {b"type": b"nope", b"data": data},
        "missing field(s) v": {b"type": b"event", b"data": data.replace(b',"v":1', b"")},
        "version 2 is not supported": {b"type": b"event", b"data": data.replace(b'"v":1', b'"v":2')},
        "Extra inputs": {b"type": b"event", b"data": data[:-1] + b',"x":1}'},
    }
    for expected, fields in cases.items():
        with pytest.raises(PoisonMessage, match=re.escape(expected)):
            decode(fields)
    from tradestack.messages import BookTopUpdated, Trace

    top = BookTopUpdated(id="1", ts=1, src="t", trace=Trace(id="t", ts=1), market="BTC-EUR", bid="1", bid_size="1",
                         ask="2", ask_size="1", mid="1.5", spread_bps="10", nonce=1, exchange_ts=1)
    as_float = encode(top)[b"data"].replace(b'"bid":"1"', b'"bid":1.0')
    with pytest.raises(PoisonMessage, match="not a JSON number"):
        decode({b"type": b"market.book_top", b"data": as_float})


def test_small_amounts_are_written_without_exponents() -> None:
    from tradestack.messages import BookTopUpdated, Trace

    top = BookTopUpdated(id="1", ts=1, src="t", trace=Trace(id="t", ts=1), market="SHIB-EUR",
                         bid=Decimal("0.00000001"), bid_size="1E+3", ask="0.00000002", ask_size="1",
                         mid="0.000000015", spread_bps="6666.67", nonce=1, exchange_ts=1)
    data = encode(top)[b"data"]
    assert b'"bid":"0.00000001"' in data and b'"bid_size":"1000"' in data


@given(st.text(max_size=40), st.text(max_size=10))
def test_derived_ids_are_uuid5(parent: str, tag: str) -> None:
    import uuid

    from tradestack.messages import ID_NAMESPACE

    assert derive_id(parent, tag) == str(uuid.uuid5(ID_NAMESPACE, f"{parent}/{tag}"))


def test_derived_ids_are_stable_and_distinct() -> None:
    assert derive_id("a", "out") == derive_id("a", "out")
    assert derive_id("a", "out") != derive_id("a", "intent") != derive_id("b", "out")
