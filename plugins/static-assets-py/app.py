"""Adapts static_assets.py to the `cachet:policy@0.2.0` world (bindings made by
componentize-py from wit/v0.2 at build time)."""

from typing import List, Optional

import wit_world
from wit_world.imports import types

import static_assets


class WitWorld(wit_world.WitWorld):
    def on_request(self, req: types.Request) -> types.RequestPlan:
        decision = static_assets.on_request(req)
        edits, path_and_query = static_assets.request_edits(req)
        if decision[0] == "cache":
            wit_decision = types.RequestDecision_Cache()
        else:
            wit_decision = types.RequestDecision_Bypass(decision[1])
        return types.RequestPlan(
            decision=wit_decision,
            edits=[_header_edit(edit) for edit in edits],
            path_and_query=path_and_query,
            backend=None,
            deliver=False,
        )

    def cache_key(self, req: types.Request) -> List[str]:
        return static_assets.cache_key(req)

    def on_response(self, req: types.Request, resp: types.Response) -> types.ResponsePlan:
        decision = static_assets.on_response(req, resp)
        if decision[0] == "store":
            wit_decision = types.ResponseDecision_Store(
                types.StoreDirective(
                    ttl_seconds=decision[1],
                    stale_while_revalidate_seconds=0,
                    stale_if_error_seconds=0,
                    tags=[],
                )
            )
        elif decision[0] == "no-store":
            wit_decision = types.ResponseDecision_NoStore(decision[1])
        else:
            wit_decision = types.ResponseDecision_FollowOrigin()
        edits = [_header_edit(edit) for edit in static_assets.response_edits(req)]
        return types.ResponsePlan(decision=wit_decision, edits=edits)

    def on_deliver(self, req: types.Request, resp: types.Response) -> List[types.HeaderEdit]:
        return []

    def on_error(
        self, req: types.Request, failure: types.OriginFailure
    ) -> Optional[types.SyntheticResponse]:
        return None

    def vary_value(self, req: types.Request, name: str) -> Optional[str]:
        return static_assets.vary_value(req, name)

    def self_test(self) -> List[types.TestVector]:
        return [_test_vector(i, vector) for i, vector in enumerate(SELF_TESTS)]


# The Rust twin's self-test vectors: (method, uri, request headers, expected
# decision, expected key, (status, response headers, expected outcome) or None).
SELF_TESTS = [
    ("GET", "http://example.com/a.css?utm_source=x&b=1&a=2", [], "cache",
     ["example.com", "/a.css", "a=2&b=1"], None),
    ("GET", "http://example.com/app.JS", [("Cookie", "session=abc")], "cache", None, None),
    ("GET", "http://example.com/account", [("Cookie", "session=abc")], "bypass", None, None),
    ("GET", "http://example.com/img/logo.png", [], "cache", None,
     (200, [("content-type", "image/png")], ("store", static_assets.STATIC_TTL_SECONDS))),
    ("GET", "http://example.com/site.css", [], "cache", None,
     (200, [("cache-control", "max-age=60")], ("follow-origin",))),
    ("GET", "http://example.com/site.css", [], "cache", None,
     (200, [("cache-control", "private")], ("no-store",))),
    # A targeted field governs (RFC 9213): its lifetime is the origin's word, and
    # Cache-Control's no-store is not meant for CDNs.
    ("GET", "http://example.com/site.css", [], "cache", None,
     (200, [("cache-control", "no-store"), ("cdn-cache-control", "max-age=60")],
      ("follow-origin",))),
]


def _header_edit(edit) -> types.HeaderEdit:
    if edit[0] == "set":
        return types.HeaderEdit_Set(types.Header(name=edit[1], value=edit[2]))
    return types.HeaderEdit_Remove(edit[1])


def _headers(pairs) -> List[types.Header]:
    return [types.Header(name=name, value=value) for name, value in pairs]


def _test_vector(index: int, vector) -> types.TestVector:
    method, uri, headers, expect, key, response = vector
    expected = (
        types.ExpectedRequest_Cache() if expect == "cache" else types.ExpectedRequest_Bypass()
    )
    test_response = None
    if response is not None:
        status, response_headers, outcome = response
        if outcome[0] == "store":
            expected_response = types.ExpectedResponse_Store(outcome[1])
        elif outcome[0] == "no-store":
            expected_response = types.ExpectedResponse_NoStore()
        else:
            expected_response = types.ExpectedResponse_FollowOrigin()
        test_response = types.TestResponse(
            status=status, headers=_headers(response_headers), expect=expected_response
        )
    return types.TestVector(
        name=f"{index + 1}: {method} {uri}",
        request=types.TestRequest(method=method, uri=uri, headers=_headers(headers)),
        expect=expected,
        expect_key=key,
        response=test_response,
    )
