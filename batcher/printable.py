"""Untrusted text made safe to print: keys, names, content types and metadata read from a batch.

A batch's keys are any UTF-8 (an S3 key may hold ESC, a bidi override or a
line break), and a damaged or hostile batch may say anything at all. Printed
raw, such text moves the cursor, rewrites earlier lines or reverses what a
terminal shows, so every piece of batch content that reaches a terminal, a log
line or an error message goes through ``printable`` first.
"""

from __future__ import annotations

_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ELLIPSIS = "..."


def printable(text: str, *, max_chars: int | None = None) -> str:
    """``text`` with every character that is not printable escaped, Python style (``\\x1b``, ``\\u202e``).

    Escaped are the C0 and C1 controls and DEL (terminal escape sequences), format characters (bidi
    overrides and isolates, zero-width characters), line and paragraph separators, spaces other than
    U+0020, unassigned and private-use code points and lone surrogates, as ``str.isprintable`` defines
    them; a backslash is doubled so that the escapes are unambiguous. With ``max_chars``, the result
    is cut to that many characters, ending in ``...``.
    """
    if not (text.isprintable() and "\\" not in text):
        text = "".join(_escape(ch) for ch in text)
    if max_chars is not None and len(text) > max_chars:
        text = text[: max(0, max_chars - len(_ELLIPSIS))] + _ELLIPSIS
    return text


def quoted(text: str, *, max_chars: int = 200) -> str:
    """``printable(text)`` in single quotes, at most ``max_chars`` characters inside: for error messages."""
    return f"'{printable(text, max_chars=max_chars)}'"


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    if ch.isprintable():
        return ch
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
