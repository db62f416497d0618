"""What fairmeter reads from a client request before forwarding it, and the helpers both providers share.

Reading a request does two things: it refuses malformed bodies with an `InvalidRequest` whose sentence
names the field and the offending value (nothing is held or charged), and it computes upper bounds on
the tokens the call can be billed for. The bound rules and every constant are explained, with the
reason each is a true upper bound, in docs/bounds.md. In short:

* every BPE token is at least one UTF-8 byte, so text counts its UTF-8 bytes;
* tool definitions, JSON schemas and tool choices count the bytes of their compact JSON;
* fixed overheads cover framing the provider adds (per request, per message, per part, per tool);
* media without a byte-derived bound use a per-item ceiling (images) or their base64 length (audio);
* anything that pulls in input the gateway cannot see sets ``unbounded_reason`` instead.

Pure: no I/O. Provider formats are read in `request_openai` and `request_anthropic`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from fairmeter.errors import InvalidRequest
from fairmeter.record import record
from fairmeter.usage.model import RequestBound

# Fixed overheads, in tokens. docs/bounds.md explains each and why it is generous.
REQUEST_OVERHEAD_TOKENS = 256  # start/end-of-turn framing, hidden date/system lines some models add
MESSAGE_OVERHEAD_TOKENS = 32  # role header and separators around one message (providers use 3 to 10)
PART_OVERHEAD_TOKENS = 8  # separators between content parts or blocks
TOOL_OVERHEAD_TOKENS = 32  # per tool definition, on top of its JSON bytes
TOOLS_PROMPT_TOKENS = 1_000  # hidden tool-use system prompt when any tool is present (Anthropic: ~350)
SCHEMA_OVERHEAD_TOKENS = 64  # wrapper text around a structured-output schema
PROVIDER_TOOL_TOKENS = 4_000  # a provider-defined tool (bash, computer, text editor): hidden definition
OPENAI_IMAGE_TOKENS = 32_000  # per image part, any size and detail ("original": 10,240 patches × 2.46)
ANTHROPIC_IMAGE_TOKENS = 10_000  # per image block, any size (largest documented: ~4,784)

MAX_TOKEN_LIMIT = 10_000_000  # an output limit above this is a client bug, not a request
MAX_CHOICES = 128  # OpenAI's own upper limit on ``n``
_SHOW_CHARS = 60


@record
class ParsedRequest:
    """What the gateway needs from a request to price its worst case and forward it.

    ``output_extra_tokens`` are output tokens the output limit may not cover, per choice (OpenAI
    predicted outputs: rejected prediction tokens are billed as output). ``service_tier`` is the
    requested tier or speed (``priority``, ``flex``, ``fast`` …) for pricing to apply.
    ``unbounded_reason`` is set when the call can pull in input (or cost) the gateway cannot see; the
    bound then covers only the visible part and the gateway must use its configured per-request
    maximum or refuse the call.
    """

    model: str
    stream: bool
    include_usage: bool
    n: int
    output_limit: int | None
    input_tokens_bound: int
    prompt_text_bytes: int
    max_web_searches: int | None
    unbounded_reason: str | None
    output_extra_tokens: int = 0
    service_tier: str | None = None

    def bound(self, model_max_output_tokens: int) -> RequestBound:
        """The request's worst case for pricing, given the model's own output maximum.

        Output is ``n × (output limit, or the model maximum, + extra)``. When a web-search tool has
        no use limit, searches are bounded by the output bound: each search is a tool call the model
        must generate, which takes at least one output token.
        """
        limit = self.output_limit if self.output_limit is not None else model_max_output_tokens
        max_output = self.n * (limit + self.output_extra_tokens)
        searches = self.max_web_searches if self.max_web_searches is not None else max_output
        return RequestBound(
            max_input_tokens=self.input_tokens_bound,
            max_output_tokens=max_output,
            max_web_searches=searches,
            prompt_text_bytes=self.prompt_text_bytes,
        )


class Tally:
    """Accumulates the input bound while a request is read.

    ``tokens`` is the bound so far; ``visible_bytes`` the UTF-8 bytes of prompt text a person wrote
    or a tool returned (no schemas, ids or roles); ``unbounded_reason`` the first reason found.
    """

    __slots__ = ("tokens", "unbounded_reason", "visible_bytes")

    def __init__(self) -> None:
        self.tokens = REQUEST_OVERHEAD_TOKENS
        self.visible_bytes = 0
        self.unbounded_reason: str | None = None

    def add(self, tokens: int) -> None:
        """Add a fixed overhead."""
        self.tokens += tokens

    def text(self, value: str) -> None:
        """Count prompt text: one token per UTF-8 byte at most."""
        size = utf8_len(value)
        self.tokens += size
        self.visible_bytes += size

    def label(self, value: str) -> None:
        """Count a role, name or id: rendered into the prompt, but not prose."""
        self.tokens += utf8_len(value)

    def json(self, value: object) -> None:
        """Count a structured value (schema, tool call, tool definition) by its compact JSON bytes."""
        self.tokens += json_len(value)

    def unbounded(self, reason: str) -> None:
        """Record that input the gateway cannot see may be pulled in; the first reason wins."""
        if self.unbounded_reason is None:
            self.unbounded_reason = reason

    def text_field(self, obj: Mapping[str, object], key: str, param: str, *, required: bool = False) -> None:
        """Count ``obj[key]`` as prompt text; it must be a string (or absent/null when optional)."""
        value = obj.get(key)
        if value is None and not required:
            return
        if not isinstance(value, str):
            raise invalid(f"{param}.{key} must be a string, got {show(value)}.", f"{param}.{key}")
        self.text(value)

    def label_field(self, obj: Mapping[str, object], key: str, param: str) -> None:
        """Count an optional ``obj[key]`` label; it must be a string when present."""
        value = obj.get(key)
        if value is None:
            return
        if not isinstance(value, str):
            raise invalid(f"{param}.{key} must be a string, got {show(value)}.", f"{param}.{key}")
        self.label(value)

    def json_item(self, item: Mapping[str, object], what: str) -> None:
        """Count a whole item by its JSON bytes; a file reference inside it makes the input unbounded."""
        self.json(item)
        if has_file_reference(item):
            self.unbounded(f"{what} refers to a stored file the gateway cannot see")


def utf8_len(value: str) -> int:
    """UTF-8 byte length; lone surrogates (never in decoded JSON) count their 3 encoded bytes."""
    return len(value.encode("utf-8", "surrogatepass"))


def json_len(value: object) -> int:
    """Bytes of the compact JSON serialization of a decoded JSON value."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"the request contains a value that is not JSON: {exc}.") from None
    return utf8_len(text)


_FILE_KEYS = frozenset({"file_id", "file_url"})


def has_file_reference(value: object) -> bool:
    """True when a (nested) object has a non-null ``file_id`` or ``file_url``."""
    stack = [value]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            for key, child in current.items():
                if key in _FILE_KEYS and child is not None:
                    return True
                stack.append(child)
        elif isinstance(current, list):
            stack.extend(current)
    return False


def show(value: object) -> str:
    """A short rendering of an offending value for an error sentence."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    if len(text) > _SHOW_CHARS:
        text = text[: _SHOW_CHARS - 1] + "…"
    return text


def invalid(message: str, param: str | None) -> InvalidRequest:
    """Build the refusal for a malformed request field."""
    return InvalidRequest(message, param=param)


def require_object(body: object) -> dict[str, object]:
    """The body must be a JSON object."""
    if not isinstance(body, dict):
        raise invalid(f"the request body must be a JSON object, got {show(body)}.", None)
    for key in body:
        if not isinstance(key, str):
            raise invalid(f"the request body has a non-string key {show(key)}.", None)
    return body


def require_model(body: Mapping[str, object]) -> str:
    """``model`` must be a non-empty string."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        if model is None:
            raise invalid("model is required: name the model to call.", "model")
        raise invalid(f"model must be a non-empty string, got {show(model)}.", "model")
    return model


def optional_bool(body: Mapping[str, object], key: str, param: str | None = None) -> bool:
    """An optional boolean field (null or absent is False)."""
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        name = param or key
        raise invalid(f"{name} must be true or false, got {show(value)}.", name)
    return value


def optional_object(body: Mapping[str, object], key: str, param: str | None = None) -> dict[str, object] | None:
    """An optional JSON object field (null or absent is None)."""
    value = body.get(key)
    if value is None:
        return None
    name = param or key
    if not isinstance(value, dict):
        raise invalid(f"{name} must be an object, got {show(value)}.", name)
    return value


def optional_list(body: Mapping[str, object], key: str, param: str | None = None) -> list[object] | None:
    """An optional JSON array field (null or absent is None)."""
    value = body.get(key)
    if value is None:
        return None
    name = param or key
    if not isinstance(value, list):
        raise invalid(f"{name} must be a list, got {show(value)}.", name)
    return value


def optional_int(
    body: Mapping[str, object], key: str, *, minimum: int, maximum: int, param: str | None = None
) -> int | None:
    """An optional integer field within ``minimum..maximum`` (bools are not integers)."""
    value = body.get(key)
    if value is None:
        return None
    name = param or key
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"{name} must be an integer, got {show(value)}.", name)
    if value < minimum:
        raise invalid(f"{name} must be at least {minimum:,}, got {value:,}.", name)
    if value > maximum:
        raise invalid(f"{name} must be at most {maximum:,}, got {value:,}.", name)
    return value


def token_limit(body: Mapping[str, object], key: str, param: str | None = None) -> int | None:
    """An optional output-token limit: a positive integer no larger than 10,000,000."""
    return optional_int(body, key, minimum=1, maximum=MAX_TOKEN_LIMIT, param=param)


def require_item(value: object, param: str) -> dict[str, object]:
    """A list element that must be a JSON object."""
    if not isinstance(value, dict):
        raise invalid(f"{param} must be an object, got {show(value)}.", param)
    return value


def require_type(item: Mapping[str, object], param: str) -> str:
    """An item's required ``type`` string."""
    value = item.get("type")
    if not isinstance(value, str):
        raise invalid(f"{param}.type must be a string, got {show(value)}.", f"{param}.type")
    return value


def optional_type(item: Mapping[str, object], param: str) -> str | None:
    """An item's optional ``type`` string (absent or null is None)."""
    return None if item.get("type") is None else require_type(item, param)


def count_extra_fields(body: Mapping[str, object], known: frozenset[str], tally: Tally) -> None:
    """Count top-level fields fairmeter does not know by their JSON bytes.

    Providers add fields often; they are forwarded untouched. Counting them keeps the bound true if a
    new field carries text into the prompt (a field that references stored data cannot be seen).
    """
    for key, value in body.items():
        if key not in known and value is not None:
            tally.label(key)
            tally.json(value)


def searches_total(limits: list[int | None]) -> int | None:
    """Sum of per-tool search limits; None when any tool has no limit; 0 with no search tool."""
    if any(limit is None for limit in limits):
        return None
    return sum(limit for limit in limits if limit is not None)
