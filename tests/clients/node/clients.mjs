// The AI SDK (ai + @ai-sdk/openai-compatible) and @langchain/openai against a running bridge,
// each as its docs show for an OpenAI-compatible server, with a model name the server does not
// serve. Usage: node clients.mjs BASE_URL SERVED_ID. Prints one line:
// RESULTS {"<library>:<cell>": "ok" | "FAIL: ..."} (asserted by test_node_libraries.py).
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { HumanMessage } from "@langchain/core/messages";
import { tool as lcTool } from "@langchain/core/tools";
import { ChatOpenAI } from "@langchain/openai";
import { generateText, Output, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const [baseURL, served] = process.argv.slice(2);
const FOREIGN = "gpt-4o-mini";
const API_KEY = "sk-local";
const Trip = z.object({  // nested, as a pydantic model with a sub-model
  city: z.string().max(20),
  country: z.object({ name: z.string().max(20), code: z.string().max(3) }),
});
const weatherArgs = z.object({ city: z.string().max(20) });
const weather = async ({ city }) => JSON.stringify({ city, temperature: 18, sky: "sunny" });

function check(ok, why) {
  if (!ok) throw new Error(why);
}

// -- AI SDK ------------------------------------------------------------------------------
const provider = createOpenAICompatible({
  name: "dvai", baseURL, apiKey: API_KEY, supportsStructuredOutputs: true,
});
const model = provider(FOREIGN);
const base = { model, maxRetries: 0, temperature: 0 };

const aiSdk = {
  async chat() {
    const r = await generateText({ ...base, prompt: "Say hi.", maxOutputTokens: 12 });
    check(r.text, "no text");
    check(r.response.modelId === served, `modelId ${r.response.modelId}`);
    check(["stop", "length"].includes(r.finishReason), `finish ${r.finishReason}`);
  },
  async stream() {
    const r = streamText({ ...base, prompt: "Say hi.", maxOutputTokens: 12 });
    const pieces = [];
    for await (const p of r.textStream) pieces.push(p);
    check(pieces.length > 1 && pieces.join(""), "streamed text");
    check(["stop", "length"].includes(await r.finishReason), "finish");
  },
  async tools() {
    const r = await generateText({
      ...base, maxOutputTokens: 60, prompt: "What is the weather in Paris?",
      tools: { get_weather: tool({ description: "Weather in a city.", inputSchema: weatherArgs,
                                   execute: weather }) },
      toolChoice: "required", stopWhen: stepCountIs(2),
      prepareStep: ({ stepNumber }) => (stepNumber > 0 ? { toolChoice: "none" } : {}),
    });
    const [first] = r.steps;
    check(first.finishReason === "tool-calls" && first.toolCalls.length, "a call");
    check(first.toolResults.length && r.steps.length === 2, `steps ${r.steps.length}`);
  },
  async structured() {
    const r = await generateText({
      ...base, maxOutputTokens: 80, prompt: "A trip to Rome.",
      output: Output.object({ schema: Trip }),
    });
    Trip.parse(r.output);
  },
};

// -- LangChain.js ------------------------------------------------------------------------
const llm = new ChatOpenAI({
  model: FOREIGN, apiKey: API_KEY, configuration: { baseURL }, maxTokens: 60,
  temperature: 0, maxRetries: 0,
});

const langchain = {
  async chat() {
    const m = await llm.invoke("Say hi.", { maxTokens: 12 });
    check(m.content, "no content");
    check(m.response_metadata.model_name === served, JSON.stringify(m.response_metadata));
  },
  async stream() {
    const pieces = [];
    for await (const c of await llm.stream("Say hi.")) pieces.push(c.content);
    check(pieces.length > 1 && pieces.join(""), "streamed text");
  },
  async tools() {
    const getWeather = lcTool(weather, { name: "get_weather", description: "Weather in a city.",
                                         schema: weatherArgs });
    const ask = new HumanMessage("What is the weather in Paris?");
    const ai = await llm.bindTools([getWeather], { tool_choice: "required" }).invoke([ask]);
    check(ai.tool_calls?.length && ai.tool_calls[0].name === "get_weather", "a call");
    const result = await getWeather.invoke(ai.tool_calls[0]);  // a ToolMessage
    const final = await llm.bindTools([getWeather]).invoke([ask, ai, result]);
    check(final.response_metadata.finish_reason, "second turn");
  },
  async structured() {
    const out = await llm.withStructuredOutput(Trip).invoke("A trip to Rome.");
    Trip.parse(out);
  },
};

const results = {};
for (const [lib, cells] of [["ai-sdk", aiSdk], ["langchain-js", langchain]]) {
  for (const [name, fn] of Object.entries(cells)) {
    try {
      await fn();
      results[`${lib}:${name}`] = "ok";
    } catch (err) {
      results[`${lib}:${name}`] = `FAIL: ${String(err?.stack ?? err).slice(0, 1500)}`;
    }
  }
}
console.log("RESULTS " + JSON.stringify(results));
