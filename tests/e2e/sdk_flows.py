"""Conversations the SDK suites run against every provider they cover, through the official
openai SDK: the same flow and the same expectations whatever llmux translates to."""

import json

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def parallel_tool_calls_then_tool_result_turn(client, model, stream):
    """Asks for the weather in two cities: the model (`llmux mock`) answers with two
    `get_weather` calls in one turn (streamed or not), then the tool results go back in a
    second turn that the model acknowledges. Returns the tool calls of the first turn."""
    messages = [{"role": "user", "content": "Weather in two cities?"}]
    if stream:
        with client.chat.completions.stream(model=model, messages=messages, tools=[WEATHER]) as s:
            first = s.get_final_completion()
    else:
        first = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
    msg = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    calls = msg.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "city-1"}),
        ("get_weather", {"city": "city-2"}),
    ]
    assert len({c.id for c in calls}) == 2
    messages.append(
        {
            "role": "assistant",
            "content": msg.content,
            "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
                for c in calls
            ],
        }
    )
    for c, weather in zip(calls, ["sunny", "rainy"]):
        messages.append({"role": "tool", "tool_call_id": c.id, "content": weather})
    second = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
    assert second.choices[0].message.content == "tool results received: 2"
    assert second.choices[0].finish_reason == "stop"
    return calls
