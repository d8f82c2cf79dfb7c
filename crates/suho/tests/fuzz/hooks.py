"""Schemathesis hooks of suho's fuzz run (crates/suho/tests/fuzz.rs).

The OpenAPI document states every rule of one field. This file holds the one rule between two
fields that JSON Schema cannot state, as the document's description of `OpenTradeRequest`
gives it: with both stops, `stop_loss` is below `take_profit` for a BUY and above it for a
SELL (anything else is a 422 on `stop_loss`, as the contract requires). Generated cases whose
body breaks it are dropped, so that a 422 for them is not reported as a valid request refused; every
other generated body is sent.
"""

import numbers

import schemathesis


def _stops_on_the_wrong_side(body):
    if not isinstance(body, dict):
        return False
    side, sl, tp = body.get("type"), body.get("stop_loss"), body.get("take_profit")
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in (sl, tp)):
        return False
    return (side == "BUY" and sl >= tp) or (side == "SELL" and sl <= tp)


# `filter_case` runs in every phase (examples, coverage, fuzzing, stateful).
@schemathesis.hook("filter_case").apply_to(method="POST", path="/api/trade/open")
def stops_on_the_right_side(context, case):
    return not _stops_on_the_wrong_side(case.body)
