// Chat round trips (plain, streamed, tools, JSON schema) and a streamed Responses API call
// through the official openai npm package.
//
//   node client.mjs <base_url> <model> [prompt]
//   DVAI_BASE_URL=... DVAI_MODEL=... [DVAI_PROMPT=...] [DVAI_MAX_TOKENS=8] node client.mjs
//
// Prints one JSON object on stdout; on failure, {"error": {...}} and exit status 1.
import OpenAI from "openai";

const baseURL = process.argv[2] ?? process.env.DVAI_BASE_URL;
const model = process.argv[3] ?? process.env.DVAI_MODEL;
const prompt = process.argv[4] ?? process.env.DVAI_PROMPT ?? "Say hello.";
const maxTokens = Number(process.env.DVAI_MAX_TOKENS ?? 8);

if (!baseURL || !model) {
  console.error("usage: node client.mjs <base_url> <model> [prompt]  (or DVAI_BASE_URL, DVAI_MODEL)");
  process.exit(2);
}

const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0, timeout: 180_000 });
const request = {
  model,
  messages: [{ role: "user", content: prompt }],
  temperature: 0,
  max_tokens: maxTokens,
};

try {
  const models = await client.models.list();
  const modelIds = [];
  for await (const m of models) modelIds.push(m.id);

  const chat = await client.chat.completions.create(request);

  const stream = await client.chat.completions.create({
    ...request,
    stream: true,
    stream_options: { include_usage: true },
  });
  const ids = new Set();
  const finishReasons = [];
  let firstRole = null;
  let text = "";
  let chunks = 0;
  let usage = null;
  for await (const chunk of stream) {
    chunks += 1;
    ids.add(chunk.id);
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) {
      if (chunks === 1) firstRole = choice.delta?.role ?? null;
      text += choice.delta?.content ?? "";
      if (choice.finish_reason) finishReasons.push(choice.finish_reason);
    }
  }

  // A forced tool call, streamed, accumulated by the SDK's own stream helper.
  const weather = {
    type: "function",
    function: {
      name: "get_weather",
      description: "Get the current weather in a city.",
      parameters: {
        type: "object",
        properties: { city: { type: "string" }, unit: { type: "string", enum: ["celsius", "fahrenheit"] } },
        required: ["city", "unit"],
        additionalProperties: false,
      },
    },
  };
  const toolStream = client.chat.completions.stream({
    model,
    messages: [{ role: "user", content: "What is the weather like in Paris today?" }],
    temperature: 0,
    max_tokens: 60,
    tools: [weather],
    tool_choice: { type: "function", function: { name: "get_weather" } },
  });
  let toolDeltas = 0;
  toolStream.on("tool_calls.function.arguments.delta", () => { toolDeltas += 1; });
  const toolFinal = await toolStream.finalChatCompletion();
  const call = toolFinal.choices[0].message.tool_calls?.[0];

  // Structured output: a JSON schema, enforced.
  const json = await client.chat.completions.create({
    model,
    messages: [{ role: "user", content: "What is 2 + 2?" }],
    temperature: 0,
    max_tokens: 30,
    response_format: {
      type: "json_schema",
      json_schema: {
        name: "sum",
        strict: true,
        schema: { type: "object", properties: { answer: { type: "integer" } }, required: ["answer"], additionalProperties: false },
      },
    },
  });

  // The Responses API, streamed: the event types in order, the text, the final response.
  const rstream = await client.responses.create({
    model, input: prompt, temperature: 0, max_output_tokens: maxTokens, stream: true,
  });
  const rtypes = [];
  const rseq = [];
  let rtext = "";
  let rfinal = null;
  for await (const event of rstream) {
    rtypes.push(event.type);
    rseq.push(event.sequence_number);
    if (event.type === "response.output_text.delta") rtext += event.delta;
    if (event.type === "response.completed" || event.type === "response.incomplete") rfinal = event.response;
  }

  console.log(JSON.stringify({
    node: process.version,
    responses: {
      types: rtypes, sequence_numbers: rseq, text: rtext,
      final_text: rfinal?.output?.[0]?.content?.[0]?.text ?? null,
      status: rfinal?.status ?? null, usage: rfinal?.usage ?? null,
    },
    tools: {
      finish_reason: toolFinal.choices[0].finish_reason,
      content: toolFinal.choices[0].message.content ?? null,
      id: call?.id ?? null,
      name: call?.function?.name ?? null,
      arguments: call?.function?.arguments ?? null,
      argument_deltas: toolDeltas,
    },
    json: { content: json.choices[0].message.content, finish_reason: json.choices[0].finish_reason },
    models: modelIds,
    chat: {
      id: chat.id,
      object: chat.object,
      model: chat.model,
      content: chat.choices[0].message.content,
      role: chat.choices[0].message.role,
      finish_reason: chat.choices[0].finish_reason,
      usage: chat.usage,
    },
    stream: {
      content: text,
      chunks,
      ids: [...ids],
      first_role: firstRole,
      finish_reasons: finishReasons,
      usage,
    },
  }));
} catch (err) {
  console.log(JSON.stringify({
    error: { name: err?.name, message: err?.message, status: err?.status ?? null },
  }));
  process.exit(1);
}
