"""Bitvavo error codes, texts and HTTP statuses (reference §8), raised as ExchangeError."""

from __future__ import annotations


class ExchangeError(Exception):
    """An error the exchange returns as ``{"errorCode": .., "error": ..}`` with an HTTP status."""

    def __init__(self, error_code: int, error: str, http_status: int = 400) -> None:
        super().__init__(f"{error_code}: {error}")
        self.error_code = error_code
        self.error = error
        self.http_status = http_status

    def to_json(self) -> dict:
        return {"errorCode": self.error_code, "error": self.error}


# Texts as seen on the wire / in ccxt and SDK docs where known; otherwise close paraphrases.
def missing(param: str) -> ExchangeError:
    return ExchangeError(203, f"{param} parameter is required.")


def invalid(param: str, value: object | None = None) -> ExchangeError:
    if value is None:
        return ExchangeError(205, f"{param} parameter is invalid.")
    return ExchangeError(205, f"{param} parameter {value} is invalid.")


def not_supported(param: str) -> ExchangeError:
    return ExchangeError(204, f"{param} parameter is not supported.")


def not_supported_for_type(param: str) -> ExchangeError:
    return ExchangeError(
        202,
        f"{param} order parameter is not supported. Please note that certain parameters "
        "are only allowed for market or limit orders.",
    )


def use_either(a: str, b: str) -> ExchangeError:
    return ExchangeError(
        206, f"Use either {a} or {b}. The usage of both parameters at the same time is not supported."
    )


def amount_too_high(max_amount: str) -> ExchangeError:
    return ExchangeError(210, f"Amount exceeds the maximum allowed amount ({max_amount}).")


def amount_too_low() -> ExchangeError:
    return ExchangeError(212, "Amount is below the minimum allowed amount for this asset.")


def insufficient_balance() -> ExchangeError:
    return ExchangeError(216, "You do not have sufficient balance to complete this operation.")


def notional_too_low() -> ExchangeError:
    return ExchangeError(217, "Minimum order size in quote currency is 5 EUR or 0.001 BTC.")


def client_order_id_conflict() -> ExchangeError:
    return ExchangeError(220, "clientOrderId conflict within the market.")


def rejected(code: int = 230) -> ExchangeError:
    return ExchangeError(code, "The order is rejected by the matching engine.")


def nothing_to_update() -> ExchangeError:
    return ExchangeError(
        232,
        "You must change at least one of amount, amountRemaining, price, timeInForce, "
        "selfTradePrevention or postOnly.",
    )


def order_not_active() -> ExchangeError:
    return ExchangeError(
        233, "Order must be active (status new or partiallyFilled) to allow updating/cancelling."
    )


def market_order_update() -> ExchangeError:
    return ExchangeError(234, "Market orders cannot be updated.")


def too_many_open_orders() -> ExchangeError:
    return ExchangeError(235, "You can only have 100 open orders on each book.")


def amount_and_remaining() -> ExchangeError:
    return ExchangeError(236, "You can only update amount or amountRemaining, not both.")


def missing_stop_params(order_type: str) -> ExchangeError:
    # 237 for market-type trigger orders, 238 for limit-type trigger orders.
    code = 238 if order_type.endswith("Limit") else 237
    return ExchangeError(
        code,
        f"Required parameter(s) missing for {order_type} order: amount or amountQuote, "
        + ("price, " if code == 238 else "")
        + "triggerAmount, triggerType and triggerReference.",
    )


def switch_amount_quote() -> ExchangeError:
    return ExchangeError(239, "You cannot switch between amount and amountQuote while updating an order.")


def order_not_found() -> ExchangeError:
    return ExchangeError(
        240,
        "No order found. Please be aware that simultaneously updating the same order may return this error.",
        404,
    )


def tick_size(tick: str) -> ExchangeError:
    return ExchangeError(422, f"Invalid price tick size. The price must be a multiple of {tick}.")


_STATUS_ERRORS = {
    "halted": (423, "The market is halted."),
    "cancelOnly": (424, "The market is in cancelOnly status: only cancelling orders is allowed."),
    "auction": (425, "The market is in an auction phase. Trading is temporarily restricted."),
    "auctionMatching": (426, "The market is in auctionMatching status."),
}


def market_status(status: str) -> ExchangeError:
    code, text = _STATUS_ERRORS[status]
    return ExchangeError(code, text)


def too_many_decimals(param: str, decimals: int) -> ExchangeError:
    return ExchangeError(429, f"Field '{param}' has too many decimal digits. Maximum is {decimals}.")


def market_data_unavailable(what: str, market: str, status: str) -> ExchangeError:
    state = {"halted": "HALTED", "auction": "AUCTION", "auctionMatching": "AUCTION_MATCHING"}[status]
    return ExchangeError(431, f"{what} is not available for {market} in state {state}", 409)
