"""Which cache directives govern a response, read as cachet's host reads them.

`Cachet-Cache-Control`, then `CDN-Cache-Control` (RFC 9213), then `Cache-Control`. A
targeted field counts only when present, non-empty and a valid Structured Field
dictionary (RFC 8941); when one governs, `Cache-Control` and `Expires` are ignored.
`Cache-Control` itself is parsed forgivingly (RFC 9111 §5.2).
"""

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

# Most specific first; the first that applies governs.
PRECEDENCE = ("cachet-cache-control", "cdn-cache-control", "cache-control")

# Directive name -> the argument type a targeted field must give it.
_SECONDS = {"max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"}
_FLAGS = {
    "no-store", "public", "must-revalidate", "proxy-revalidate",
    "no-transform", "immutable", "must-understand",
}
_FLAG_OR_FIELDS = {"no-cache", "private"}


@dataclass
class Directives:
    """Lower-case directive names to their argument (None for a bare flag)."""

    field_name: str
    arguments: Dict[str, Optional[str]] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.arguments

    @property
    def targeted(self) -> bool:
        return self.field_name != "cache-control"

    def has_explicit_freshness(self, has_expires: bool) -> bool:
        """A lifetime in the field, or (for `Cache-Control` only) an `Expires` field."""
        return (
            self.has("max-age")
            or self.has("s-maxage")
            or (not self.targeted and has_expires)
        )


# Directives that forbid storing, or reusing without revalidation: an invalid targeted field
# is passed over, but what it says of these still holds.
_RESTRICTIONS = ("no-store", "no-cache", "private", "must-revalidate", "proxy-revalidate")


def select(field_lines: Callable[[str], List[str]]) -> Optional[Directives]:
    """The governing directives; `field_lines(name)` gives every line of a field."""
    carried: Dict[str, Optional[str]] = {}
    chosen: Optional[Directives] = None
    for name in PRECEDENCE:
        lines = field_lines(name)
        if not lines:
            continue
        if name == "cache-control":
            chosen = Directives(name, parse_forgiving(lines))
            break
        if all(not line.strip() for line in lines):
            continue
        arguments = parse_targeted(lines)
        if arguments is not None:
            chosen = Directives(name, arguments)
            break
        for directive, argument in parse_forgiving(lines).items():
            if directive in _RESTRICTIONS:
                carried.setdefault(directive, argument)
    if carried:
        if chosen is None:
            chosen = Directives("cache-control")
        for directive, argument in carried.items():
            chosen.arguments.setdefault(directive, argument)
    return chosen


# ------------------------------------------------------------ Cache-Control (forgiving)

def parse_forgiving(lines: List[str]) -> Dict[str, Optional[str]]:
    """Every directive of every line; the first occurrence of a name wins."""
    arguments: Dict[str, Optional[str]] = {}
    for line in lines:
        for element in _split_list(line):
            name, _, argument = element.partition("=")
            name = name.strip()
            if not name:
                continue
            value = _unquote(argument.strip()) if "=" in element else None
            arguments.setdefault(ascii_lower(name), value)
    return arguments


def _split_list(value: str) -> List[str]:
    """Splits on commas (and stray semicolons) outside quoted strings; an element whose
    quote never closes is split again ignoring quotes, so it hides nothing after it."""
    elements, current = [], []
    current_start = 0
    in_quotes = escaped = False
    for at, c in enumerate(value):
        if escaped:
            escaped = False
        elif c == "\\" and in_quotes:
            escaped = True
        elif c == '"':
            in_quotes = not in_quotes
        elif c in ",;" and not in_quotes:
            elements.append("".join(current))
            current = []
            current_start = at + 1
            continue
        current.append(c)
    if in_quotes:
        elements.extend(value[current_start:].replace(";", ",").split(","))
    else:
        elements.append("".join(current))
    return elements


def _unquote(argument: str) -> str:
    if not argument.startswith('"'):
        return argument
    out, chars = [], iter(argument[1:])
    for c in chars:
        if c == '"':
            break
        if c == "\\":
            out.append(next(chars, ""))
        else:
            out.append(c)
    return "".join(out)


def ascii_lower(text: str) -> str:
    # str.lower() also folds non-ASCII letters (the Kelvin sign becomes "k"); HTTP does not.
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)


# ------------------------------------------------------------ targeted fields (strict)

class _Invalid(Exception):
    """The field is not a valid dictionary: the whole field is ignored."""


def parse_targeted(lines: List[str]) -> Optional[Dict[str, Optional[str]]]:
    """The directives of a targeted field, or None when any of it is invalid."""
    try:
        members = _Dictionary(",".join(lines)).parse()
    except _Invalid:
        return None
    arguments: Dict[str, Optional[str]] = {}
    for name, (kind, value) in members:
        if kind == "boolean" and value is False:
            continue
        if name in _SECONDS:
            if kind != "integer" or value < 0:
                return None
            arguments[name] = str(value)
        elif name in _FLAGS:
            if kind != "boolean":
                return None
            arguments[name] = None
        elif name in _FLAG_OR_FIELDS:
            if kind == "boolean":
                arguments[name] = None
            elif kind == "string":
                arguments[name] = value
            else:
                return None
        else:
            arguments[name] = None if kind == "boolean" else str(value)
    return arguments


_KEY_FIRST = set("abcdefghijklmnopqrstuvwxyz*")
_KEY_REST = _KEY_FIRST | set("0123456789_-.")
_DIGITS = set("0123456789")
_TOKEN_REST = set(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~:/"
)
_BASE64 = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


class _Dictionary:
    """RFC 8941 §4.2.2, reduced to what cache directives need."""

    def __init__(self, text: str):
        self.text = text
        self.at = 0

    def parse(self):
        members: List = []
        self._skip(" ")
        while not self._done():
            key = self._key()
            if self._eat("="):
                value = self._member_value()
            else:
                self._parameters()
                value = ("boolean", True)
            for member in members:
                if member[0] == key:
                    member[1] = value
                    break
            else:
                members.append([key, value])
            self._skip_ows()
            if self._done():
                break
            if not self._eat(","):
                raise _Invalid
            self._skip_ows()
            if self._done():  # a trailing comma
                raise _Invalid
        return [(key, value) for key, value in members]

    def _done(self) -> bool:
        return self.at >= len(self.text)

    def _peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def _eat(self, c: str) -> bool:
        if self._peek() == c:
            self.at += 1
            return True
        return False

    def _skip(self, c: str) -> None:
        while self._eat(c):
            pass

    def _skip_ows(self) -> None:
        while self._peek() in (" ", "\t"):
            self.at += 1

    def _take_while(self, allowed: set) -> str:
        # A set: "" (the end of the input) is never in it, as it would be in a str.
        start = self.at
        while self._peek() in allowed:
            self.at += 1
        return self.text[start:self.at]

    def _key(self) -> str:
        if self._peek() not in _KEY_FIRST:
            raise _Invalid
        return self._take_while(_KEY_REST)

    def _member_value(self):
        if self._peek() == "(":
            start = self.at
            self._inner_list()
            text = self.text[start:self.at]
            self._parameters()
            return ("other", text)
        value = self._bare_item()
        self._parameters()
        return value

    def _inner_list(self) -> None:
        self._eat("(")
        while True:
            self._skip(" ")
            if self._eat(")"):
                return
            self._bare_item()
            self._parameters()
            if self._peek() not in (" ", ")"):
                raise _Invalid

    def _parameters(self) -> None:
        while self._eat(";"):
            self._skip(" ")
            self._key()
            if self._eat("="):
                self._bare_item()

    def _bare_item(self):
        c = self._peek()
        if not c:
            raise _Invalid
        if c == "-" or c in _DIGITS:
            return self._number()
        if c == '"':
            return ("string", self._string())
        if c == "?":
            return ("boolean", self._boolean())
        if c == ":":
            return ("other", self._byte_sequence())
        if ("A" <= c <= "Z") or ("a" <= c <= "z") or c == "*":
            start = self.at
            self.at += 1
            self._take_while(_TOKEN_REST)
            return ("other", self.text[start:self.at])
        raise _Invalid

    def _number(self):
        start = self.at
        self._eat("-")
        integer_digits = len(self._take_while(_DIGITS))
        if integer_digits == 0:
            raise _Invalid
        if self._eat("."):
            fraction_digits = len(self._take_while(_DIGITS))
            if integer_digits > 12 or not 1 <= fraction_digits <= 3:
                raise _Invalid
            return ("other", self.text[start:self.at])
        if integer_digits > 15:
            raise _Invalid
        return ("integer", int(self.text[start:self.at]))

    def _string(self) -> str:
        self._eat('"')
        out = []
        while True:
            c = self._peek()
            if not c:
                raise _Invalid
            self.at += 1
            if c == '"':
                return "".join(out)
            if c == "\\":
                escaped = self._peek()
                if escaped not in ('"', "\\"):
                    raise _Invalid
                self.at += 1
                out.append(escaped)
            elif " " <= c <= "~":
                out.append(c)
            else:
                raise _Invalid

    def _boolean(self) -> bool:
        self._eat("?")
        if self._eat("1"):
            return True
        if self._eat("0"):
            return False
        raise _Invalid

    def _byte_sequence(self) -> str:
        start = self.at
        self._eat(":")
        self._take_while(_BASE64)
        if not self._eat(":"):
            raise _Invalid
        return self.text[start:self.at]
