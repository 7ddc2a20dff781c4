"""Class labels in plain English, for every message a person reads (bot, demo, CLIs)."""

from __future__ import annotations

from collections.abc import Sequence


def english_list(words: Sequence[str], conjunction: str = "or") -> str:
    """``["a", "b", "c"]`` -> ``"a, b or c"`` (``conjunction="and"``: ``"a, b and c"``)."""
    words = [str(w) for w in words]
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + f" {conjunction} {words[-1]}"


def display_name(label: str) -> str:
    """A label as people write it: ``"Maine_Coon"`` -> ``"Maine Coon"``."""
    return str(label).replace("_", " ")


def describe_labels(labels: Sequence[str]) -> str:
    """What a model knows, for "This doesn't look like ...": ``["cat", "dog"]`` -> "a cat or
    a dog"; up to four labels are named, more become "any of the 37 pets this model knows"."""
    names = [display_name(label) for label in labels]
    if not names:
        return "anything this model knows"
    if len(names) > 4:
        return f"any of the {len(names)} pets this model knows"
    return english_list([f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}" for name in names])
