// One call through the Vercel AI SDK with `@ai-sdk/openai`: its default provider
// (`openai(model)`, the Responses API) or chat mode (`openai.chat(model)`), as the test asks:
//   node ai_sdk_models.cjs '{"base": "...", "model": "m/5xx", "api": "responses", "stream": true, "tools": false}'
// (`"loop": true`: the tool has an `execute` and the call runs two steps, the second sending the
// first step's call and result back.) Prints one JSON line: {text, toolCalls, usage,
// finishReason, modelId, headers, steps, error, streamErrors}. `error` is set when the call (or `await result.text`) rejected. The SDK's own
// retries are off, so any failover seen is the sidecar's.
const { generateText, streamText, tool, stepCountIs } = require("ai");
const { createOpenAI } = require("@ai-sdk/openai");
const { z } = require("zod");

async function main() {
  const req = JSON.parse(process.argv[2]);
  const provider = createOpenAI({ baseURL: req.base, apiKey: "unused" });
  const model = req.api === "chat" ? provider.chat(req.model) : provider(req.model);
  const out = { text: null, toolCalls: [], usage: null, finishReason: null, modelId: null, headers: {}, error: null, streamErrors: [] };
  const args = { model, prompt: "hello", maxRetries: 0 };
  if (req.tools || req.loop) {
    const spec = { description: "weather of a city", inputSchema: z.object({ city: z.string() }) };
    if (req.loop) {
      spec.execute = async ({ city }) => `sunny in ${city}`;
      args.stopWhen = stepCountIs(2);
    }
    args.tools = { get_weather: tool(spec) };
  }
  try {
    let result;
    if (req.stream) {
      result = streamText({ ...args, onError: ({ error }) => out.streamErrors.push(String(error && error.message ? error.message : error)) });
      out.text = await result.text;
    } else {
      result = await generateText(args);
      out.text = result.text;
    }
    out.finishReason = await result.finishReason;
    out.toolCalls = (await result.toolCalls).map((c) => ({ name: c.toolName, input: c.input, id: c.toolCallId }));
    const usage = await result.usage;
    out.usage = { inputTokens: usage.inputTokens ?? null, outputTokens: usage.outputTokens ?? null };
    const response = await result.response;
    out.modelId = response.modelId ?? null;
    out.steps = (await result.steps).length;
    for (const [k, v] of Object.entries(response.headers ?? {})) {
      if (k.startsWith("x-detour-") || k === "x-request-id") out.headers[k] = v;
    }
  } catch (e) {
    out.error = { name: e.constructor.name, message: String(e.message || e) };
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

main();
