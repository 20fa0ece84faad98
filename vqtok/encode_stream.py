"""`EncodeStream`: the iterator `vqtok.api.Tokenizer.encode_stream` returns.

It feeds a long video's chunks through the model's streaming encoder, padding the end the way a
one-shot encode does, and runs each step under the tokenizer's inference settings (and the
stream's own beam width), so that streams with different settings can interleave.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from torch import Tensor

from vqtok.errors import VqtokError
from vqtok.families.tiling import Tiling

if TYPE_CHECKING:
    from vqtok.api import Tokenizer

__all__ = ["EncodeStream"]


class EncodeStream(Iterator[Tensor]):
    """Iterator of index chunks from `Tokenizer.encode_stream`; pads the video's end.

    Attributes:
        frames: real frames read so far.
        padding: frames appended after the last real one (set once the input is exhausted).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        chunks: Iterable[Tensor],
        allowed: Sequence[Tensor] | None = None,
        levels: int | None = None,
        beam: int | None = None,
        tiling: Tiling | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.frames = 0
        self.padding = 0
        self.beam = None if beam is None else tokenizer.check_beam(beam)
        levels = None if levels is None else tokenizer.check_levels(levels)
        tiled = {} if tiling is None else {"tiling": tokenizer.check_tiling(tiling)}
        self._inner = tokenizer.model.encode_stream(self._padded(iter(chunks)), allowed, levels,
                                                    **tiled)

    def _padded(self, chunks: Iterator[Tensor]) -> Iterator[Tensor]:
        last = None
        for chunk in chunks:
            chunk = self.tokenizer._prepare(chunk)
            if chunk.shape[2] == 0:
                continue
            self.frames += chunk.shape[2]
            last = chunk[:, :, -1:]
            yield chunk
        if last is None:
            raise VqtokError("the video has no frames")
        self.padding = self.tokenizer.padded_frames(self.frames) - self.frames
        if self.padding:
            yield last.expand(-1, -1, self.padding, -1, -1)

    def __next__(self) -> Tensor:
        # enter inference/autocast per step: a generator holding the context across ``yield``
        # would leak it into the caller's code between chunks
        with self.tokenizer._running(self.beam):
            return next(self._inner)
