"""Test helpers fairmeter ships: the provider emulator and a frozen clock.

The emulator is a fake OpenAI + Anthropic HTTP server speaking their exact wire formats, with fault injection
chosen per request by `x-emulator-*` headers. See docs/emulator.md.

    with EmulatorServer() as emu:
        client = openai.OpenAI(base_url=emu.openai_base_url, api_key="sk-test")
        anthropic.Anthropic(base_url=emu.origin, api_key="sk-ant-test")
"""

from __future__ import annotations

from fairmeter.testing.clock import FrozenClock
from fairmeter.testing.server import EmulatorServer, serve

__all__ = ["EmulatorServer", "FrozenClock", "serve"]
