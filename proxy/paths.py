"""One canonical request path: what every path rule is matched against.

robots.txt, registry path prefixes, ai.txt, tdmrep.json locations, RSL
content URLs and Content-Usage scopes all match the string `normalize()`
returns, so a path trick that walks around one walks around none.

`normalize` applies, in this order:

* RFC 9309 §2.2.2 percent-encoding normalisation, the same one Protego applies
  to rule patterns (so both sides of a comparison are spelled alike): escapes
  of characters that need none are decoded (`%77` -> `w`, `%2E` -> `.`), the
  rest are upper-cased, raw characters that need an escape get one. `%2F` and
  `%25` stay escaped: decoding them changes what the path says.
* RFC 3986 §5.2.4 dot-segment removal, after the decoding above, so `%2e%2e`
  counts as `..`.

Servers disagree on the rest: some merge `//` into `/`, some decode `%2F` into
a separator, IIS reads `\\` as `/`, Tomcat drops `;param` from a segment. A
proxy cannot know which one it talks to, so `variants()` gives every form the
origin may serve and the caller lets the most restrictive answer win.
"""

from __future__ import annotations

import re
from functools import lru_cache

from protego._utils import _quote

# Protego's normalisation sets (protego._utils._KEPT/_SAFE), spelled here so a
# change in its private names fails loudly at import, not silently at match.
_KEPT = "/%"
_SAFE = "/%="

# A path that no step below would change: no escapes, no characters that need
# one, no dot segment, no empty segment.
_PLAIN = re.compile(r"/(?!/)[A-Za-z0-9_.~=-]*(?:/(?!/)[A-Za-z0-9_.~=-]*)*").fullmatch


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 on an absolute path."""
    if "." not in path:
        return path
    out: list[str] = []
    segments = path.split("/")[1:]
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == ".":
            if last:
                out.append("")
        elif segment == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


@lru_cache(maxsize=65536)
def normalize(path: str) -> str:
    """The canonical form of `path` (path plus ?query, as sent): see the module docstring.

    Idempotent, never raises; a path that does not start with "/" is read as
    if it did. The fragment, which never reaches an origin, is dropped.
    """
    if _PLAIN(path) and "/." not in path:
        return path
    path = path.partition("#")[0]
    p, sep, query = path.partition("?")
    if not p.startswith("/"):
        p = "/" + p
    p = _remove_dot_segments(_quote(p, _KEPT, _SAFE))
    # "?" is escaped as %3F on both sides (Protego quotes patterns the same way).
    return _quote(p + sep + query, _KEPT, _SAFE) if sep else p


def _merge_slashes(path: str) -> str:
    p, sep, query = path.partition("%3F")
    return re.sub("/{2,}", "/", p) + sep + query


def _drop_params(path: str) -> str:
    p, sep, query = path.partition("%3F")
    return re.sub(r"%3B[^/]*", "", p) + sep + query  # ";" is escaped by now


@lru_cache(maxsize=65536)
def variants(path: str) -> tuple[str, ...]:
    """Every canonical form an origin may serve for `path`, `normalize(path)` first.

    One form for ordinary paths (the hot path pays one cached look-up).
    """
    first = normalize(path)
    if _PLAIN(first):
        return (first,)
    forms = [first]

    def add(candidate: str) -> None:
        form = normalize(candidate)
        if form not in forms:
            forms.append(form)

    # Each rewrite a server may make, then every combination of them: applying
    # them to forms already found reaches `/a%2F..%2F/b;x` -> `/b` too.
    rewrites = (
        lambda f: f.replace("%2F", "/"),  # servers that decode %2F before routing
        lambda f: f.replace("%5C", "/"),  # IIS: backslash is a separator
        _merge_slashes,  # nginx merge_slashes, Apache with MergeSlashes
        _drop_params,  # Tomcat/Jetty path parameters
    )
    i = 0
    while i < len(forms) and len(forms) < 32:
        for rewrite in rewrites:
            add(rewrite(forms[i]))
        i += 1
    return tuple(forms)
