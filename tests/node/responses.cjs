// One Responses API call through the Node `openai` client, as the test asks on argv:
//   node responses.cjs '{"base": "http://127.0.0.1:4000/v1", "model": "m/5xx", "stream": true, "tools": false}'
// Prints one JSON line: {text, model, usage, status, toolCalls, requestId, headers, error}.
// The client's own retries are off, so any failover seen is the sidecar's.
const OpenAI = require("openai");

async function main() {
  const req = JSON.parse(process.argv[2]);
  const client = new OpenAI({ baseURL: req.base, apiKey: "unused", maxRetries: 0, timeout: 15000 });
  const out = { text: "", model: null, usage: null, status: null, toolCalls: [], requestId: null, headers: {}, error: null };
  const params = { model: req.model, input: "hello", stream: req.stream };
  if (req.tools) {
    params.tools = [{ type: "function", name: "get_weather", description: "weather of a city", strict: false,
                      parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } }];
  }
  const done = (r) => {
    out.model = r.model;
    out.status = r.status;
    out.usage = r.usage ? { input: r.usage.input_tokens, output: r.usage.output_tokens } : null;
    for (const item of r.output) {
      if (item.type === "function_call") out.toolCalls.push({ name: item.name, arguments: item.arguments, callId: item.call_id });
    }
  };
  try {
    const { data, response, request_id } = await client.responses.create(params).withResponse();
    out.requestId = request_id ?? null;
    for (const [k, v] of response.headers.entries()) {
      if (k.startsWith("x-detour-") || k.startsWith("x-ratelimit-")) out.headers[k] = v;
    }
    if (req.stream) {
      let args = "";
      for await (const ev of data) {
        if (ev.type === "response.output_text.delta") out.text += ev.delta;
        if (ev.type === "response.function_call_arguments.delta") args += ev.delta;
        if (ev.type === "response.completed") done(ev.response);
      }
      out.streamedArguments = args;
    } else {
      out.text = data.output_text;
      done(data);
    }
  } catch (e) {
    out.error = { name: e.constructor.name, message: String(e.message || e) };
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

main();
