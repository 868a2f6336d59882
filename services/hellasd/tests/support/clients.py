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
}

if __name__ == "__main__":
    step, *args = sys.argv[1:]
    print(json.dumps(STEPS[step](*args)))
