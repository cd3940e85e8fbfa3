"""``usage.prompt_tokens_details.cached_tokens`` travels from the engine to the client: through
the streamed answer's assembly (what the record stores) and the WebSocket done frame."""

import json

from chalicelib.streaming import frames
from hpc_functions.streaming import Assembler

USAGE = {
    "prompt_tokens": 40,
    "completion_tokens": 2,
    "total_tokens": 42,
    "prompt_tokens_details": {"cached_tokens": 32},
}


def test_the_assembled_stream_keeps_the_engines_cached_tokens() -> None:
    assembler = Assembler()
    assembler.add(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}],
        }
    )
    assembler.add({"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": USAGE})
    usage = assembler.response("chat_completions")["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 32}


def test_the_done_frame_carries_cached_tokens_when_the_engine_counted_them() -> None:
    frame = json.loads(frames.done("r", "req_1", USAGE))
    assert frame["usage"]["prompt_tokens_details"] == {"cached_tokens": 32}
    plain = json.loads(frames.done("r", "req_1", {"prompt_tokens": 1}))
    assert "prompt_tokens_details" not in plain["usage"]
