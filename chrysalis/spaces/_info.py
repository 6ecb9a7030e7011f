"""Reading a dataset's info object by duck typing (no import of `chrysalis.data`)."""

from __future__ import annotations

from typing import Any


def image_shape(info: Any, space: str) -> tuple[int, int, int]:
    """(C, H, W) of an image dataset's `info`, or a ValueError that says what `space` needs."""
    kind = getattr(info, "kind", "image")
    shape = tuple(int(s) for s in info.input_shape)
    if kind != "image" or len(shape) != 3:
        raise ValueError(
            f"space {space!r} needs image data with input_shape (C, H, W); got kind={kind!r}, "
            f"input_shape={shape}"
        )
    return shape  # type: ignore[return-value]


def text_shape(info: Any, space: str) -> tuple[int, int]:
    """(seq_len, vocab_size) of a text dataset's `info`, or a ValueError naming what is missing."""
    kind = getattr(info, "kind", "text")
    shape = tuple(int(s) for s in info.input_shape)
    vocab = getattr(info, "vocab_size", None)
    if kind != "text" or len(shape) != 1 or not vocab:
        raise ValueError(
            f"space {space!r} needs text data with input_shape (seq_len,) and a vocab_size; got "
            f"kind={kind!r}, input_shape={shape}, vocab_size={vocab!r}"
        )
    return shape[0], int(vocab)
