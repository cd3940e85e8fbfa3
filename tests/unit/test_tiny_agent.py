"""first/tiny-agent: the tiny random-weight model whose output head favours its eos, so that it
ends its turn within a few tokens as a chat model does (agents such as Claude Code report an
answer cut at ``max_tokens`` as an error). Through the transformers engine, as the stack runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hpc_functions.build_tiny_model import build_agent
from hpc_functions.engines import run_task

MESSAGES = [{"role": "user", "content": "Say hi"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "Read",
            "parameters": {
                "type": "object",
                "properties": {"file_path": {"type": "string"}},
                "required": ["file_path"],
            },
        },
    },
    {"type": "function", "function": {"name": "Bash"}},
]


def _engine(path: Path) -> dict[str, Any]:
    return {"kind": "transformers", "model": "tiny", "path": str(path)}


def _chat(path: Path, **body: Any) -> dict[str, Any]:
    task = {"request_id": "r", "engine": _engine(path), "body": {"messages": MESSAGES, **body}}
    result = run_task("chat_completions", task)
    assert "response" in result, result
    return dict(result["response"])


def test_eos_has_a_probability_near_0_4_at_every_step_and_is_the_argmax(
    tiny_agent_dir: Path,
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_agent_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_agent_dir).eval()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "tell me about the sea " * 50}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )["input_ids"]
    # Any continuation: random tokens, other than eos.
    generator = torch.Generator().manual_seed(0)
    words = torch.randint(1000, len(tokenizer), (1, 40), generator=generator)
    with torch.no_grad():
        logits = model(torch.cat([prompt, words], dim=1)).logits[0, -41:]
    eos = logits.softmax(-1)[:, tokenizer.eos_token_id]
    assert 0.3 < float(eos.min()) and float(eos.max()) < 0.5
    assert (logits.argmax(-1) == tokenizer.eos_token_id).all()


def test_sampled_answers_end_their_turn_in_a_few_tokens(tiny_agent_dir: Path) -> None:
    response = _chat(tiny_agent_dir, n=16, seed=1, max_tokens=64, temperature=1)
    assert {c["finish_reason"] for c in response["choices"]} == {"stop"}
    # P(no eos in 64 tokens) is about 0.6**64: each ends well inside the limit.
    assert response["usage"]["completion_tokens"] < 16 * 20
    assert any(c["message"]["content"] for c in response["choices"])


def test_a_greedy_answer_ends_its_turn(tiny_agent_dir: Path) -> None:
    response = _chat(tiny_agent_dir, temperature=0, max_tokens=64)
    assert response["choices"][0]["finish_reason"] == "stop"


def test_with_tools_and_tool_choice_auto_it_can_answer_in_text(tiny_agent_dir: Path) -> None:
    # Claude Code sends its tools with tool_choice auto: a text answer must be able to end the turn.
    response = _chat(tiny_agent_dir, tools=TOOLS, tool_choice="auto", n=8, seed=2, max_tokens=256)
    choices = response["choices"]
    assert {c["finish_reason"] for c in choices} <= {"stop", "tool_calls"}
    assert any(c["finish_reason"] == "stop" and not c["message"].get("tool_calls") for c in choices)


def test_tiny_agent_rebuild_is_byte_identical_and_differs_from_tiny_chat(
    tiny_agent_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    again = build_agent(tmp_path / "again")
    weights = (again / "model.safetensors").read_bytes()
    assert weights == (tiny_agent_dir / "model.safetensors").read_bytes()
    assert weights != (tiny_model_dir / "model.safetensors").read_bytes()
    stamp = (again / "tiny-model.stamp").read_text()
    assert stamp != (tiny_model_dir / "tiny-model.stamp").read_text()


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_tiny_chat_does_not_end_its_turn_which_is_why_tiny_agent_exists(
    tiny_model_dir: Path, temperature: float
) -> None:
    response = _chat(tiny_model_dir, temperature=temperature, seed=1, max_tokens=32)
    assert response["choices"][0]["finish_reason"] == "length"
