"""One request to an OpenAI-compatible ``/chat/completions`` endpoint, with the retries a
busy server needs, on the standard library alone.

A reply that cannot be used (an HTTP 400, a 429 or 5xx still failing after the retries,
a timeout, a body that is not a chat completion) is a :class:`Reply` with ``error`` set:
one latent's problem, recorded with it. A server that cannot be reached, or that refuses
the key or the model (HTTP 401, 403, 404), fails every request alike: :class:`LLMError`,
which stops the run.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable

from saedata.config import LLMConfig
from saedata.errors import LLMError

FATAL_STATUS = (401, 403, 404, 405)
"""HTTP statuses that say the endpoint, key or model is wrong: no request can succeed."""
RETRY_AFTER_MAX = 60.0
"""The longest wait (seconds) a server's Retry-After header is obeyed for."""


@dataclass(frozen=True)
class Reply:
    """What one request came back with."""

    text: str | None
    """The message content (None when there was none to use)."""
    error: str | None
    """Why there is no usable reply (None when there is)."""
    prompt_tokens: int | None
    """Tokens of the prompt, as the endpoint's ``usage`` counted them (None when it did not say)."""
    completion_tokens: int | None
    """Tokens of the reply, likewise."""
    attempts: int
    """Requests sent: 1, or more after retries."""


def chat(cfg: LLMConfig, prompt: str, sleep: Callable[[float], None] = time.sleep) -> Reply:
    """Send ``prompt`` as one user message (temperature 0) and return the reply. HTTP 429
    and 5xx are retried ``cfg.retries`` times, after ``cfg.backoff`` seconds doubling each
    time (or the server's Retry-After); nothing else is retried. Raises LLMError when the
    endpoint cannot be reached or refuses the key or the model."""
    url = cfg.base_url.rstrip("/") + "/chat/completions"
    body = json.dumps({"model": cfg.model, "messages": [{"role": "user", "content": prompt}],
                       "temperature": 0}).encode()
    headers = {"Content-Type": "application/json"}
    if cfg.api_key:
        headers["Authorization"] = f"Bearer {cfg.api_key}"
    attempt = 0
    while True:
        attempt += 1
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=cfg.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = _detail(e)
            if e.code in FATAL_STATUS:
                raise LLMError(f"the LLM endpoint {url} refused the request: HTTP {e.code}{detail} "
                               "(check SAEDATA_LLM_BASE_URL, SAEDATA_LLM_MODEL and SAEDATA_LLM_API_KEY)") from None
            if (e.code == 429 or e.code >= 500) and attempt <= cfg.retries:
                sleep(_wait(e, cfg.backoff * 2 ** (attempt - 1)))
                continue
            return Reply(None, f"HTTP {e.code}{detail}" + (f" after {attempt} attempts" if attempt > 1 else ""),
                         None, None, attempt)
        except (TimeoutError, socket.timeout):
            return Reply(None, f"no reply within {cfg.timeout:g} s", None, None, attempt)
        except urllib.error.URLError as e:
            if isinstance(e.reason, (TimeoutError, socket.timeout)):
                return Reply(None, f"no reply within {cfg.timeout:g} s", None, None, attempt)
            raise LLMError(f"cannot reach the LLM endpoint {url}: {e.reason}") from None
        except OSError as e:  # the connection dropped mid-reply
            return Reply(None, f"the connection failed: {e}", None, None, attempt)
        return _parse(raw, attempt)


def _parse(raw: bytes, attempts: int) -> Reply:
    """The content and token counts of a chat completion body."""
    try:
        payload = json.loads(raw)
        content = payload["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        shown = raw[:200].decode("utf-8", "replace")
        return Reply(shown, "the reply is not a chat completion", None, None, attempts)
    usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
    if not isinstance(content, str):
        return Reply(None, "the reply has no text", _count(usage, "prompt_tokens"),
                     _count(usage, "completion_tokens"), attempts)
    return Reply(content, None, _count(usage, "prompt_tokens"), _count(usage, "completion_tokens"), attempts)


def _count(usage: dict, key: str) -> int | None:
    value = usage.get(key)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else None


def _wait(e: urllib.error.HTTPError, default: float) -> float:
    """Seconds to wait before retrying: the server's Retry-After (in seconds, capped), else ``default``."""
    try:
        return min(max(float(e.headers.get("Retry-After", "")), 0.0), RETRY_AFTER_MAX)
    except (TypeError, ValueError):
        return default


def _detail(e: urllib.error.HTTPError) -> str:
    """": <the server's message>" from an error body, on one line and short, or ""."""
    try:
        raw = e.read()[:2000].decode("utf-8", "replace")
    except OSError:
        return ""
    try:
        err = json.loads(raw).get("error")
        raw = err.get("message", "") if isinstance(err, dict) else str(err or "")
    except (ValueError, AttributeError):
        pass
    text = " ".join(raw.split())[:160]
    return f": {text}" if text else ""
