"""Graph API client for sending: messages, mark-as-read with typing, media download.

One pooled aiohttp session for all bots; the bot's token travels per request and never appears
in logs, exception messages or reprs. Meta's error object is parsed into :class:`GraphApiError`
with the action the sender should take.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from egress.compose import mark_read as mark_read_payload
from egress.errors import ErrorAction, classify


class GraphApiError(Exception):
    """A failed Graph API call, with Meta's code and what to do about it."""

    def __init__(
        self,
        code: int | None,
        message: str,
        *,
        subcode: int | None = None,
        http_status: int | None = None,
        fbtrace_id: str | None = None,
    ) -> None:
        super().__init__(f"Graph API error {code}: {message}")
        self.code = code
        self.subcode = subcode
        self.message = message
        self.http_status = http_status
        self.fbtrace_id = fbtrace_id
        self.action = classify(code, http_status)


class GraphClient:
    def __init__(
        self,
        base_url: str,
        version: str = "v25.0",
        *,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 10.0,
        max_connections: int = 100,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.version = version
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_connections = max_connections

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                timeout=self._timeout,
            )
        return self._session

    def __repr__(self) -> str:
        return f"GraphClient({self.base_url!r}, {self.version!r})"

    async def _post(self, path: str, token: str, payload: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base_url}/{self.version}/{path}"
        headers = {"Authorization": f"Bearer {token}"}
        try:
            async with self.session.post(url, json=payload, headers=headers) as resp:
                try:
                    data = await resp.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    data = None
                if resp.status >= 400 or not isinstance(data, dict) or "error" in data:
                    raise _error_from(resp.status, data)
                return data
        except TimeoutError:
            raise GraphApiError(None, "timeout", http_status=None) from None
        except aiohttp.ClientError as exc:
            raise GraphApiError(None, f"connection error: {type(exc).__name__}") from None

    async def send_message(self, phone_number_id: str, token: str, payload: dict[str, Any]) -> str:
        """Send; returns the wamid Meta assigned (acceptance, not delivery)."""
        data = await self._post(f"{phone_number_id}/messages", token, payload)
        try:
            return str(data["messages"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise GraphApiError(None, "no message id in the response", http_status=200) from None

    async def mark_read(
        self, phone_number_id: str, token: str, message_id: str, typing: bool = True
    ) -> None:
        payload = mark_read_payload(message_id, typing=typing)
        await self._post(f"{phone_number_id}/messages", token, payload)

    async def get_media(self, media_id: str, token: str, *, max_bytes: int) -> tuple[bytes, str]:
        """Two-step download: the media's short-lived URL, then its bytes (size-bounded)."""
        headers = {"Authorization": f"Bearer {token}"}
        url = f"{self.base_url}/{self.version}/{media_id}"
        async with self.session.get(url, headers=headers) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400 or "url" not in data:
                raise _error_from(resp.status, data)
        if int(data.get("file_size") or 0) > max_bytes:
            raise GraphApiError(None, f"media larger than {max_bytes} bytes", http_status=413)
        async with self.session.get(data["url"], headers=headers) as resp:
            if resp.status >= 400:
                raise GraphApiError(
                    None, f"media download failed ({resp.status})", http_status=resp.status
                )
            body = bytearray()
            async for chunk in resp.content.iter_chunked(65536):
                body += chunk
                if len(body) > max_bytes:
                    raise GraphApiError(
                        None, f"media larger than {max_bytes} bytes", http_status=413
                    )
        return bytes(body), str(data.get("mime_type") or resp.content_type)

    async def aclose(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()


def _error_from(status: int, data: Any) -> GraphApiError:
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        return GraphApiError(None, f"HTTP {status}", http_status=status)

    def _int(value: Any) -> int | None:
        try:
            return int(value)
        except (TypeError, ValueError):
            return None

    return GraphApiError(
        _int(err.get("code")),
        str(err.get("message") or "")[:300],
        subcode=_int(err.get("error_subcode")),
        http_status=status,
        fbtrace_id=err.get("fbtrace_id"),
    )


__all__ = ["ErrorAction", "GraphApiError", "GraphClient"]
