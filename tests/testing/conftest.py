"""Fixtures for the emulator's own tests: one real emulator on a real port, reset before each test."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest

from fairmeter.testing import EmulatorServer


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[EmulatorServer]:
    with EmulatorServer() as server:
        yield server


@pytest.fixture
def emu(emulator_server: EmulatorServer) -> EmulatorServer:
    emulator_server.reset()
    return emulator_server


@pytest.fixture
def oai(emu: EmulatorServer) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=emu.openai_base_url, api_key="sk-test", max_retries=0)
    yield client
    client.close()


@pytest.fixture
def ant(emu: EmulatorServer) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=emu.origin, api_key="sk-ant-test", max_retries=0)
    yield client
    client.close()
