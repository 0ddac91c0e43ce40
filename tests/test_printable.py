"""Untrusted text made printable: nothing that moves a terminal's cursor or text gets through."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batcher.printable import printable, quoted


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("users/42/avatar.png", "users/42/avatar.png"),
        ("ünïcødé 日本語 😀", "ünïcødé 日本語 😀"),
        ("\x1b[2J\x1b]0;title\x07", "\\x1b[2J\\x1b]0;title\\x07"),
        ("line\nbreak\r\ttab", "line\\nbreak\\r\\ttab"),
        ("\x9b31m\x85", "\\x9b31m\\x85"),  # C1 controls: CSI and NEL
        ("abc\u202edcba\u2066\u200f", "abc\\u202edcba\\u2066\\u200f"),  # bidi override, isolate, mark
        ("zero\u200bwidth\ufeff", "zero\\u200bwidth\\ufeff"),
        ("sep\u2028\u2029", "sep\\u2028\\u2029"),
        ("nbsp\u00a0", "nbsp\\xa0"),
        ("tag\U000e0041", "tag\\U000e0041"),
        ("lone\ud800", "lone\\ud800"),
        ("back\\slash", "back\\\\slash"),
    ],
)
def test_printable_escapes_what_a_terminal_would_act_on(text: str, shown: str) -> None:
    assert printable(text) == shown


@given(st.text())
def test_printable_output_is_always_printable_and_unambiguous(text: str) -> None:
    shown = printable(text)
    assert shown.isprintable()
    assert shown.encode("unicode_escape").decode("unicode_escape") == shown  # no surrogates, valid text
    if text.isprintable() and "\\" not in text:
        assert shown == text


def test_long_text_is_cut() -> None:
    assert printable("x" * 1000, max_chars=10) == "xxxxxxx..."
    assert quoted("a\x1bb" * 100, max_chars=8) == "'a\\x1b...'"
    assert quoted("it's") == "'it's'"
