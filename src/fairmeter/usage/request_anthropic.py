"""Anthropic Messages requests → `ParsedRequest`, refusing malformed bodies.

The bound rules are in docs/bounds.md; shared helpers and constants in `fairmeter.usage.request`.
"""

from __future__ import annotations

from collections.abc import Mapping

from fairmeter.errors import InvalidRequest
from fairmeter.usage.request import (
    ANTHROPIC_IMAGE_TOKENS,
    MAX_TOKEN_LIMIT,
    MESSAGE_OVERHEAD_TOKENS,
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

_KNOWN = frozenset(
    {
        "model", "messages", "max_tokens", "system", "tools", "tool_choice", "stream", "metadata",
        "stop_sequences", "temperature", "top_k", "top_p", "thinking", "service_tier", "speed", "container",
        "mcp_servers", "context_management", "output_config", "output_format", "cache_control", "diagnostics",
        "inference_geo", "user_profile_id", "workspace_id",
    }
)  # fmt: skip
# Client-executed tools Anthropic defines itself: their schema is hidden text we cannot measure.
_PROVIDER_DEFINED_TOOLS = ("bash_", "text_editor_", "computer_", "memory_", "browser_")
# Results passed back from earlier turns that carry only visible data: counted by their JSON bytes
# (a file id inside one refers to a stored file and makes the input unbounded).
_RESULT_BLOCKS = frozenset(
    {
        "search_result", "code_execution_tool_result", "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
    }
)  # fmt: skip


def parse_messages(body: object) -> ParsedRequest:
    """Validate a Messages API request and compute its bounds."""
    try:
        return _parse(body, count_only=False)
    except RecursionError:
        raise InvalidRequest("the request is nested too deeply to read.") from None


def parse_count_tokens(body: object) -> str:
    """Validate a count_tokens request (same shape as messages, ``max_tokens`` not needed); return its model."""
    try:
        return _parse(body, count_only=True).model
    except RecursionError:
        raise InvalidRequest("the request is nested too deeply to read.") from None


def _parse(raw: object, *, count_only: bool) -> ParsedRequest:
    body = require_object(raw)
    model = require_model(body)
    stream = optional_bool(body, "stream")
    max_tokens = token_limit(body, "max_tokens")
    if max_tokens is None and not count_only:
        raise invalid("max_tokens is required by the Messages API: set the most output tokens to allow.", "max_tokens")
    output_limit = max_tokens
    thinking = optional_object(body, "thinking")
    if thinking is not None:
        budget = optional_int(
            thinking, "budget_tokens", minimum=1, maximum=MAX_TOKEN_LIMIT, param="thinking.budget_tokens"
        )
        # With interleaved thinking the budget may exceed max_tokens; take the larger to be safe.
        if budget is not None and output_limit is not None:
            output_limit = max(output_limit, budget)

    messages = body.get("messages")
    if not isinstance(messages, list):
        if messages is None:
            raise invalid("messages is required: a list of message objects.", "messages")
        raise invalid(f"messages must be a list of message objects, got {show(messages)}.", "messages")
    tally = Tally()
    _system(body.get("system"), tally)
    for i, message in enumerate(messages):
        _message(message, f"messages[{i}]", tally)

    tools = optional_list(body, "tools")
    searches: list[int | None] = []
    if tools:
        tally.add(TOOLS_PROMPT_TOKENS)
    for i, tool in enumerate(tools or []):
        param = f"tools[{i}]"
        item = require_item(tool, param)
        if _tool(item, param, tally):
            searches.append(
                optional_int(item, "max_uses", minimum=1, maximum=MAX_TOKEN_LIMIT, param=f"{param}.max_uses")
            )
    if body.get("tool_choice") is not None:
        tally.json(body["tool_choice"])
    output_config = optional_object(body, "output_config")
    for schema in ((output_config or {}).get("format"), body.get("output_format")):
        if schema is not None:
            tally.json(schema)
            tally.add(SCHEMA_OVERHEAD_TOKENS)
    if body.get("container") is not None:
        tally.unbounded("container runs code and loads files the gateway cannot see")
    if optional_list(body, "mcp_servers"):
        tally.unbounded("mcp_servers pull in tool results the gateway cannot see")
    _context_management(body, tally)
    count_extra_fields(body, _KNOWN, tally)
    speed = body.get("speed")
    tier = body.get("service_tier")
    return ParsedRequest(
        model=model,
        stream=stream,
        include_usage=False,
        n=1,
        output_limit=output_limit,
        input_tokens_bound=tally.tokens,
        prompt_text_bytes=tally.visible_bytes,
        max_web_searches=searches_total(searches),
        unbounded_reason=tally.unbounded_reason,
        service_tier="fast" if speed == "fast" else (tier if isinstance(tier, str) else None),
    )


def _system(system: object, tally: Tally) -> None:
    if system is None:
        return
    tally.add(MESSAGE_OVERHEAD_TOKENS)
    if isinstance(system, str):
        tally.text(system)
    elif isinstance(system, list):
        for j, block in enumerate(system):
            _block(block, f"system[{j}]", tally)
    else:
        raise invalid(f"system must be a string or a list of text blocks, got {show(system)}.", "system")


def _message(raw: object, param: str, tally: Tally) -> None:
    message = require_item(raw, param)
    role = message.get("role")
    if not isinstance(role, str):
        raise invalid(f"{param}.role must be a string, got {show(role)}.", f"{param}.role")
    tally.add(MESSAGE_OVERHEAD_TOKENS)
    tally.label(role)
    _content(message.get("content"), f"{param}.content", tally)


def _content(content: object, param: str, tally: Tally) -> None:
    if isinstance(content, str):
        tally.text(content)
    elif isinstance(content, list):
        for j, block in enumerate(content):
            _block(block, f"{param}[{j}]", tally)
    else:
        raise invalid(f"{param} must be a string or a list of content blocks, got {show(content)}.", param)


def _block(raw: object, param: str, tally: Tally) -> None:
    block = require_item(raw, param)
    kind = require_type(block, param)
    tally.add(PART_OVERHEAD_TOKENS)
    if kind == "text":
        tally.text_field(block, "text", param, required=True)
        if block.get("citations"):
            tally.json(block["citations"])
    elif kind == "image":
        _image(block, param, tally)
    elif kind == "tool_result":
        tally.label_field(block, "tool_use_id", param)
        if block.get("content") is not None:
            _content(block["content"], f"{param}.content", tally)
    elif kind in ("tool_use", "server_tool_use"):
        tally.json(block)  # the model's own call: its arguments are plain JSON, whatever their keys
    elif kind in _RESULT_BLOCKS:
        tally.json_item(block, param)
    elif kind in ("thinking", "redacted_thinking"):
        tally.unbounded(f"{param} is a {kind} block whose encrypted tokens the gateway cannot count")
    elif kind == "document":
        tally.unbounded(f"{param} is a document whose pages the gateway cannot count")
    elif kind in ("web_search_tool_result", "web_fetch_tool_result"):
        tally.unbounded(f"{param} carries encrypted web content the gateway cannot count")
    elif kind == "container_upload":
        tally.unbounded(f"{param} refers to a stored file the gateway cannot see")
    else:
        tally.unbounded(f"{param} has block type {show(kind)}, which fairmeter cannot bound")


def _image(block: Mapping[str, object], param: str, tally: Tally) -> None:
    source = optional_object(block, "source", f"{param}.source")
    kind = optional_type(source, f"{param}.source") if source is not None else None
    if kind in ("base64", "url"):
        tally.add(ANTHROPIC_IMAGE_TOKENS)  # a ceiling whatever the size; base64 is not text
    elif kind == "file":
        tally.unbounded(f"{param}.source refers to a stored file the gateway cannot see")
    else:
        raise invalid(f"{param}.source must be a base64, url or file image source, got {show(source)}.", param)


def _tool(tool: Mapping[str, object], param: str, tally: Tally) -> bool:
    """Count one tool definition; True when it is a web-search server tool."""
    kind = optional_type(tool, param)
    if kind is None or kind == "custom":
        tally.json(tool)
        tally.add(TOOL_OVERHEAD_TOKENS)
        return False
    if kind.startswith("web_search"):
        tally.json(tool)
        tally.unbounded(f"{param} ({kind}) adds search results, billed as input, that the gateway cannot see")
        return True
    if kind.startswith(_PROVIDER_DEFINED_TOOLS):
        tally.json(tool)
        tally.add(PROVIDER_TOOL_TOKENS)
        return False
    # web_fetch, code_execution, tool_search, mcp_toolset and anything new.
    tally.unbounded(f"{param} ({kind}) pulls in data or costs the gateway cannot see")
    return False


def _context_management(body: Mapping[str, object], tally: Tally) -> None:
    config = optional_object(body, "context_management")
    if config is None:
        return
    edits = optional_list(config, "edits", "context_management.edits") or []
    for edit in edits:
        kind = edit.get("type") if isinstance(edit, dict) else None
        # Clearing edits only remove input; a compaction edit generates a summary we cannot bound.
        if not (isinstance(kind, str) and kind.startswith("clear_")):
            tally.unbounded("context_management may run a compaction pass the gateway cannot bound")
