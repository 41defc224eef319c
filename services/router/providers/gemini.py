"""Google Gemini (the Generative Language API): `models/{model}:generateContent`,
`:streamGenerateContent?alt=sse` and `:batchEmbedContents`, key in `x-goog-api-key`.

System messages become `systemInstruction`; assistant turns are `model` turns; tool
calls are `functionCall` parts and tool results `functionResponse` parts (which need
the function's name: found from the call they answer). JSON mode is
`responseMimeType` (with `responseJsonSchema` for a schema). Usage: Gemini's
`candidatesTokenCount` excludes thinking, OpenAI's `completion_tokens` includes it,
with `reasoning_tokens` the thoughts; `cachedContentTokenCount` is `cached_tokens`.
Gemini reports no token count for embeddings: the gateway estimates it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, cast
from urllib.parse import quote

import orjson

from services.kernel.config import Deployment, GeminiDeployment
from services.kernel.errors import GatewayError, InvalidRequest, UpstreamError
from services.kernel.wire import ChatCompletionChunk, ChatCompletionRequest, EmbeddingRequest
from services.router.providers import params, translation
from services.router.providers.base import Completion, HttpRequest, HttpResponse, Usage

SUPPORTED = frozenset(
    {
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "n",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "response_format",
        "tools",
        "tool_choice",
    }
)
FINISH = {"STOP": "stop", "MAX_TOKENS": "length"}  # everything else Gemini stops for is a filter
_RENAMED = (
    ("temperature", "temperature"),
    ("top_p", "topP"),
    ("top_k", "topK"),
    ("n", "candidateCount"),
    ("seed", "seed"),
    ("presence_penalty", "presencePenalty"),
    ("frequency_penalty", "frequencyPenalty"),
)


def usage_of(raw: Any) -> Usage:
    raw = translation.as_dict(raw)
    thoughts = params.count(raw.get("thoughtsTokenCount"))
    return Usage(
        prompt_tokens=params.count(raw.get("promptTokenCount")),
        completion_tokens=params.count(raw.get("candidatesTokenCount")) + thoughts,
        cached_tokens=params.count(raw.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts,
    )


def _image(media: str, data: str | None, url: str, param: str) -> dict[str, Any]:
    if data:
        return {"inlineData": {"mimeType": media, "data": data}}
    return {"fileData": {"mimeType": media, "fileUri": url}}


def _parts(dep: Deployment, content: Any, param: str) -> list[dict[str, Any]]:
    return translation.content_blocks(dep, content, param, lambda text: {"text": text}, _image)


def _contents(dep: Deployment, messages: list[Any]) -> tuple[list[str], list[dict[str, Any]]]:
    names: dict[str, str] = {}  # tool call id → function name

    def call(call: dict[str, Any], param: str) -> dict[str, Any]:
        name = (call.get("function") or {}).get("name", "")
        names[call.get("id", "")] = name
        args = params.arguments_of(call, param)
        return {"functionCall": {"name": name, "args": args}}

    def result(message: dict[str, Any], param: str) -> dict[str, Any]:
        call_id = message.get("tool_call_id", "")
        if call_id not in names:
            raise InvalidRequest(
                f"'{param}.tool_call_id' answers no earlier tool call.", param=f"{param}.tool_call_id"
            )
        text = params.text_of(message.get("content"))
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            value = None
        response = value if isinstance(value, dict) else {"content": text}
        return {"functionResponse": {"name": names[call_id], "response": response}}

    return translation.turns_of(
        dep,
        messages,
        content=lambda content, param: _parts(dep, content, param),
        tool_use=call,
        tool_result=result,
        assistant="model",
        key="parts",
    )


def request_body(dep: Deployment, body: ChatCompletionRequest) -> dict[str, Any]:
    raw: dict[str, Any] = dict(body)
    params.refuse_unknown(dep, raw, SUPPORTED)
    system, contents = _contents(dep, raw["messages"])
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    config = params.sampling(raw, "maxOutputTokens", _RENAMED, "stopSequences")
    mode = params.json_mode(dep, raw)
    if mode is not None:
        config["responseMimeType"] = "application/json"
        if mode[0] == "json_schema":
            config["responseJsonSchema"] = mode[1]
    if config:
        out["generationConfig"] = config
    functions = params.functions_of(raw)
    if functions:
        out["tools"] = [
            {
                "functionDeclarations": [
                    {k: f[k] for k in ("name", "description", "parameters") if k in f} for f in functions
                ]
            }
        ]
    choice = params.tool_choice_of(raw)
    if choice is not None:
        mode_, name = choice
        calling: dict[str, Any] = {"mode": {"auto": "AUTO", "none": "NONE"}.get(mode_, "ANY")}
        if name is not None:
            calling["allowedFunctionNames"] = [name]
        out["toolConfig"] = {"functionCallingConfig": calling}
    return out


def _call(part: dict[str, Any]) -> dict[str, Any]:
    call = part["functionCall"]
    call_id = call.get("id") or f"call_{uuid.uuid4().hex[:24]}"
    return translation.object_tool_call(call_id, call.get("name", ""), call.get("args"))


def _finish(reason: Any, calls: bool) -> str:
    if calls:
        return "tool_calls"
    return FINISH.get(str(reason), "content_filter")


class GeminiStreamDecoder(translation.SSEDecoder):
    """`alt=sse` events, each a partial `GenerateContentResponse`; the answer is complete
    once a candidate carries its `finishReason` (Gemini sends no end marker)."""

    def __init__(self, dep: Deployment) -> None:
        super().__init__(dep)
        self.chunks = params.ChunkMaker(f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), dep.model)
        self.started = False
        self.calls = False
        self.finish_reason: str | None = None

    def _object(self, obj: Any, out: list[ChatCompletionChunk]) -> None:
        if not isinstance(obj, dict):
            return
        if "error" in obj:
            error = translation.as_dict(obj["error"])
            self.error = translation.stream_error(self.dep, error)
            self.error.retryable = error.get("code") in (429, 500, 503, 504)
            return
        if not self.started:
            self.started = True
            if isinstance(obj.get("modelVersion"), str):
                self.chunks.base["model"] = obj["modelVersion"]
            out.append(self.chunks.delta({"role": "assistant", "content": ""}))
        if "usageMetadata" in obj:
            self.usage = usage_of(obj["usageMetadata"])
        for candidate in obj.get("candidates") or ():
            for part in (candidate.get("content") or {}).get("parts") or ():
                if part.get("thought"):
                    continue
                if isinstance(part.get("text"), str) and part["text"]:
                    out.append(self.chunks.delta({"content": part["text"]}))
                elif isinstance(part.get("functionCall"), dict):
                    call = _call(part)
                    self.calls = True
                    out.append(self.chunks.tool_start(call["id"], call["function"]["name"]))
                    out.append(self.chunks.tool_arguments(call["function"]["arguments"]))
            if candidate.get("finishReason"):
                self.finish_reason = _finish(candidate["finishReason"], self.calls)

    def _end(self, out: list[ChatCompletionChunk]) -> None:
        if self.error is None and self.finish_reason is not None and not self.done:
            self.done = True
            out.append(self.chunks.delta({}, self.finish_reason))
            if self.usage is not None:
                out.append(self.chunks.usage(self.usage))


class GeminiAdapter:
    stream_media_type = "text/event-stream"

    def _request(self, dep: Deployment, action: str, payload: dict[str, Any]) -> HttpRequest:
        config = dep.config
        assert isinstance(config, GeminiDeployment)
        url = f"{config.base_url}/{config.api_version}/models/{quote(dep.model, safe='')}:{action}"
        return translation.json_request(dep, url, payload, {"x-goog-api-key": dep.secrets["api_key"]})

    def chat_request(self, dep: Deployment, body: ChatCompletionRequest, *, stream: bool) -> HttpRequest:
        action = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return self._request(dep, action, request_body(dep, body))

    def chat_response(self, dep: Deployment, response: HttpResponse) -> Completion:
        data = translation.json_object(dep, response)
        usage = usage_of(data.get("usageMetadata"))
        choices = []
        for index, candidate in enumerate(data.get("candidates") or [{}]):
            text, calls = [], []
            for part in (candidate.get("content") or {}).get("parts") or ():
                if part.get("thought"):
                    continue
                if isinstance(part.get("text"), str):
                    text.append(part["text"])
                elif isinstance(part.get("functionCall"), dict):
                    calls.append(_call(part))
            message: dict[str, Any] = {
                "role": "assistant",
                "content": translation.content_of(text, calls),
                "refusal": None,
            }
            if calls:
                message["tool_calls"] = calls
            finish = _finish(candidate.get("finishReason", "STOP"), bool(calls))
            choices.append({"index": index, "message": message, "logprobs": None, "finish_reason": finish})
        out = params.completion_body(
            str(data.get("responseId") or f"chatcmpl-{uuid.uuid4().hex[:24]}"),
            int(time.time()),
            str(data.get("modelVersion") or dep.model),
            None,
            [],
            "stop",
            usage,
        )
        out["choices"] = choices
        return translation.completion(out, usage)

    def chat_stream(self, dep: Deployment) -> GeminiStreamDecoder:
        return GeminiStreamDecoder(dep)

    def embeddings_request(self, dep: Deployment, body: EmbeddingRequest) -> HttpRequest:
        raw: dict[str, Any] = dict(body)
        params.refuse_unknown(dep, raw, {"input", "encoding_format", "dimensions"})
        texts = _texts(dep, raw["input"])
        name = f"models/{dep.model}"
        requests = []
        for text in texts:
            item: dict[str, Any] = {"model": name, "content": {"parts": [{"text": text}]}}
            if raw.get("dimensions") is not None:
                item["outputDimensionality"] = raw["dimensions"]
            requests.append(item)
        return self._request(dep, "batchEmbedContents", {"requests": requests})

    def embeddings_response(self, dep: Deployment, response: HttpResponse) -> Completion:
        data = translation.json_object(dep, response)
        vectors = [e.get("values") for e in data.get("embeddings") or () if isinstance(e, dict)]
        if not vectors or not all(isinstance(v, list) for v in vectors):
            raise UpstreamError(f"{dep.name} answered without embeddings")
        return params.embeddings_completion(dep.model, cast(list[list[float]], vectors), None)

    def error(self, dep: Deployment, response: HttpResponse) -> GatewayError:
        return translation.map_error(dep, response)


def _texts(dep: Deployment, value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if all(isinstance(v, str) for v in value):
        return list(value)
    raise params.unsupported(dep, "input", "token arrays; send text")
