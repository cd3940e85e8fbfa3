"""Ceilings on request fields: every field that multiplies engine work or memory has one.

Each is checked at the API and answers 400 naming the field (README, "Limits"). Where OpenAI
documents a limit, the number here is OpenAI's; the others are ours. The per-model ceiling on
``max_tokens`` lives in the registry (``chalicelib/ceilings.py``); the body size (413) in
``Settings.max_body_bytes``.
"""

from __future__ import annotations

# JSON nested deeper than this is refused before it is parsed: json.loads and pydantic recurse,
# and a body of 6 MB of "[" would otherwise end in RecursionError (a 500). No OpenAI field nests
# anywhere near this deep (a tool's JSON schema is the deepest, a dozen levels at most).
MAX_JSON_DEPTH = 64

# Engines and DynamoDB take 64-bit integers; beyond this a seed overflows (OpenAI: int64).
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# Token ids and token counts: int32 in every engine (torch, vLLM).
INT32_MAX = 2**31 - 1

# OpenAI: "Up to 4 sequences where the API will stop generating further tokens."
MAX_STOP_SEQUENCES = 4
# Ours: every generated token is matched against every stop string.
MAX_STOP_CHARS = 256

# Choices per prompt (OpenAI allows 128; each is a full generation, so ours is lower).
MAX_N = 16
# Completions: OpenAI bounds best_of to 20.
MAX_BEST_OF = 20
# Completions: prompts per request (a list of strings or of token lists); each is a batch row.
MAX_PROMPTS = 64
# Completions: rows the engine generates, prompts × max(n, best_of).
MAX_SEQUENCES = 128
# Completions: OpenAI's `logprobs` is at most 5; chat's `top_logprobs` at most 20.
MAX_COMPLETION_LOGPROBS = 5
MAX_TOP_LOGPROBS = 20

# Chat: messages per request (ours; OpenAI answers 400 past a similar bound).
MAX_MESSAGES = 2048
# Chat: OpenAI allows at most 128 tools.
MAX_TOOLS = 128

# OpenAI: logit_bias maps at most 300 token ids to a bias in [-100, 100].
MAX_LOGIT_BIAS = 300
LOGIT_BIAS_MIN = -100.0
LOGIT_BIAS_MAX = 100.0

# Embeddings: OpenAI's bound on inputs per request.
MAX_EMBEDDING_INPUTS = 2048
# Embeddings: output dimensions (the largest models have a few thousand).
MAX_DIMENSIONS = 65536

# Files: a file name is at most 255 bytes of UTF-8, the longest name ext4, XFS and APFS accept,
# so a name that fits can be saved under itself anywhere. Unbounded, a name is echoed in every
# file object and list page, and past DynamoDB's 400 KB item its record cannot be written.
MAX_FILENAME_BYTES = 255
