"""The mocks are faithful: each provider's own official client parses their answers,
streams and errors without complaint (anthropic, google-genai, cohere, boto3's
bedrock-runtime, openai's AzureOpenAI)."""

from __future__ import annotations

import anthropic
import boto3
import cohere
import openai
import pytest
from botocore.config import Config
from botocore.exceptions import EventStreamError
from google import genai
from google.genai import types as gtypes

from tests.providers.mocks import AWS_KEY_ID, AWS_SECRET, CACHED, KEY, THOUGHTS
from tests.upstream import reply_words

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def test_anthropic_client(mocks):
    client = anthropic.Anthropic(api_key=KEY, base_url=mocks.base_url, max_retries=0)
    messages = [{"role": "user", "content": "hello"}]
    message = client.messages.create(model="claude-mock", max_tokens=64, messages=messages)
    assert message.content[0].text == "".join(reply_words(messages))
    assert message.usage.cache_read_input_tokens == CACHED
    with client.messages.stream(model="claude-mock", max_tokens=64, messages=messages) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == message.content[0].text
    assert final.usage.output_tokens == message.usage.output_tokens
    tool = {
        "name": WEATHER["name"],
        "description": WEATHER["description"],
        "input_schema": WEATHER["parameters"],
    }
    ask = [{"role": "user", "content": "weather in Paris?"}]
    with client.messages.stream(model="claude-mock", max_tokens=64, messages=ask, tools=[tool]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[-1].input == {"city": "Paris"}
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model="error-429", max_tokens=64, messages=messages)
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long"):
        client.messages.create(model="error-400", max_tokens=64, messages=messages)
    bad = anthropic.Anthropic(api_key="wrong", base_url=mocks.base_url, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="claude-mock", max_tokens=64, messages=messages)


def test_gemini_client(mocks):
    client = genai.Client(api_key=KEY, http_options=gtypes.HttpOptions(base_url=mocks.base_url))
    response = client.models.generate_content(model="gemini-mock", contents="hello")
    assert response.text
    assert response.usage_metadata.cached_content_token_count == CACHED
    assert response.usage_metadata.thoughts_token_count == THOUGHTS
    pieces = list(client.models.generate_content_stream(model="gemini-mock", contents="hello"))
    assert "".join(p.text or "" for p in pieces) == response.text
    assert pieces[-1].candidates[0].finish_reason == gtypes.FinishReason.STOP
    tools = [gtypes.Tool(function_declarations=[gtypes.FunctionDeclaration(**WEATHER)])]
    config = gtypes.GenerateContentConfig(
        tools=tools, automatic_function_calling=gtypes.AutomaticFunctionCallingConfig(disable=True)
    )
    called = client.models.generate_content(model="gemini-mock", contents="weather in Paris?", config=config)
    assert called.function_calls[0].args == {"city": "Paris"}
    embedded = client.models.embed_content(model="embed-mock", contents=["a", "b"])
    assert len(embedded.embeddings) == 2
    with pytest.raises(genai.errors.ClientError) as err:
        client.models.generate_content(model="error-429", contents="hello")
    assert err.value.code == 429


def test_cohere_client(mocks):
    client = cohere.ClientV2(api_key=KEY, base_url=mocks.base_url)
    messages = [{"role": "user", "content": "hello"}]
    response = client.chat(model="command-mock", messages=messages)
    text = response.message.content[0].text
    assert text
    assert response.usage.tokens.output_tokens == len(reply_words(messages))
    events = list(client.chat_stream(model="command-mock", messages=messages))
    kinds = [e.type for e in events]
    assert kinds[0] == "message-start"
    assert kinds[-1] == "message-end"
    streamed = "".join(e.delta.message.content.text for e in events if e.type == "content-delta")
    assert streamed == text
    tools = [{"type": "function", "function": WEATHER}]
    ask = [{"role": "user", "content": "weather in Paris?"}]
    called = client.chat(model="command-mock", messages=ask, tools=tools)
    assert called.finish_reason == "TOOL_CALL"
    assert called.message.tool_calls[0].function.arguments == '{"city": "Paris"}'
    streamed_calls = [e for e in client.chat_stream(model="command-mock", messages=ask, tools=tools)]
    assert [e.type for e in streamed_calls].count("tool-call-delta") == 2
    embedded = client.embed(
        model="embed-mock", texts=["a b", "c"], input_type="search_document", embedding_types=["float"]
    )
    assert len(embedded.embeddings.float_) == 2
    with pytest.raises(cohere.errors.TooManyRequestsError):
        client.chat(model="error-429", messages=messages)


# botocore leaves the connection of an event stream that ended in an exception to the
# garbage collector, whose ResourceWarning pytest would turn into an error.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_bedrock_runtime_client(mocks):
    client = boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=mocks.base_url,
        aws_access_key_id=AWS_KEY_ID,
        aws_secret_access_key=AWS_SECRET,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )
    messages = [{"role": "user", "content": [{"text": "hello"}]}]
    response = client.converse(modelId="anthropic.claude-mock", messages=messages)
    text = response["output"]["message"]["content"][0]["text"]
    assert text
    assert response["usage"]["cacheReadInputTokens"] == CACHED
    events = list(client.converse_stream(modelId="anthropic.claude-mock", messages=messages)["stream"])
    assert "messageStart" in events[0]
    assert "metadata" in events[-1]
    streamed = "".join(
        e["contentBlockDelta"]["delta"].get("text", "") for e in events if "contentBlockDelta" in e
    )
    assert streamed == text
    tool = {"toolSpec": {"name": WEATHER["name"], "inputSchema": {"json": WEATHER["parameters"]}}}
    ask = [{"role": "user", "content": [{"text": "weather in Paris?"}]}]
    called = client.converse(modelId="m", messages=ask, toolConfig={"tools": [tool]})
    assert called["stopReason"] == "tool_use"
    assert called["output"]["message"]["content"][-1]["toolUse"]["input"] == {"city": "Paris"}
    failing = client.converse_stream(modelId="stream-error", messages=messages)["stream"]
    with pytest.raises(EventStreamError, match="modelStreamErrorException"):
        list(failing)
    failing.close()
    with pytest.raises(client.exceptions.ThrottlingException):
        client.converse(modelId="error-429", messages=messages)
    client.close()


def test_azure_openai_client(mocks):
    client = openai.AzureOpenAI(
        api_key=KEY, azure_endpoint=mocks.base_url, api_version="2024-10-21", max_retries=0
    )
    messages = [{"role": "user", "content": "hello"}]
    response = client.chat.completions.create(model="gpt-4o-mini-deploy", messages=messages)
    assert response.choices[0].message.content == "".join(reply_words(messages))
    stream = client.chat.completions.create(model="gpt-4o-mini-deploy", messages=messages, stream=True)
    assert (
        "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        == response.choices[0].message.content
    )
    embedded = client.embeddings.create(model="embed-deploy", input=["a", "b"])
    assert len(embedded.data) == 2
    bad = openai.AzureOpenAI(
        api_key="wrong", azure_endpoint=mocks.base_url, api_version="2024-10-21", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="gpt-4o-mini-deploy", messages=messages)
