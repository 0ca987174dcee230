"""Sequences packed into rows for an encoder, so that a batch runs without padding.

A tokenized batch pads every text to the longest: for 7 one-sentence requests in arrival order about a third of
the tokens the model runs are padding. Packed, the texts of a batch lie end to end in a few rows; each token's
position restarts at 0 with its text, and an attention mask lets a token see only the tokens of its own text
(``segments``: text number + 1 per token, 0 for a row's padding), so each text's vectors are what they are alone.
Attention across a row costs its length squared while the rest of the model costs its length, so rows are kept
near ``capacity`` tokens: as few rows as hold the batch, filled longest text first into the emptiest row.
Measured: docs/performance.md#text-embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Tokens per row. all-MiniLM-L6-v2 (hidden size 384), 1 thread, batches of 4-32 of the benchmark's sentences: rows
# of 64 cost 3.9-4.5 ms of CPU a sentence against 5.1-5.2 padded; rows of 256 up to 6.2 (attention over the row).
PACK_TOKENS = 64


@dataclass(frozen=True)
class Packing:
    """Where each real token of a padded batch sits in the packed rows."""

    shape: tuple[int, int]  # rows, tokens per row
    texts: np.ndarray  # per real token: its text (row of the padded batch)
    columns: np.ndarray  # its column in the padded batch
    positions: np.ndarray  # its position within its text, from 0
    rows: np.ndarray  # its packed row
    slots: np.ndarray  # its column in the packed row

    def pack(self, padded: np.ndarray) -> np.ndarray:
        """Return a per-token array of the padded batch (texts x columns) laid out in the packed rows (0 elsewhere)."""
        out = np.zeros(self.shape, dtype=padded.dtype)
        out[self.rows, self.slots] = padded[self.texts, self.columns]
        return out

    def feeds(self) -> dict[str, np.ndarray]:
        """Return the packed rows' position_ids and segments."""
        positions = np.zeros(self.shape, dtype=np.int64)
        positions[self.rows, self.slots] = self.positions
        segments = np.zeros(self.shape, dtype=np.int64)
        segments[self.rows, self.slots] = self.texts + 1
        return {"position_ids": positions, "segments": segments}

    def unpack(self, packed: np.ndarray, padded_shape: tuple[int, int]) -> np.ndarray:
        """Return the model's per-token outputs (rows x slots x features) back in the padded batch's layout, zeros
        where the batch was padding."""
        out = np.zeros((*padded_shape, packed.shape[-1]), dtype=packed.dtype)
        out[self.texts, self.columns] = packed[self.rows, self.slots]
        return out


def pack(attention_mask: np.ndarray, capacity: int = PACK_TOKENS) -> Packing:
    """Lay out the texts of a padded batch (its attention mask: texts x columns, 1 for a real token) in rows of
    about capacity tokens (at least the longest text)."""
    texts, columns = np.nonzero(attention_mask)  # row-major: each text's tokens in order
    lengths = np.bincount(texts, minlength=attention_mask.shape[0])
    positions = np.arange(len(texts)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    capacity = max(capacity, int(lengths.max(initial=1)))
    fill = np.zeros(max(1, -(-int(lengths.sum()) // capacity)), dtype=np.int64)
    row_of = np.zeros(len(lengths), dtype=np.int64)
    start = np.zeros(len(lengths), dtype=np.int64)
    for text in np.argsort(-lengths, kind="stable"):
        row = int(fill.argmin())
        row_of[text], start[text] = row, fill[row]
        fill[row] += lengths[text]
    return Packing((len(fill), max(1, int(fill.max()))), texts, columns, positions, row_of[texts],
                   start[texts] + positions)


def packed_feeds(features: dict[str, Any], inputs: list[str]) -> tuple[Packing, dict[str, np.ndarray]]:
    """Return the layout of a tokenized batch (tensors or arrays, with its attention_mask) and a packed graph's inputs:
    position_ids and segments, and each other input named in inputs laid out in the rows."""
    mask = np.asarray(features["attention_mask"])
    layout = pack(mask)
    feeds = layout.feeds()
    for name in inputs:
        if name not in feeds:
            feeds[name] = layout.pack(np.asarray(features[name]))
    return layout, feeds
