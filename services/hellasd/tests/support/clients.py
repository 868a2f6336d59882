"""The official Python clients (openai, ollama, anthropic) driving a box, for `tests/clients.rs`.

    python3 clients.py STEP BASE_URL API_KEY ARGUMENT...

Each step does what a user's script would do with the client and prints its outcome as one JSON
object; a client that raises where the step expects an answer fails the step (exit status 1).
"""

import base64
import json
import struct
import sys
import zlib

import anthropic
import ollama
import openai


def openai_client(base, key):
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=600)


def anthropic_client(base, key):
    return anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, timeout=600)


def openai_responses(base, key, model, prompt):
    """The Responses API, whole and streamed, greedy."""
    client = openai_client(base, key)
    whole = client.responses.create(model=model, input=prompt, max_output_tokens=8, temperature=0)
    streamed, usage = "", None
    for event in client.responses.create(model=model, input=prompt, max_output_tokens=8, temperature=0, stream=True):
        if event.type == "response.output_text.delta":
            streamed += event.delta
        elif event.type == "response.completed":
            usage = event.response.usage.model_dump()
    return {"text": whole.output_text, "usage": whole.usage.model_dump(), "streamed": streamed, "streamed_usage": usage}


def anthropic_messages(base, key, model, prompt):
    """Messages, whole and streamed, greedy, and the prompt's token count."""
    client = anthropic_client(base, key)
    messages = [{"role": "user", "content": prompt}]
    # This SDK no longer takes a temperature; llama-server does, so it goes in the body as is.
    greedy = {"temperature": 0}
    whole = client.messages.create(model=model, max_tokens=8, messages=messages, extra_body=greedy)
    with client.messages.stream(model=model, max_tokens=8, messages=messages, extra_body=greedy) as stream:
        streamed = stream.get_final_text()
        final = stream.get_final_message()
    counted = client.messages.count_tokens(model=model, messages=messages)
    return {
        "text": "".join(b.text for b in whole.content if b.type == "text"),
        "stop_reason": whole.stop_reason,
        "usage": whole.usage.model_dump(),
        "streamed": streamed,
        "streamed_usage": final.usage.model_dump(),
        "counted": counted.input_tokens,
    }


def anthropic_refused(base, key, model):
    """What the client raises for this key and model."""
    try:
        anthropic_client(base, key).messages.create(model=model, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
    except anthropic.APIStatusError as e:
        return {"error": type(e).__name__, "status": e.status_code, "type": e.body["error"]["type"], "message": e.body["error"]["message"]}
    return {"error": None}


def ollama_client(base, key):
    return ollama.Client(host=base, headers={"Authorization": f"Bearer {key}"}, timeout=600)


def png(width, height, pixel):
    """A PNG (8-bit RGB) written by hand, as the clients send images: no imaging library."""
    rows = b"".join(b"\x00" + b"".join(bytes(pixel(x, y)) for x in range(width)) for y in range(height))
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def openai_embed(base, key, model, sentences):
    answer = openai_client(base, key).embeddings.create(model=model, input=json.loads(sentences))
    return {"model": answer.model, "embeddings": [d.embedding for d in sorted(answer.data, key=lambda d: d.index)]}


def openai_embed_refused(base, key, model):
    try:
        openai_client(base, key).embeddings.create(model=model, input=["hello"])
    except openai.BadRequestError as e:
        return {"status": e.status_code, "message": e.message}
    raise SystemExit(f"{model} answered an embeddings request")


def ollama_embed(base, key, model, sentences):
    answer = ollama_client(base, key).embed(model=model, input=json.loads(sentences))
    return {"model": answer.model, "embeddings": [list(v) for v in answer.embeddings], "prompt_eval_count": answer.prompt_eval_count}


def ollama_embeddings(base, key, model, prompt):
    return {"embedding": list(ollama_client(base, key).embeddings(model=model, prompt=prompt).embedding)}


# A 32x32 picture, red on the left and blue on the right, and what is asked about it.
IMAGE = png(32, 32, lambda x, y: (220, 30, 30) if x < 16 else (30, 30, 220))
QUESTION = "What colours are in this picture?"


def openai_vision(base, key, model):
    """Asks about the picture greedily, the image ahead of the text."""
    url = "data:image/png;base64," + base64.b64encode(IMAGE).decode()
    answer = openai_client(base, key).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]}],
        temperature=0,
        seed=42,
        max_tokens=8,
    )
    return {"answer": answer.choices[0].message.content, "prompt_tokens": answer.usage.prompt_tokens}


def ollama_vision(base, key, model):
    """The same question the Ollama way: the image in the message's `images`."""
    answer = ollama_client(base, key).chat(
        model=model,
        messages=[{"role": "user", "content": QUESTION, "images": [IMAGE]}],
        options={"temperature": 0, "seed": 42, "num_predict": 8},
    )
    return {"answer": answer.message.content, "prompt_tokens": answer.prompt_eval_count}


def ollama_pull(base, key, model):
    client = ollama_client(base, key)
    events = [{"status": p.status, "digest": p.digest, "total": p.total, "completed": p.completed} for p in client.pull(model, stream=True)]
    return {"events": events, "models": [m.model for m in client.list().models]}


def ollama_show(base, key, model):
    return {"capabilities": list(ollama_client(base, key).show(model).capabilities or [])}


# A tool, a question that calls for it, and what it answers.
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}}, "required": ["city"]},
    },
}
WEATHER_ASKED = "Call get_weather for Paris."
WEATHER_ANSWER = "18 degrees and sunny"
# An earlier turn in which the tool was called and answered, then a new question: how a
# conversation with tools goes on, and what lets a client without tool_choice (Ollama's) get a call.
WEATHER_HISTORY = [
    {"role": "user", "content": "Get the weather in Paris."},
    {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": WEATHER_ANSWER, "tool_name": "get_weather"},
    {"role": "assistant", "content": "It is 18 degrees and sunny in Paris."},
    {"role": "user", "content": "Get the weather in London."},
]
# A structured answer: a JSON schema the output must follow.
PICK = {
    "type": "object",
    "properties": {"colour": {"type": "string"}, "count": {"type": "integer"}},
    "required": ["colour", "count"],
    "additionalProperties": False,
}
PICK_ASKED = "Name a colour and a number."
GREEDY = {"temperature": 0, "seed": 42}


def openai_tools(base, key, model):
    """A call forced by tool_choice "required", whole and streamed, then the tool's answer sent
    back with it and the model's answer in words."""
    client = openai_client(base, key)
    messages = [{"role": "user", "content": WEATHER_ASKED}]
    ask = dict(model=model, messages=messages, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False, max_tokens=64, **GREEDY)
    whole = client.chat.completions.create(**ask)
    choice = whole.choices[0]
    calls = [{"name": c.function.name, "arguments": c.function.arguments} for c in choice.message.tool_calls or []]
    # The stream's deltas put together as a client does: the name once, the arguments in pieces.
    streamed, finish_reason = {}, None
    for chunk in client.chat.completions.create(**ask, stream=True):
        for c in chunk.choices:
            for delta in c.delta.tool_calls or []:
                call = streamed.setdefault(delta.index, {"name": "", "arguments": ""})
                call["name"] = (delta.function and delta.function.name) or call["name"]
                call["arguments"] += (delta.function and delta.function.arguments) or ""
            finish_reason = c.finish_reason or finish_reason
    out = {
        "finish_reason": choice.finish_reason,
        "content": choice.message.content,
        "calls": calls,
        "streamed": {"finish_reason": finish_reason, "calls": [streamed[i] for i in sorted(streamed)]},
    }
    if not calls:
        return out
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": choice.message.tool_calls[0].id, "content": WEATHER_ANSWER},
    ]
    # A new connection, as anthropic_tools' follow-up has.
    answer = openai_client(base, key).chat.completions.create(model=model, messages=messages, tools=[WEATHER], max_tokens=32, **GREEDY).choices[0]
    out["answer"] = {"finish_reason": answer.finish_reason, "content": answer.message.content, "calls": len(answer.message.tool_calls or [])}
    return out


def openai_tools_history(base, key, model):
    """WEATHER_HISTORY as OpenAI's messages, tool_choice left to the model: the calls it makes."""
    messages = []
    for m in WEATHER_HISTORY:
        m = dict(m)
        if "tool_calls" in m:
            m["tool_calls"] = [{"id": "call_0", "type": "function", "function": {"name": c["function"]["name"], "arguments": json.dumps(c["function"]["arguments"])}} for c in m["tool_calls"]]
        if m["role"] == "tool":
            m = {"role": "tool", "tool_call_id": "call_0", "content": m["content"]}
        messages.append(m)
    answer = openai_client(base, key).chat.completions.create(model=model, messages=messages, tools=[WEATHER], max_tokens=64, **GREEDY).choices[0]
    return {"calls": [{"name": c.function.name, "arguments": json.loads(c.function.arguments)} for c in answer.message.tool_calls or []]}


def openai_json_schema(base, key, model):
    """An answer held to a JSON schema (response_format json_schema, strict), whole and streamed."""
    client = openai_client(base, key)
    schema = {"type": "json_schema", "json_schema": {"name": "pick", "strict": True, "schema": PICK}}
    ask = dict(model=model, messages=[{"role": "user", "content": PICK_ASKED}], response_format=schema, max_tokens=64, **GREEDY)
    whole = client.chat.completions.create(**ask)
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**ask, stream=True) if c.choices)
    return {"content": whole.choices[0].message.content, "finish_reason": whole.choices[0].finish_reason, "streamed": streamed}


def ollama_calls(message):
    return [{"name": c.function.name, "arguments": dict(c.function.arguments)} for c in message.tool_calls or []]


def ollama_tools(base, key, model):
    """Ollama's chat with tools: WEATHER_HISTORY's new question, whole and streamed; the tool's
    answer sent back; and a plain question with the tool offered."""
    client = ollama_client(base, key)
    options = {"temperature": 0, "seed": 42, "num_predict": 64}
    whole = client.chat(model=model, messages=WEATHER_HISTORY, tools=[WEATHER], options=options)
    streamed, content, done_reason = [], "", None
    for part in client.chat(model=model, messages=WEATHER_HISTORY, tools=[WEATHER], options=options, stream=True):
        streamed += ollama_calls(part.message)
        content += part.message.content or ""
        done_reason = part.done_reason if part.done else done_reason
    out = {
        "calls": ollama_calls(whole.message),
        "content": whole.message.content,
        "done_reason": whole.done_reason,
        "streamed": {"calls": streamed, "content": content, "done_reason": done_reason},
    }
    if whole.message.tool_calls:
        follow = WEATHER_HISTORY + [whole.message, {"role": "tool", "content": "11 degrees and raining", "tool_name": "get_weather"}]
        answer = client.chat(model=model, messages=follow, tools=[WEATHER], options=options)
        out["answer"] = {"content": answer.message.content, "calls": len(answer.message.tool_calls or [])}
    plain = [{"role": "user", "content": "What is the weather in Paris?"}]
    with_tool = client.chat(model=model, messages=plain, tools=[WEATHER], options=options)
    without = client.chat(model=model, messages=plain, options={**options, "num_predict": 1})
    out["plain"] = {
        "content": with_tool.message.content,
        "calls": ollama_calls(with_tool.message),
        "prompt_tokens": with_tool.prompt_eval_count,
        "prompt_tokens_without_tools": without.prompt_eval_count,
    }
    return out


def ollama_format(base, key, model):
    """Ollama's `format` with a JSON schema, whole and streamed."""
    client = ollama_client(base, key)
    ask = dict(model=model, messages=[{"role": "user", "content": PICK_ASKED}], format=PICK, options={"temperature": 0, "seed": 42, "num_predict": 64})
    whole = client.chat(**ask)
    streamed = "".join(part.message.content or "" for part in client.chat(**ask, stream=True))
    return {"content": whole.message.content, "streamed": streamed}


def anthropic_blocks(message):
    return [{"type": "tool_use", "name": b.name, "input": b.input} if b.type == "tool_use" else {"type": b.type, "text": getattr(b, "text", None)} for b in message.content]


def anthropic_tools(base, key, model):
    """Messages with a tool, forced by tool_choice "any" and by naming it, whole and streamed; then
    its tool_result sent back and the model's answer in words."""
    client = anthropic_client(base, key)
    tool = {"name": WEATHER["function"]["name"], "description": WEATHER["function"]["description"], "input_schema": WEATHER["function"]["parameters"]}
    messages = [{"role": "user", "content": WEATHER_ASKED}]
    greedy = {"temperature": 0}
    out = {}
    for name, choice in [("any", {"type": "any"}), ("tool", {"type": "tool", "name": "get_weather"})]:
        m = client.messages.create(model=model, max_tokens=64, messages=messages, tools=[tool], tool_choice=choice, extra_body=greedy)
        out[name] = {"stop_reason": m.stop_reason, "content": anthropic_blocks(m)}
        if name == "any":
            first = m
    with client.messages.stream(model=model, max_tokens=64, messages=messages, tools=[tool], tool_choice={"type": "any"}, extra_body=greedy) as stream:
        final = stream.get_final_message()
    out["streamed"] = {"stop_reason": final.stop_reason, "content": anthropic_blocks(final)}
    uses = [b for b in first.content if b.type == "tool_use"]
    if not uses:
        return out
    follow = messages + [
        {"role": "assistant", "content": [{"type": "tool_use", "id": uses[0].id, "name": uses[0].name, "input": uses[0].input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": WEATHER_ANSWER}]},
    ]
    # A new connection: llama-server, asked directly, closes one after a stream that the client
    # would take up again.
    answer = anthropic_client(base, key).messages.create(model=model, max_tokens=32, messages=follow, tools=[tool], extra_body=greedy)
    out["answer"] = {"stop_reason": answer.stop_reason, "content": anthropic_blocks(answer)}
    return out


STEPS = {
    "openai-embed": openai_embed,
    "openai-embed-refused": openai_embed_refused,
    "ollama-embed": ollama_embed,
    "ollama-embeddings": ollama_embeddings,
    "openai-vision": openai_vision,
    "ollama-vision": ollama_vision,
    "ollama-pull": ollama_pull,
    "ollama-show": ollama_show,
    "openai-responses": openai_responses,
    "anthropic-messages": anthropic_messages,
    "anthropic-refused": anthropic_refused,
    "openai-tools": openai_tools,
    "openai-tools-history": openai_tools_history,
    "openai-json-schema": openai_json_schema,
    "ollama-tools": ollama_tools,
    "ollama-format": ollama_format,
    "anthropic-tools": anthropic_tools,
}

if __name__ == "__main__":
    step, *args = sys.argv[1:]
    print(json.dumps(STEPS[step](*args)))
