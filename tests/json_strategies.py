"""Hypothesis strategies for fuzzing JSON messages: arbitrary values, and damaged documents."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st


def json_values(
    samples: Sequence[str],
    field_names: Sequence[str],
    *,
    text_size: int,
    key_size: int,
    max_fields: int,
) -> st.SearchStrategy[Any]:
    """Any JSON value, with strings the messages use (`samples`) and their field names."""
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=text_size)
        | st.sampled_from(list(samples)),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.sampled_from(list(field_names)) | st.text(max_size=key_size),
                children,
                max_size=max_fields,
            )
        ),
        max_leaves=20,
    )


def damage(draw: st.DrawFn, doc: dict[str, Any], values: st.SearchStrategy[Any]) -> None:
    """Replace one value somewhere in `doc` (at any depth) by one drawn from `values`."""
    node: Any = doc
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = draw(st.sampled_from(keys))
        if isinstance(node[key], dict | list) and node[key] and draw(st.booleans()):
            node = node[key]
            continue
        node[key] = draw(values)
        return
