// One streamed chat completion through the Vercel AI SDK (`ai` with `@ai-sdk/openai` in chat
// mode), as the test asks on argv:
//   node ai_sdk.cjs '{"base": "http://127.0.0.1:4000/v1", "model": "m/nodone"}'
// Prints one JSON line: {text, usage, finishReason, modelId, headers, error}. `error` is set
// when `await result.text` rejected. The SDK's own retries are off, so any failover seen is
// the sidecar's.
const { streamText } = require("ai");
const { createOpenAI } = require("@ai-sdk/openai");

async function main() {
  const req = JSON.parse(process.argv[2]);
  const provider = createOpenAI({ baseURL: req.base, apiKey: "unused" });
  const out = { text: null, usage: null, finishReason: null, modelId: null, headers: {}, error: null, streamErrors: [] };
  const result = streamText({
    model: provider.chat(req.model),
    prompt: "hello",
    maxRetries: 0,
    // Errors inside the stream are reported here too; kept so the test can show them.
    onError: ({ error }) => out.streamErrors.push(String(error && error.message ? error.message : error)),
  });
  try {
    out.text = await result.text;
    out.finishReason = await result.finishReason;
    const usage = await result.usage;
    out.usage = { inputTokens: usage.inputTokens ?? null, outputTokens: usage.outputTokens ?? null };
    const response = await result.response;
    out.modelId = response.modelId ?? null;
    for (const [k, v] of Object.entries(response.headers ?? {})) {
      if (k.startsWith("x-detour-")) out.headers[k] = v;
    }
  } catch (e) {
    out.error = { name: e.constructor.name, message: String(e.message || e) };
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

main();
