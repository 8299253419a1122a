"""The static-assets policy in Python: the same decisions as plugins/static-assets (Rust).

Tracking parameters never split the cache (and the origin is sent the same
normalised query the key holds), analytics cookies never reach the origin,
static files without origin freshness are kept for a day, and a static file's
cookies are noise: stripped from the request and its `Set-Cookie` from the
stored response, so it can be shared.

Plain Python with no WebAssembly imports, so it is unit-tested natively; `app.py`
adapts it to the `cachet:policy@0.2.0` world. A request or response is anything
with the WIT resource's methods (`method()`, `path()`, `header_all(name)`, ...).
"""

from typing import List, Optional, Tuple

import cache_directives

# How long a static file is kept when the origin gave no freshness.
STATIC_TTL_SECONDS = 86_400

STATIC_EXTENSIONS = (
    "css", "js", "mjs", "png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "woff", "woff2",
)
# Analytics cookies, matched whole or up to their "_" suffix ("_ga", "_ga_XYZ"): a bare
# "_ga" prefix would take an application's own "_gallery_session" for analytics.
TRACKING_COOKIE_NAMES = ("_ga", "_gid", "_gat", "_fbp", "_fbc")
TRACKING_COOKIE_PREFIXES = ("_ga_", "_gat_", "_gac_", "_gcl_", "__utm", "_hj")
CACHEABLE_METHODS = ("GET", "HEAD")

# Decisions, as plain tuples: ("cache",), ("bypass", reason); ("store", ttl),
# ("follow-origin",), ("no-store", reason). Edits: ("set", name, value), ("remove", name).
Decision = Tuple


def on_request(req) -> Decision:
    method = req.method()
    if method not in CACHEABLE_METHODS:
        return ("bypass", f"method {method}")
    # Static files are the same for everyone, so their cookies are noise;
    # elsewhere a cookie other than an analytics one may personalise the page.
    if not is_static_path(req.path()) and has_own_cookie(req):
        return ("bypass", "cookie on dynamic path")
    return ("cache",)


def request_edits(req) -> Tuple[List[Tuple], Optional[str]]:
    """Header edits and the origin's new path and query (None: unchanged)."""
    edits: List[Tuple] = []
    if is_static_path(req.path()):
        edits.append(("remove", "cookie"))
    else:
        kept, dropped = retain_cookies(
            req.header_all("cookie"), lambda name: not is_tracking_cookie(name)
        )
        if dropped:
            edits.append(("set", "cookie", kept) if kept else ("remove", "cookie"))
    # The origin gets the query the key holds: no tracking parameters, sorted, and no
    # "?" at all when nothing is left (the key then has no query part either).
    query = req.query()
    wanted = normalized_query(query or "") or None
    path_and_query = None
    if query != wanted:
        path_and_query = f"{req.path()}?{wanted}" if wanted else req.path()
    return edits, path_and_query


def cache_key(req) -> List[str]:
    parts = [req.host(), req.path()]
    query = normalized_query(req.query() or "")
    if query:
        parts.append(query)
    return parts


def on_response(req, resp) -> Decision:
    if not is_static_path(req.path()):
        return ("follow-origin",)
    directives = cache_directives.select(resp.header_all)
    if directives is not None and directives.has("no-store"):
        return ("no-store", "origin sent no-store")
    if directives is not None and directives.has("private"):
        return ("no-store", "origin sent private")
    # Only fill in missing freshness. An origin that asked for revalidation
    # (no-cache) keeps RFC 9111 handling. A Set-Cookie does not matter:
    # `response_edits` strips it before the host judges.
    has_expires = bool(resp.header_all("expires"))
    if directives is None:
        explicit = has_expires
    else:
        explicit = directives.has_explicit_freshness(has_expires)
    no_cache = directives is not None and directives.has("no-cache")
    if resp.status() != 200 or explicit or no_cache:
        return ("follow-origin",)
    return ("store", STATIC_TTL_SECONDS)


def response_edits(req) -> List[Tuple]:
    """A static file is the same for everyone: a cookie it sets would be handed
    to every visitor, and keeps the host from storing it."""
    return [("remove", "set-cookie")] if is_static_path(req.path()) else []


def vary_value(req, name: str) -> Optional[str]:
    """Origins vary static files on Accept-Encoding; the same header spelled
    differently (case, spaces, order) shares one variant."""
    if name != "accept-encoding":
        return None
    return canonical_encoding(req.header_all("accept-encoding"))


# ------------------------------------------------------------ the pieces

def is_static_path(path: str) -> bool:
    last_segment = path.rsplit("/", 1)[-1]
    if "." not in last_segment:
        return False
    extension = last_segment.rsplit(".", 1)[1]
    return any(_ascii_equal(extension, known) for known in STATIC_EXTENSIONS)


def is_tracking_cookie(name: str) -> bool:
    return name in TRACKING_COOKIE_NAMES or name.startswith(TRACKING_COOKIE_PREFIXES)


def is_tracking_parameter(name: str) -> bool:
    return (
        _ascii_equal(name[:4], "utm_")
        or _ascii_equal(name, "fbclid")
        or _ascii_equal(name, "gclid")
    )


def normalized_query(raw: str) -> str:
    """Tracking parameters removed, the rest sorted by name as the most lenient origin
    reads it (stably: names some framework takes for the same one keep their order,
    since `x=1&x=2`, `a=1&%61=2` or `id=1&ID=2` can differ reordered)."""
    params = [pair for pair in raw.split("&") if pair]
    kept = [pair for pair in params if not is_tracking_parameter(pair.split("=", 1)[0])]
    kept.sort(key=lambda pair: lenient_name(pair.split("=", 1)[0]))
    return "&".join(kept)


_HEX = "0123456789abcdefABCDEF"


def lenient_name(name: str) -> bytes:
    """The name percent-decoded, ASCII-lower-cased, `+` `.` and space as `_`, cut at `[`:
    byte for byte what the Rust SDK sorts on."""
    raw = name.encode("utf-8")
    out = bytearray()
    i = 0
    while i < len(raw):
        byte = raw[i]
        if byte == 0x25 and i + 2 < len(raw) and chr(raw[i + 1]) in _HEX and chr(raw[i + 2]) in _HEX:
            byte = int(raw[i + 1 : i + 3].decode("ascii"), 16)
            i += 3
        else:
            i += 1
        if 0x41 <= byte <= 0x5A:
            byte += 32
        if byte == 0x5B:
            break
        out.append(0x5F if byte in (0x2B, 0x2E, 0x20) else byte)
    return bytes(out)


def has_own_cookie(req) -> bool:
    """Whether the request carries a cookie other than an analytics one."""
    for line in req.header_all("cookie"):
        for pair in line.split(";"):
            if "=" in pair and not is_tracking_cookie(pair.split("=", 1)[0].strip()):
                return True
    return False


def retain_cookies(lines: List[str], keep) -> Tuple[str, bool]:
    """The `name=value` pairs `keep(name)` accepts, joined with "; ", and whether
    any pair was dropped (a pair without `=` is dropped)."""
    kept, dropped = [], False
    for line in lines:
        for pair in line.split(";"):
            pair = pair.strip()
            if not pair:
                continue
            if "=" in pair and keep(pair.split("=", 1)[0].strip()):
                kept.append(pair)
            else:
                dropped = True
    return "; ".join(kept), dropped


def canonical_encoding(lines: List[str]) -> str:
    """The canonical spelling of the Accept-Encoding lines: only case, spaces,
    order, repeats and a weight of 1 are removed. Every coding named stays, with
    its weight: an origin answers "*" or "br, gzip" differently from no header or
    "br" alone. "-" when there are none, "" when they name no coding."""
    if not lines:
        return "-"
    items = {_canonical_item(item) for line in lines for item in line.split(",")}
    items.discard(None)
    return ",".join(sorted(items))


# What Rust's split_ascii_whitespace drops; str.split() would drop Unicode spaces too.
_NO_ASCII_SPACE = {ord(c): None for c in " \t\n\x0c\r"}


def _canonical_item(item: str) -> Optional[str]:
    parts = [cache_directives.ascii_lower(part.translate(_NO_ASCII_SPACE)) for part in item.split(";")]
    if not parts[0]:
        return None
    canonical = parts[0]
    for param in parts[1:]:
        weight = _thousandths(param[2:]) if param.startswith("q=") else None
        if weight == 1000:
            continue
        canonical += ";" + (param if weight is None else "q=" + _shortest(weight))
    return canonical


def _thousandths(text: str) -> Optional[int]:
    # An RFC 9110 qvalue: 0[.ddd] or 1[.000]. int() alone would take "0_1" or "+1".
    whole, _, fraction = text.partition(".")
    if len(fraction) > 3 or not all(c in "0123456789" for c in fraction):
        return None
    value = int((fraction + "000")[:3])
    if whole == "0":
        return value
    if whole == "1" and value == 0:
        return 1000
    return None


def _shortest(weight: int) -> str:
    return "0" if weight == 0 else ("0.%03d" % weight).rstrip("0")


def _ascii_equal(a: str, b: str) -> bool:
    return cache_directives.ascii_lower(a) == cache_directives.ascii_lower(b)
