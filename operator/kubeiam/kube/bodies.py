"""Reading an HTTP request's body no larger than a limit, whatever its Content-Length says."""

from __future__ import annotations

import aiohttp.web

CHUNK_BYTES = 16 * 1024


async def read_bounded(request: aiohttp.web.Request, limit: int) -> bytes | None:
    """The body, or None once it grows past `limit` (a declared length may lie, and a chunked
    body declares none): never more than `limit` plus one chunk is held."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(CHUNK_BYTES):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
