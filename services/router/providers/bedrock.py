"""AWS Bedrock's Converse API: `POST /model/{id}/converse` and `/converse-stream`,
signed with SigV4 by botocore's signer (never by hand).

Messages become Converse `content` blocks (`text`, `image` with base64 bytes,
`toolUse`, `toolResult`); system messages go to `system`; parameters to
`inferenceConfig`, `top_k` to `additionalModelRequestFields`. The stream is AWS's
binary event-stream framing (decoded by botocore's `EventStreamBuffer`, which checks
each frame's CRCs): messageStart, contentBlockStart / Delta / Stop, messageStop,
metadata (usage), or an exception frame.
"""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import quote

import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer, ParserError

from services.kernel.config import BedrockDeployment, Deployment
from services.kernel.errors import GatewayError, InvalidRequest, RateLimited, UpstreamError
from services.kernel.wire import ChatCompletionChunk, ChatCompletionRequest, EmbeddingRequest
from services.router.providers import params, translation
from services.router.providers.base import Completion, HttpRequest, HttpResponse, Timeouts, Usage

SUPPORTED = frozenset(
    {"max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "stop", "tools", "tool_choice"}
)
FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
_RENAMED = (("temperature", "temperature"), ("top_p", "topP"))
_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/gif": "gif", "image/webp": "webp"}
_RETRYABLE = {
    "throttlingException",
    "internalServerException",
    "serviceUnavailableException",
    "modelStreamErrorException",
}


def usage_of(raw: Any) -> Usage:
    return translation.cache_usage(
        raw,
        prompt="inputTokens",
        completion="outputTokens",
        read="cacheReadInputTokens",
        written="cacheWriteInputTokens",
    )


def _blocks(dep: Deployment, content: Any, param: str) -> list[dict[str, Any]]:
    def image(media: str, data: str | None, url: str, param: str) -> dict[str, Any]:
        if data is None or media not in _FORMATS:
            raise params.unsupported(
                dep, f"{param}.image_url", "Bedrock takes png, jpeg, gif or webp data URLs"
            )
        return {"image": {"format": _FORMATS[media], "source": {"bytes": data}}}

    return translation.content_blocks(dep, content, param, lambda text: {"text": text}, image)


def _tool_use(call: dict[str, Any], param: str) -> dict[str, Any]:
    use = {
        "toolUseId": call.get("id", ""),
        "name": (call.get("function") or {}).get("name", ""),
        "input": params.arguments_of(call, param),
    }
    return {"toolUse": use}


def _tool_result(message: dict[str, Any], param: str) -> dict[str, Any]:
    result = {
        "toolUseId": message.get("tool_call_id", ""),
        "content": [{"text": params.text_of(message.get("content"))}],
    }
    return {"toolResult": result}


def _messages(dep: Deployment, messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system, turns = translation.turns_of(
        dep,
        messages,
        content=lambda content, param: _blocks(dep, content, param),
        tool_use=_tool_use,
        tool_result=_tool_result,
    )
    return [{"text": text} for text in system], turns


def request_body(dep: Deployment, body: ChatCompletionRequest) -> dict[str, Any]:
    raw: dict[str, Any] = dict(body)
    params.refuse_unknown(dep, raw, SUPPORTED)
    system, messages = _messages(dep, raw["messages"])
    out: dict[str, Any] = {"messages": messages}
    if system:
        out["system"] = system
    config = params.sampling(raw, "maxTokens", _RENAMED, "stopSequences")
    if config:
        out["inferenceConfig"] = config
    if raw.get("top_k") is not None:
        out["additionalModelRequestFields"] = {"top_k": raw["top_k"]}
    functions = params.functions_of(raw)
    choice = params.tool_choice_of(raw)
    if functions and (choice is None or choice[0] != "none"):
        tools = [
            {
                "toolSpec": {
                    "name": f["name"],
                    **({"description": f["description"]} if f.get("description") else {}),
                    "inputSchema": {"json": f.get("parameters") or {"type": "object", "properties": {}}},
                }
            }
            for f in functions
        ]
        tool_config: dict[str, Any] = {"tools": tools}
        if choice is not None:
            mode, name = choice
            tool_config["toolChoice"] = (
                {"tool": {"name": name}}
                if mode == "function"
                else {"any": {}}
                if mode == "required"
                else {"auto": {}}
            )
        out["toolConfig"] = tool_config
    return out


class BedrockStreamDecoder:
    """AWS event-stream frames as OpenAI chunks; complete after the `metadata` event."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.buffer = EventStreamBuffer()
        self.usage: Usage | None = None
        self.error: GatewayError | None = None
        self.done = False
        self.stopped = False
        self.chunks = params.ChunkMaker(f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), dep.model)

    def _frame(self, headers: dict[str, Any], payload: bytes, out: list[ChatCompletionChunk]) -> None:
        kind = headers.get(":message-type")
        if kind == "exception" or kind == "error":
            name = str(headers.get(":exception-type") or headers.get(":error-code") or "error")
            try:
                message = orjson.loads(payload).get("message", "")
            except (orjson.JSONDecodeError, AttributeError):
                message = ""
            detail = f"upstream error during the stream from {self.dep.name}: {name}: {str(message)[:500]}"
            self.error = RateLimited(detail) if name == "throttlingException" else UpstreamError(detail)
            self.error.retryable = name in _RETRYABLE
            return
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.error = UpstreamError(f"{self.dep.name} sent a stream event that is not JSON")
            self.error.retryable = True
            return
        event = headers.get(":event-type")
        if event == "messageStart":
            out.append(self.chunks.delta({"role": "assistant", "content": ""}))
        elif event == "contentBlockStart":
            use = (body.get("start") or {}).get("toolUse")
            if isinstance(use, dict):
                out.append(self.chunks.tool_start(str(use.get("toolUseId", "")), str(use.get("name", ""))))
        elif event == "contentBlockDelta":
            delta = body.get("delta") or {}
            if isinstance(delta.get("text"), str) and delta["text"]:
                out.append(self.chunks.delta({"content": delta["text"]}))
            elif isinstance(delta.get("toolUse"), dict) and delta["toolUse"].get("input"):
                out.append(self.chunks.tool_arguments(str(delta["toolUse"]["input"])))
        elif event == "messageStop":
            self.stopped = True
            out.append(self.chunks.delta({}, FINISH.get(str(body.get("stopReason")), "stop")))
        elif event == "metadata":
            self.usage = usage_of(body.get("usage"))
            out.append(self.chunks.usage(self.usage))
            self.done = self.stopped

    def feed(self, data: bytes) -> list[ChatCompletionChunk]:
        out: list[ChatCompletionChunk] = []
        self.buffer.add_data(data)
        try:
            for message in self.buffer:
                self._frame(message.headers, message.payload, out)
                if self.error is not None:
                    break
        except ParserError as exc:
            self.error = UpstreamError(
                f"{self.dep.name} sent a malformed event-stream frame ({type(exc).__name__})"
            )
            self.error.retryable = True
        return out

    def finish(self) -> list[ChatCompletionChunk]:
        return []


class BedrockAdapter:
    stream_media_type = "application/vnd.amazon.eventstream"

    def _request(self, dep: Deployment, action: str, payload: dict[str, Any]) -> HttpRequest:
        config = dep.config
        assert isinstance(config, BedrockDeployment)
        url = f"{config.endpoint}/model/{quote(dep.model, safe='')}/{action}"
        body = orjson.dumps(payload)
        credentials = Credentials(
            dep.secrets["access_key_id"], dep.secrets["secret_access_key"], dep.secrets.get("session_token")
        )
        signed = AWSRequest(method="POST", url=url, data=body, headers={"content-type": "application/json"})
        SigV4Auth(credentials, "bedrock", config.aws_region).add_auth(signed)
        return HttpRequest(
            url=url, headers=dict(signed.headers.items()), body=body, timeouts=Timeouts.of(dep)
        )

    def chat_request(self, dep: Deployment, body: ChatCompletionRequest, *, stream: bool) -> HttpRequest:
        return self._request(dep, "converse-stream" if stream else "converse", request_body(dep, body))

    def chat_response(self, dep: Deployment, response: HttpResponse) -> Completion:
        data = translation.json_body(dep, response)
        if not isinstance(data, dict) or not isinstance((data.get("output") or {}).get("message"), dict):
            raise UpstreamError(f"{dep.name} answered without an output message")
        text, calls = [], []
        for block in data["output"]["message"].get("content") or ():
            if isinstance(block.get("text"), str):
                text.append(block["text"])
            elif isinstance(block.get("toolUse"), dict):
                use = block["toolUse"]
                calls.append(
                    translation.object_tool_call(
                        use.get("toolUseId", ""), use.get("name", ""), use.get("input")
                    )
                )
        usage = usage_of(data.get("usage"))
        out = params.completion_body(
            f"chatcmpl-{uuid.uuid4().hex[:24]}",
            int(time.time()),
            dep.model,
            translation.content_of(text, calls),
            calls,
            FINISH.get(str(data.get("stopReason")), "stop"),
            usage,
        )
        return translation.completion(out, usage)

    def chat_stream(self, dep: Deployment) -> BedrockStreamDecoder:
        return BedrockStreamDecoder(dep)

    def embeddings_request(self, dep: Deployment, body: EmbeddingRequest) -> HttpRequest:
        raise InvalidRequest(
            f"'{dep.public_model}' is served by Bedrock's Converse API, which has no embeddings.",
            param="model",
        )

    def embeddings_response(self, dep: Deployment, response: HttpResponse) -> Completion:
        raise AssertionError("no embeddings request is ever made")

    def error(self, dep: Deployment, response: HttpResponse) -> GatewayError:
        return translation.map_error(dep, response)
