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
from services.router.providers import params
from services.router.providers.base import Completion, HttpRequest, HttpResponse, Timeouts, Usage
from services.router.providers.openai import map_error
from services.router.providers.sse import EventSplitter, data_of

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


def usage_of(raw: Any) -> Usage:
    raw = raw if isinstance(raw, dict) else {}
    thoughts = params.count(raw.get("thoughtsTokenCount"))
    return Usage(
        prompt_tokens=params.count(raw.get("promptTokenCount")),
        completion_tokens=params.count(raw.get("candidatesTokenCount")) + thoughts,
        cached_tokens=params.count(raw.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts,
    )


def _parts(dep: Deployment, content: Any, param: str) -> list[dict[str, Any]]:
    out = []
    for j, part in enumerate(params.parts_of(dep, content, param)):
        if part["type"] == "text":
            if part["text"]:
                out.append({"text": part["text"]})
            continue
        media, data, url = params.image_of(dep, part, f"{param}[{j}]")
        out.append(
            {"inlineData": {"mimeType": media, "data": data}}
            if data
            else {"fileData": {"mimeType": media, "fileUri": url}}
        )
    return out


def _contents(dep: Deployment, messages: list[Any]) -> tuple[list[str], list[dict[str, Any]]]:
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id → function name

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    for i, message in enumerate(messages):
        role, param = message["role"], f"messages[{i}]"
        if role in ("system", "developer"):
            system.append(params.text_of(message.get("content")))
        elif role == "user":
            add("user", _parts(dep, message.get("content"), f"{param}.content"))
        elif role == "assistant":
            parts = _parts(dep, message.get("content"), f"{param}.content")
            for k, call in enumerate(message.get("tool_calls") or ()):
                name = (call.get("function") or {}).get("name", "")
                names[call.get("id", "")] = name
                args = params.arguments_of(call, f"{param}.tool_calls[{k}]")
                parts.append({"functionCall": {"name": name, "args": args}})
            add("model", parts)
        elif role == "tool":
            call_id = message.get("tool_call_id", "")
            if call_id not in names:
                raise InvalidRequest(
                    f"'{param}.tool_call_id' answers no earlier tool call.", param=f"{param}.tool_call_id"
                )
            text = params.text_of(message.get("content"))
            try:
                result = orjson.loads(text)
            except orjson.JSONDecodeError:
                result = None
            response = result if isinstance(result, dict) else {"content": text}
            add("user", [{"functionResponse": {"name": names[call_id], "response": response}}])
        else:
            raise params.unsupported(dep, f"{param}.role", f"role {role!r}")
    return system, contents


def request_body(dep: Deployment, body: ChatCompletionRequest) -> dict[str, Any]:
    raw: dict[str, Any] = dict(body)
    params.refuse_unknown(dep, raw, SUPPORTED)
    system, contents = _contents(dep, raw["messages"])
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    config: dict[str, Any] = {}
    limit = params.max_tokens(raw)
    if limit is not None:
        config["maxOutputTokens"] = limit
    for ours, theirs in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("n", "candidateCount"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        if raw.get(ours) is not None:
            config[theirs] = raw[ours]
    stop = params.stops(raw)
    if stop:
        config["stopSequences"] = stop
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
    return {
        "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {
            "name": call.get("name", ""),
            "arguments": orjson.dumps(call.get("args") or {}).decode(),
        },
    }


def _finish(reason: Any, calls: bool) -> str:
    if calls:
        return "tool_calls"
    return FINISH.get(str(reason), "content_filter")


class GeminiStreamDecoder:
    """`alt=sse` events, each a partial `GenerateContentResponse`; the answer is complete
    once a candidate carries its `finishReason` (Gemini sends no end marker)."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.splitter = EventSplitter()
        self.usage: Usage | None = None
        self.error: GatewayError | None = None
        self.done = False
        self.chunks = params.ChunkMaker(f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), dep.model)
        self.started = False
        self.calls = False
        self.finish_reason: str | None = None

    def _event(self, event: bytes, out: list[ChatCompletionChunk]) -> None:
        data = data_of(event)
        if data is None:
            return
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.error = UpstreamError(f"{self.dep.name} sent a stream event that is not JSON")
            self.error.retryable = True
            return
        if not isinstance(obj, dict):
            return
        if "error" in obj:
            error = obj["error"] if isinstance(obj["error"], dict) else {}
            raw_message = error.get("message") if isinstance(error, dict) else None
            message = raw_message if isinstance(raw_message, str) else "no message"
            self.error = UpstreamError(
                f"upstream error during the stream from {self.dep.name}: {message[:500]}"
            )
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
        if self.finish_reason is not None and not self.done:
            self.done = True
            out.append(self.chunks.delta({}, self.finish_reason))
            if self.usage is not None:
                out.append(self.chunks.usage(self.usage))

    def feed(self, data: bytes) -> list[ChatCompletionChunk]:
        out: list[ChatCompletionChunk] = []
        for event in self.splitter.feed(data):
            self._event(event, out)
        return out

    def finish(self) -> list[ChatCompletionChunk]:
        out: list[ChatCompletionChunk] = []
        tail = self.splitter.rest().strip()
        if tail:
            self._event(tail, out)
        if self.error is None:
            self._end(out)
        return out


class GeminiAdapter:
    stream_media_type = "text/event-stream"

    def _request(self, dep: Deployment, action: str, payload: dict[str, Any]) -> HttpRequest:
        config = dep.config
        assert isinstance(config, GeminiDeployment)
        return HttpRequest(
            url=f"{config.base_url}/{config.api_version}/models/{quote(dep.model, safe='')}:{action}",
            headers={"content-type": "application/json", "x-goog-api-key": dep.secrets["api_key"]},
            body=orjson.dumps(payload),
            timeouts=Timeouts.of(dep),
        )

    def chat_request(self, dep: Deployment, body: ChatCompletionRequest, *, stream: bool) -> HttpRequest:
        action = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return self._request(dep, action, request_body(dep, body))

    def chat_response(self, dep: Deployment, response: HttpResponse) -> Completion:
        data = _json(dep, response)
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
                "content": "".join(text) if text or not calls else None,
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
        return Completion(orjson.dumps(out), usage, out)

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
        data = _json(dep, response)
        vectors = [e.get("values") for e in data.get("embeddings") or () if isinstance(e, dict)]
        if not vectors or not all(isinstance(v, list) for v in vectors):
            raise UpstreamError(f"{dep.name} answered without embeddings")
        return params.embeddings_completion(dep.model, cast(list[list[float]], vectors), None)

    def error(self, dep: Deployment, response: HttpResponse) -> GatewayError:
        return map_error(dep, response)


def _json(dep: Deployment, response: HttpResponse) -> dict[str, Any]:
    try:
        data = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"{dep.name} answered with a body that is not JSON") from None
    if not isinstance(data, dict):
        raise UpstreamError(f"{dep.name} answered with JSON that is not an object")
    return data


def _texts(dep: Deployment, value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if all(isinstance(v, str) for v in value):
        return list(value)
    raise params.unsupported(dep, "input", "token arrays; send text")
