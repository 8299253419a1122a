"""Native unit tests of the Python policy (python3 -m unittest), the same cases as
the Rust twin's. Run by tests/test.sh before the component is built."""

import unittest
from urllib.parse import urlsplit

import cache_directives
import static_assets as policy


class Message:
    """An in-memory request or response with the WIT resource's methods."""

    def __init__(self, uri="http://example.com/", method="GET", status=200, headers=()):
        parts = urlsplit(uri)
        self._method, self._status, self._headers = method, status, list(headers)
        self._host = parts.netloc.lower()
        self._path = parts.path or "/"
        self._query = parts.query if "?" in uri else None

    def method(self):
        return self._method

    def host(self):
        return self._host

    def path(self):
        return self._path

    def query(self):
        return self._query

    def status(self):
        return self._status

    def header_all(self, name):
        return [value for key, value in self._headers if key.lower() == name.lower()]

    def header(self, name):
        values = self.header_all(name)
        return values[0] if values else None


def get(uri, *headers):
    return Message(uri, headers=headers)


def ok_with(*headers):
    return Message(headers=headers)


class Requests(unittest.TestCase):
    def test_tracking_parameters_and_order_do_not_split_the_key(self):
        tracked = get("http://example.com/a?utm_source=x&b=2&a=1")
        clean = get("http://example.com/a?a=1&b=2")
        self.assertEqual(policy.cache_key(tracked), policy.cache_key(clean))
        self.assertEqual(policy.cache_key(clean), ["example.com", "/a", "a=1&b=2"])

    def test_names_a_lenient_origin_merges_keep_their_order(self):
        for query, expected in [
            ("z=0&a=1&%61=2", "a=1&%61=2&z=0"),
            ("z=0&%61=2&a=1", "%61=2&a=1&z=0"),
            ("id=1&b=0&ID=2", "b=0&id=1&ID=2"),
            ("a_b=1&a.b=2&a+b=3", "a_b=1&a.b=2&a+b=3"),
            ("x[]=b&x[1]=a&w=0", "w=0&x[]=b&x[1]=a"),
        ]:
            self.assertEqual(policy.normalized_query(query), expected, query)

    def test_query_of_only_tracking_parameters_keys_like_no_query(self):
        tracked = get("http://example.com/a?utm_campaign=y&fbclid=1&gclid=2")
        self.assertEqual(policy.cache_key(tracked), ["example.com", "/a"])
        self.assertEqual(policy.cache_key(get("http://example.com/a")), ["example.com", "/a"])

    def test_repeated_names_keep_their_order(self):
        self.assertEqual(policy.normalized_query("x=2&b&x=1&UTM_x=3"), "b&x=2&x=1")

    def test_cookie_is_ignored_on_static_paths(self):
        req = get("http://example.com/app.JS?v=3", ("Cookie", "session=abc"))
        self.assertEqual(policy.on_request(req), ("cache",))
        self.assertEqual(policy.cache_key(req), ["example.com", "/app.JS", "v=3"])

    def test_cookie_on_dynamic_path_bypasses(self):
        req = get("http://example.com/account", ("Cookie", "session=abc"))
        self.assertEqual(policy.on_request(req), ("bypass", "cookie on dynamic path"))
        self.assertEqual(policy.on_request(get("http://example.com/account")), ("cache",))

    def test_unsafe_methods_bypass_even_for_static_paths(self):
        req = Message("http://example.com/a.css", method="POST")
        self.assertEqual(policy.on_request(req), ("bypass", "method POST"))

    def test_methods_are_case_sensitive(self):
        req = Message("http://example.com/a.css", method="get")
        self.assertEqual(policy.on_request(req), ("bypass", "method get"))

    def test_lookalike_cookie_names_are_not_analytics(self):
        for name in ("_ga", "_ga_ABC123", "_gid", "_gat", "_gcl_au", "__utmz", "_hjid"):
            self.assertTrue(policy.is_tracking_cookie(name), name)
        for name in ("_gallery_session", "_gateway", "_gidx", "session"):
            self.assertFalse(policy.is_tracking_cookie(name), name)

    def test_analytics_cookies_never_reach_the_origin_nor_force_a_bypass(self):
        req = get("http://example.com/page", ("Cookie", "_ga=GA1.1; _gid=2"))
        self.assertEqual(policy.on_request(req), ("cache",))
        self.assertEqual(policy.request_edits(req), ([("remove", "cookie")], None))
        req = get("http://example.com/page", ("Cookie", "_ga=GA1.1; session=abc"))
        self.assertEqual(policy.on_request(req), ("bypass", "cookie on dynamic path"))
        self.assertEqual(policy.request_edits(req), ([("set", "cookie", "session=abc")], None))
        # Nothing to drop: no edit at all.
        req = get("http://example.com/page", ("Cookie", "session=abc"))
        self.assertEqual(policy.request_edits(req), ([], None))

    def test_the_origin_gets_the_query_the_key_holds(self):
        req = get("http://example.com/app.js?utm_source=x&v=3&a=1", ("Cookie", "s=1"))
        edits, target = policy.request_edits(req)
        self.assertEqual(edits, [("remove", "cookie")], "static files get no cookies")
        self.assertEqual(target, "/app.js?a=1&v=3")
        # Already normalised: nothing to rewrite (a background refresh changes nothing).
        self.assertEqual(policy.request_edits(get("http://example.com/app.js?a=1&v=3"))[1], None)
        only_tracking = get("http://example.com/p?utm_source=x")
        self.assertEqual(policy.request_edits(only_tracking)[1], "/p")
        # An empty query keys like none, so the origin gets none.
        for target in ("http://example.com/p?", "http://example.com/p?&&"):
            self.assertEqual(policy.request_edits(get(target))[1], "/p", target)
        self.assertEqual(policy.request_edits(get("http://example.com/p"))[1], None)


class Responses(unittest.TestCase):
    css = get("http://example.com/site.css")

    def test_static_200_without_freshness_is_kept_a_day(self):
        req = get("http://example.com/img/logo.png")
        resp = ok_with(("Content-Type", "image/png"), ("Cache-Control", "public"))
        self.assertEqual(policy.on_response(req, resp), ("store", 86_400))

    def test_origin_freshness_is_followed(self):
        for header in [
            ("Cache-Control", "max-age=60"),
            ("Cache-Control", "s-maxage=60"),
            ("Expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
        ]:
            self.assertEqual(policy.on_response(self.css, ok_with(header)), ("follow-origin",))

    def test_targeted_fields_govern_freshness(self):
        for headers in [
            [("CDN-Cache-Control", "max-age=1")],
            [("Cache-Control", "max-age=86400"), ("CDN-Cache-Control", "max-age=1")],
            [("Cache-Control", "no-store"), ("Cachet-Cache-Control", "max-age=60")],
        ]:
            resp = ok_with(*headers)
            self.assertEqual(policy.on_response(self.css, resp), ("follow-origin",), headers)
        # An invalid targeted field is ignored: Cache-Control's no-store applies.
        resp = ok_with(("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=x"))
        self.assertEqual(policy.on_response(self.css, resp), ("no-store", "origin sent no-store"))

    def test_malformed_directive_lists_hide_no_restriction(self):
        for headers in [
            [("Cache-Control", "private; max-age=0")],
            [("Cache-Control", 'max-age=300, x="a, private')],
            [("Cache-Control", "public, max-age=300"), ("CDN-Cache-Control", 'private, max-age="60"')],
        ]:
            resp = ok_with(*headers)
            self.assertEqual(
                policy.on_response(self.css, resp), ("no-store", "origin sent private"), headers
            )

    def test_no_store_and_private_are_never_stored(self):
        resp = ok_with(("Cache-Control", "max-age=60, no-store"))
        self.assertEqual(policy.on_response(self.css, resp), ("no-store", "origin sent no-store"))
        resp = ok_with(("Cache-Control", "private"))
        self.assertEqual(policy.on_response(self.css, resp), ("no-store", "origin sent private"))

    def test_non_200_and_revalidate_follow_the_origin(self):
        self.assertEqual(policy.on_response(self.css, Message(status=404)), ("follow-origin",))
        resp = ok_with(("Cache-Control", "no-cache"))
        self.assertEqual(policy.on_response(self.css, resp), ("follow-origin",))

    def test_a_static_files_set_cookie_is_stripped_so_it_is_stored(self):
        resp = ok_with(("Set-Cookie", "a=1"))
        self.assertEqual(policy.on_response(self.css, resp), ("store", 86_400))
        self.assertEqual(policy.response_edits(self.css), [("remove", "set-cookie")])
        account = get("http://example.com/account")
        self.assertEqual(policy.response_edits(account), [], "dynamic pages keep their cookies")

    def test_dynamic_paths_follow_the_origin(self):
        req = get("http://example.com/index.html")
        self.assertEqual(policy.on_response(req, ok_with()), ("follow-origin",))


class Pieces(unittest.TestCase):
    def test_static_paths(self):
        for path in ["/a.css", "/x/y/app.JS", "/m.mjs", "/i.Png", "/f.woff2", "/favicon.ico"]:
            self.assertTrue(policy.is_static_path(path), path)
        for path in ["/", "/index.html", "/css", "/a.css/", "/dir.png/page", "/a.cssx", "/js"]:
            self.assertFalse(policy.is_static_path(path), path)

    def test_canonical_encoding(self):
        self.assertEqual(policy.canonical_encoding(["gzip, deflate, br"]), "br,deflate,gzip")
        self.assertEqual(policy.canonical_encoding(["BR;q=1.0, gzip", "deflate ,gzip"]), "br,deflate,gzip")
        self.assertEqual(policy.canonical_encoding(["gzip;q=0.50"]), policy.canonical_encoding(["GZIP ; Q=0.5"]))
        self.assertEqual(policy.canonical_encoding(["gzip;q=0.000"]), "gzip;q=0")
        self.assertEqual(policy.canonical_encoding(["gzip;q=0_1"]), "gzip;q=0_1")
        variants = [[], [""], ["*"], ["identity"], ["br"], ["br, gzip"], ["gzip"], ["gzip;q=0"],
                    ["gzip;q=0.5, br"], ["gzip;q=nonsense"]]
        spelled = [policy.canonical_encoding(v) for v in variants]
        self.assertEqual(len(set(spelled)), len(variants), spelled)
        self.assertEqual(policy.vary_value(get("/", ("Accept-Encoding", "gzip")), "accept-encoding"), "gzip")
        self.assertIsNone(policy.vary_value(get("/"), "accept-language"))

    def test_cache_control_is_read_forgivingly(self):
        parsed = cache_directives.parse_forgiving(['Max-Age=5, private="a,b"', "no-cache"])
        self.assertEqual(parsed, {"max-age": "5", "private": "a,b", "no-cache": None})

    def test_targeted_fields_are_strict_dictionaries(self):
        parse = cache_directives.parse_targeted
        self.assertEqual(parse(["max-age=60, no-store"]), {"max-age": "60", "no-store": None})
        self.assertEqual(parse(['private="x"', "max-age=1"]), {"private": "x", "max-age": "1"})
        self.assertEqual(parse(["no-store=?0, max-age=5"]), {"max-age": "5"})
        self.assertEqual(parse(["max-age=1, max-age=2"]), {"max-age": "2"})
        for invalid in ["max-age=x", "max-age=-1", "Max-Age=1", "max-age=1,", "no-store=1",
                        'max-age="1"', "a=(1 2", "a=1.2345"]:
            self.assertIsNone(parse([invalid]), invalid)
        self.assertEqual(parse(["a=(1 2);p, b=:AQ==:, c=tok/x, d=1.5"]),
                         {"a": "(1 2)", "b": ":AQ==:", "c": "tok/x", "d": "1.5"})


if __name__ == "__main__":
    unittest.main()
