"""OpenAI requests (chat completions, Responses) → `ParsedRequest`, refusing malformed bodies.

The bound rules are in docs/bounds.md; shared helpers and constants in `fairmeter.usage.request`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fairmeter.errors import InvalidRequest
from fairmeter.usage.request import (
    MAX_CHOICES,
    MESSAGE_OVERHEAD_TOKENS,
    OPENAI_IMAGE_TOKENS,
    PART_OVERHEAD_TOKENS,
    PROVIDER_TOOL_TOKENS,
    SCHEMA_OVERHEAD_TOKENS,
    TOOL_OVERHEAD_TOKENS,
    TOOLS_PROMPT_TOKENS,
    ParsedRequest,
    Tally,
    count_extra_fields,
    invalid,
    optional_bool,
    optional_int,
    optional_list,
    optional_object,
    optional_type,
    require_item,
    require_model,
    require_object,
    require_type,
    searches_total,
    show,
    token_limit,
)

# Fields that carry no prompt text (sampling and control) or that are read explicitly below.
_CHAT_KNOWN = frozenset(
    {
        "model", "messages", "stream", "stream_options", "n", "max_completion_tokens", "max_tokens",
        "tools", "functions", "tool_choice", "function_call", "response_format", "prediction",
        "web_search_options", "audio", "modalities", "frequency_penalty", "presence_penalty", "logit_bias",
        "logprobs", "top_logprobs", "metadata", "parallel_tool_calls", "prompt_cache_key",
        "prompt_cache_options", "prompt_cache_retention", "reasoning_effort", "safety_identifier", "seed",
        "service_tier", "stop", "store", "temperature", "top_p", "user", "verbosity", "moderation",
    }
)  # fmt: skip
_RESPONSES_KNOWN = frozenset(
    {
        "model", "input", "instructions", "stream", "stream_options", "background", "background_options",
        "max_output_tokens", "max_tool_calls", "tools", "tool_choice", "text", "previous_response_id",
        "conversation", "prompt", "context_management", "include", "metadata", "parallel_tool_calls",
        "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention", "reasoning", "safety_identifier",
        "service_tier", "store", "temperature", "top_logprobs", "top_p", "truncation", "user", "moderation",
        "access_programs", "image",
    }
)  # fmt: skip

# Client-executed tools whose definition the provider writes itself (hidden text we cannot measure).
_PROVIDER_DEFINED_TOOLS = ("computer", "local_shell", "shell", "apply_patch")
# Input items that carry only visible text or structured data: counted by their JSON bytes.
_JSON_ITEMS = frozenset(
    {
        "function_call", "custom_tool_call", "computer_call", "local_shell_call", "local_shell_call_output",
        "shell_call", "shell_call_output", "apply_patch_call", "apply_patch_call_output", "mcp_list_tools",
        "mcp_approval_request", "mcp_approval_response", "mcp_call",
    }
)  # fmt: skip


def parse_chat(body: object) -> ParsedRequest:
    """Validate a chat completions request and compute its bounds."""
    return _guard(_parse_chat, body)


def parse_responses(body: object) -> ParsedRequest:
    """Validate a Responses API request and compute its bounds."""
    return _guard(_parse_responses, body)


def _guard(parse: Callable[[object], ParsedRequest], body: object) -> ParsedRequest:
    try:
        return parse(body)
    except RecursionError:
        # orjson decodes up to 1024 levels; Python's default recursion limit is lower.
        raise InvalidRequest("the request is nested too deeply to read.") from None


# ---------------------------------------------------------------- chat completions


def _parse_chat(raw: object) -> ParsedRequest:
    body = require_object(raw)
    model = require_model(body)
    stream = optional_bool(body, "stream")
    options = optional_object(body, "stream_options")
    include_usage = options is not None and optional_bool(options, "include_usage", "stream_options.include_usage")
    n = optional_int(body, "n", minimum=1, maximum=MAX_CHOICES) or 1
    limits = [v for v in (token_limit(body, "max_completion_tokens"), token_limit(body, "max_tokens")) if v]
    # Both given: the provider decides which one it honours, so the larger one covers either choice.
    output_limit = max(limits) if limits else None

    messages = body.get("messages")
    if messages is None:
        raise invalid("messages is required: a non-empty list of message objects.", "messages")
    if not isinstance(messages, list) or not messages:
        raise invalid(f"messages must be a non-empty list of message objects, got {show(messages)}.", "messages")
    tally = Tally()
    for i, message in enumerate(messages):
        _chat_message(message, f"messages[{i}]", tally)

    tools = optional_list(body, "tools")
    functions = optional_list(body, "functions")
    if tools or functions:
        tally.add(TOOLS_PROMPT_TOKENS)
    for i, tool in enumerate(tools or []):
        _chat_tool(require_item(tool, f"tools[{i}]"), f"tools[{i}]", tally)
    for i, function in enumerate(functions or []):
        tally.json(require_item(function, f"functions[{i}]"))
        tally.add(TOOL_OVERHEAD_TOKENS)
    for key in ("tool_choice", "function_call"):
        if body.get(key) is not None:
            tally.json(body[key])
    response_format = optional_object(body, "response_format")
    if response_format is not None:
        tally.json(response_format)
        tally.add(SCHEMA_OVERHEAD_TOKENS)

    searches: list[int | None] = []
    if optional_object(body, "web_search_options") is not None:
        searches.append(None)
        tally.unbounded("web_search_options adds search results the gateway cannot see to the input")
    count_extra_fields(body, _CHAT_KNOWN, tally)
    return ParsedRequest(
        model=model,
        stream=stream,
        include_usage=include_usage,
        n=n,
        output_limit=output_limit,
        input_tokens_bound=tally.tokens,
        prompt_text_bytes=tally.visible_bytes,
        max_web_searches=searches_total(searches),
        unbounded_reason=tally.unbounded_reason,
        output_extra_tokens=_prediction_tokens(body),
        service_tier=_service_tier(body),
    )


def _chat_message(raw: object, param: str, tally: Tally) -> None:
    message = require_item(raw, param)
    role = message.get("role")
    if not isinstance(role, str):
        raise invalid(f"{param}.role must be a string, got {show(role)}.", f"{param}.role")
    tally.add(MESSAGE_OVERHEAD_TOKENS)
    tally.label(role)
    tally.label_field(message, "name", param)
    tally.label_field(message, "tool_call_id", param)
    tally.text_field(message, "refusal", param)
    content = message.get("content")
    if isinstance(content, str):
        tally.text(content)
    elif isinstance(content, list):
        for j, part in enumerate(content):
            _chat_part(part, f"{param}.content[{j}]", tally)
    elif content is not None:
        raise invalid(f"{param}.content must be a string or a list of parts, got {show(content)}.", f"{param}.content")
    tool_calls = optional_list(message, "tool_calls", f"{param}.tool_calls")
    for j, call in enumerate(tool_calls or []):
        tally.json(require_item(call, f"{param}.tool_calls[{j}]"))
        tally.add(PART_OVERHEAD_TOKENS)
    if message.get("function_call") is not None:
        tally.json(message["function_call"])
    if message.get("audio") is not None:
        tally.unbounded(f"{param}.audio refers to an earlier audio response the gateway cannot see")


def _chat_part(raw: object, param: str, tally: Tally) -> None:
    part = require_item(raw, param)
    kind = require_type(part, param)
    tally.add(PART_OVERHEAD_TOKENS)
    if kind == "text":
        tally.text_field(part, "text", param, required=True)
    elif kind == "refusal":
        tally.text_field(part, "refusal", param, required=True)
    elif kind == "image_url":
        tally.add(OPENAI_IMAGE_TOKENS)  # a ceiling whatever the size or detail; base64 is not text
    elif kind == "input_audio":
        audio = optional_object(part, "input_audio", f"{param}.input_audio") or {}
        data = audio.get("data")
        if not isinstance(data, str):
            raise invalid(f"{param}.input_audio.data must be a base64 string, got {show(data)}.", param)
        # Audio is ~10 tokens per second; the smallest accepted encoding is hundreds of bytes per second.
        tally.add(len(data))
    elif kind == "file":
        tally.unbounded(f"{param} is a file whose pages the gateway cannot count")
    else:
        tally.unbounded(f"{param} has content type {show(kind)}, which fairmeter cannot bound")


def _chat_tool(tool: Mapping[str, object], param: str, tally: Tally) -> None:
    kind = optional_type(tool, param)
    if kind in (None, "function", "custom"):
        tally.json(tool)
        tally.add(TOOL_OVERHEAD_TOKENS)
    else:
        tally.unbounded(f"{param} has tool type {show(kind)}, which fairmeter cannot bound")


def _prediction_tokens(body: Mapping[str, object]) -> int:
    """Rejected prediction tokens are billed as output: bound them by the prediction's bytes."""
    prediction = optional_object(body, "prediction")
    if prediction is None:
        return 0
    tally = Tally()
    content = prediction.get("content")
    if isinstance(content, str):
        tally.text(content)
    elif isinstance(content, list):
        for j, part in enumerate(content):
            item = require_item(part, f"prediction.content[{j}]")
            tally.text_field(item, "text", f"prediction.content[{j}]", required=True)
    else:
        raise invalid(
            f"prediction.content must be a string or a list of text parts, got {show(content)}.", "prediction.content"
        )
    return tally.visible_bytes


def _service_tier(body: Mapping[str, object]) -> str | None:
    tier = body.get("service_tier")
    return tier if isinstance(tier, str) else None


# ---------------------------------------------------------------- Responses


def _parse_responses(raw: object) -> ParsedRequest:
    body = require_object(raw)
    model = require_model(body)
    stream = optional_bool(body, "stream")
    if optional_bool(body, "background"):
        raise invalid(
            "background responses are not supported: fairmeter must see the call finish to bill it.", "background"
        )
    optional_object(body, "stream_options")
    output_limit = token_limit(body, "max_output_tokens")
    max_tool_calls = optional_int(body, "max_tool_calls", minimum=0, maximum=10_000_000)

    tally = Tally()
    for key, why in (
        ("previous_response_id", "pulls in a stored conversation the gateway cannot see"),
        ("conversation", "pulls in a stored conversation the gateway cannot see"),
        ("prompt", "pulls in a stored prompt the gateway cannot see"),
    ):
        if body.get(key) is not None:
            tally.unbounded(f"{key} {why}")
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise invalid(f"instructions must be a string, got {show(instructions)}.", "instructions")
        tally.add(MESSAGE_OVERHEAD_TOKENS)
        tally.text(instructions)

    items = body.get("input")
    if isinstance(items, str):
        tally.add(MESSAGE_OVERHEAD_TOKENS)
        tally.text(items)
    elif isinstance(items, list):
        for i, item in enumerate(items):
            _responses_item(item, f"input[{i}]", tally)
    elif items is not None or tally.unbounded_reason is None:
        # Without input, only a stored prompt or conversation can supply one.
        raise invalid(f"input must be a string or a list of input items, got {show(items)}.", "input")

    tools = optional_list(body, "tools")
    searches: list[int | None] = []
    if tools:
        tally.add(TOOLS_PROMPT_TOKENS)
    for i, tool in enumerate(tools or []):
        if _responses_tool(require_item(tool, f"tools[{i}]"), f"tools[{i}]", tally):
            searches.append(max_tool_calls)
    if body.get("tool_choice") is not None:
        tally.json(body["tool_choice"])
    text = optional_object(body, "text")
    if text is not None:
        tally.json(text)
        tally.add(SCHEMA_OVERHEAD_TOKENS)
    if optional_list(body, "context_management"):
        tally.unbounded("context_management may run a compaction pass the gateway cannot bound")
    count_extra_fields(body, _RESPONSES_KNOWN, tally)
    # max_tool_calls caps all built-in tool calls together, so it also caps the sum of searches.
    total = searches_total(searches)
    if total is not None and max_tool_calls is not None:
        total = min(total, max_tool_calls)
    return ParsedRequest(
        model=model,
        stream=stream,
        include_usage=False,
        n=1,
        output_limit=output_limit,
        input_tokens_bound=tally.tokens,
        prompt_text_bytes=tally.visible_bytes,
        max_web_searches=total,
        unbounded_reason=tally.unbounded_reason,
        service_tier=_service_tier(body),
    )


def _responses_item(raw: object, param: str, tally: Tally) -> None:
    item = require_item(raw, param)
    kind = optional_type(item, param)
    if kind is None or kind == "message":
        _responses_message(item, param, tally)
    elif kind in ("function_call_output", "custom_tool_call_output"):
        tally.add(MESSAGE_OVERHEAD_TOKENS)
        tally.label_field(item, "call_id", param)
        output = item.get("output")
        if isinstance(output, str):
            tally.text(output)
        elif isinstance(output, list):
            for j, part in enumerate(output):
                _responses_part(part, f"{param}.output[{j}]", tally)
        else:
            raise invalid(f"{param}.output must be a string or a list of parts, got {show(output)}.", param)
    elif kind == "computer_call_output":
        tally.add(MESSAGE_OVERHEAD_TOKENS + OPENAI_IMAGE_TOKENS)  # a screenshot
        output = item.get("output")
        if isinstance(output, dict) and output.get("file_id") is not None:
            tally.unbounded(f"{param}.output.file_id refers to a stored file the gateway cannot see")
    elif kind in _JSON_ITEMS:
        tally.add(MESSAGE_OVERHEAD_TOKENS)
        tally.json_item(item, param)
    elif kind == "reasoning":
        tally.unbounded(f"{param} is a reasoning item whose encrypted or stored tokens the gateway cannot count")
    elif kind == "item_reference":
        tally.unbounded(f"{param} refers to a stored item the gateway cannot see")
    else:
        tally.unbounded(f"{param} has item type {show(kind)}, which fairmeter cannot bound")


def _responses_message(item: Mapping[str, object], param: str, tally: Tally) -> None:
    role = item.get("role")
    if not isinstance(role, str):
        raise invalid(f"{param}.role must be a string, got {show(role)}.", f"{param}.role")
    tally.add(MESSAGE_OVERHEAD_TOKENS)
    tally.label(role)
    content = item.get("content")
    if isinstance(content, str):
        tally.text(content)
    elif isinstance(content, list):
        for j, part in enumerate(content):
            _responses_part(part, f"{param}.content[{j}]", tally)
    else:
        raise invalid(f"{param}.content must be a string or a list of parts, got {show(content)}.", f"{param}.content")


def _responses_part(raw: object, param: str, tally: Tally) -> None:
    part = require_item(raw, param)
    kind = require_type(part, param)
    tally.add(PART_OVERHEAD_TOKENS)
    if kind in ("input_text", "output_text", "text"):
        tally.text_field(part, "text", param, required=True)
        if part.get("annotations"):
            tally.json(part["annotations"])  # citations may be rendered back; they are small
    elif kind == "refusal":
        tally.text_field(part, "refusal", param, required=True)
    elif kind == "input_image":
        if part.get("file_id") is not None:
            tally.unbounded(f"{param}.file_id refers to a stored file the gateway cannot see")
        tally.add(OPENAI_IMAGE_TOKENS)
    elif kind == "input_file":
        tally.unbounded(f"{param} is a file whose pages the gateway cannot count")
    else:
        tally.unbounded(f"{param} has content type {show(kind)}, which fairmeter cannot bound")


def _responses_tool(tool: Mapping[str, object], param: str, tally: Tally) -> bool:
    """Count one tool; True when it is a web-search tool."""
    kind = require_type(tool, param)
    if kind in ("function", "custom"):
        tally.json(tool)
        tally.add(TOOL_OVERHEAD_TOKENS)
        return False
    if kind.startswith("web_search"):
        tally.json(tool)
        tally.unbounded(f"{param} ({kind}) adds search results the gateway cannot see to the input")
        return True
    if kind.startswith(_PROVIDER_DEFINED_TOOLS):
        tally.json(tool)
        tally.add(PROVIDER_TOOL_TOKENS)
        return False
    # file_search, code_interpreter, mcp, image_generation, tool_search and anything new.
    tally.unbounded(f"{param} ({kind}) pulls in data or costs the gateway cannot see")
    return False
