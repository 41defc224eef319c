"""OpenAI's wire shapes, named as OpenAI names them, for what the gateway reads or writes.

TypedDicts, not classes: they cost nothing at run time (a request stays the dict
orjson made), so fields the gateway does not interpret pass through untouched;
mypy checks every key the code touches. Measured against msgspec Structs in
bench/wire.py: decoding into Structs is faster, but a Struct drops unknown
fields, and re-encoding them would cost more than it saves.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class ContentPart(TypedDict, total=False):
    type: str
    text: str
    image_url: dict[str, Any]


class FunctionCall(TypedDict, total=False):
    name: str
    arguments: str


class ToolCall(TypedDict, total=False):
    id: str
    type: Literal["function"]
    function: FunctionCall


class ToolCallDelta(TypedDict, total=False):
    index: int
    id: str
    type: Literal["function"]
    function: FunctionCall


class ChatMessage(TypedDict, total=False):
    role: Role
    content: str | list[ContentPart] | None
    name: str
    tool_calls: list[ToolCall]
    tool_call_id: str
    refusal: str | None


class StreamOptions(TypedDict, total=False):
    include_usage: bool


class ChatCompletionRequest(TypedDict, total=False):
    """`POST /v1/chat/completions`. Only `model` and `messages` are required."""

    model: str
    messages: list[ChatMessage]
    stream: bool | None
    stream_options: StreamOptions | None
    max_tokens: int | None
    max_completion_tokens: int | None
    n: int | None
    temperature: float | None
    top_p: float | None
    stop: str | list[str] | None
    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any]
    response_format: dict[str, Any]
    seed: int | None
    user: str
    store: bool | None
    metadata: dict[str, str] | None


class PromptTokensDetails(TypedDict, total=False):
    cached_tokens: int
    audio_tokens: int


class CompletionTokensDetails(TypedDict, total=False):
    reasoning_tokens: int
    audio_tokens: int
    accepted_prediction_tokens: int
    rejected_prediction_tokens: int


class CompletionUsage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: NotRequired[PromptTokensDetails | None]
    completion_tokens_details: NotRequired[CompletionTokensDetails | None]


class Choice(TypedDict):
    index: int
    message: ChatMessage
    finish_reason: str | None
    logprobs: NotRequired[dict[str, Any] | None]


class ChatCompletion(TypedDict):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: NotRequired[CompletionUsage | None]
    system_fingerprint: NotRequired[str | None]
    service_tier: NotRequired[str | None]


class ChoiceDelta(TypedDict, total=False):
    role: Role
    content: str | None
    refusal: str | None
    tool_calls: list[ToolCallDelta]
    function_call: FunctionCall


class ChunkChoice(TypedDict):
    index: int
    delta: ChoiceDelta
    finish_reason: str | None
    logprobs: NotRequired[dict[str, Any] | None]


class ChatCompletionChunk(TypedDict):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: NotRequired[CompletionUsage | None]
    system_fingerprint: NotRequired[str | None]
    service_tier: NotRequired[str | None]


class EmbeddingRequest(TypedDict, total=False):
    """`POST /v1/embeddings`."""

    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"]
    dimensions: int
    user: str


class Embedding(TypedDict):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class EmbeddingUsage(TypedDict):
    prompt_tokens: int
    total_tokens: int


class CreateEmbeddingResponse(TypedDict):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ErrorObject(TypedDict):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(TypedDict):
    error: ErrorObject


class Model(TypedDict):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
