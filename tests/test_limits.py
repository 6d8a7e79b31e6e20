"""The coordinator's limits and request checks as plain functions: RpcLimits validation and --limit overrides,
the per-address token bucket, text cleaning, JSON depth and the field checks."""

from __future__ import annotations

import pytest

from coordinator.limits import LimitsError, RpcLimits
from coordinator.request_checks import (
    RequestError,
    check_join,
    check_offsets,
    check_run_name,
    json_depth,
    parse_spec_json,
)
from coordinator.rpc_limits import TokenBuckets
from swarm.text import one_line, printable

PEER = "QmUoLXcZAPZSQjNR2JaZr7Sr7RnJTkgYfTrQPL9cLLmMqJ"


def test_limits_are_validated_and_overridden_by_name():
    assert RpcLimits.with_overrides(["rate_per_s=2.5", "max-streams=6"]) == RpcLimits(rate_per_s=2.5, max_streams=6)
    for bad, message in [(["nope=1"], "unknown limit"), (["max_streams=2.5"], "needs an integer"),
                         (["rate_per_s=inf"], "positive finite"), (["max_streams=16"], "below worker_threads"),
                         (["max_streams_per_address=9"], "exceeds max_streams")]:
        with pytest.raises(LimitsError, match=message):
            RpcLimits.with_overrides(bad)


def test_a_token_bucket_allows_a_burst_then_its_rate_per_key():
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=3, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(4)] == [True, True, True, False]
    assert buckets.take("b")  # another address has its own bucket
    now[0] = 0.5
    assert buckets.take("a") and not buckets.take("a")
    now[0] = 100.0
    assert [buckets.take("a") for _ in range(4)] == [True, True, True, False]  # never above the burst


def test_text_from_strangers_loses_escapes_and_control_characters():
    assert printable("\x1b[2J\x1b[31mroot\x1b[0m\tok\x00\u202e!") == "root ok!"
    assert printable("\x1b]0;title\x07name") == "name"
    assert printable("  keeps  spacing ") == "  keeps  spacing "
    assert one_line("  Ada \n\t Lovelace  ", 64) == "Ada Lovelace"
    assert one_line("x" * 10_000_000, 64) == "x" * 64


def test_join_fields_are_checked_and_cleaned():
    assert check_join("", PEER, "\x1b[31mred\x1b[0m", 0, "cuda\n") == ("", "red", "cuda")
    assert check_join("demo", PEER, "", 2, "cpu")[1] == PEER[:12]
    for args, message in [(("demo\n", PEER, "", 0, ""), "no run named 'demo '"),
                          (("demo", "not-base58!", "", 0, ""), "not a base58"),
                          (("demo", "", "", 0, ""), "needs the worker's peer_id"),
                          (("demo", PEER, "", -5, ""), "max_shards must be 0")]:
        with pytest.raises(RequestError, match=message):
            check_join(*args)
    with pytest.raises(RequestError) as error:
        check_run_name("r" * 1_000_000)
    assert error.value.not_found and len(str(error.value)) < 100


def test_offsets_are_few_named_and_non_negative():
    assert check_offsets({"adapter_model.safetensors": 10}) == {"adapter_model.safetensors": 10}
    for offsets, message in [({"f": -1}, "has offset -1"), ({"": 0}, "file name"),
                             ({f"f{i}": 0 for i in range(65)}, "at most 64")]:
        with pytest.raises(RequestError, match=message):
            check_offsets(offsets)


def test_json_depth_ignores_brackets_in_strings_and_deep_specs_are_refused():
    assert json_depth('{"a": [1, {"b": "[[[["}]}') == 3
    with pytest.raises(RequestError, match="nests deeper than 32"):
        parse_spec_json("[" * 20_000 + "]" * 20_000, 64 * 1024)
    with pytest.raises(RequestError, match="at most 64 are accepted"):
        parse_spec_json("{}" + " " * 100, 64)
    with pytest.raises(RequestError, match="weight_decay"):
        parse_spec_json('{"name": "r", "base_model": "tiny", "dataset": "sample", "weight_decay": Infinity}', 4096)
