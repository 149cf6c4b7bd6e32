// One chat completion through the Node `openai` client, as the test asks on argv:
//   node client.cjs '{"base": "http://127.0.0.1:4000/v1", "model": "m/5xx", "stream": false}'
// (`"usage": true` asks a stream for its usage chunk.) Prints one JSON line: {content, model,
// usage, headers, error}. The client's own retries are off, so any failover seen is the
// sidecar's.
const OpenAI = require("openai");

async function main() {
  const req = JSON.parse(process.argv[2]);
  const client = new OpenAI({ baseURL: req.base, apiKey: "unused", maxRetries: 0, timeout: 15000 });
  const out = { content: "", model: null, usage: null, headers: {}, error: null };
  const keep = (response) => {
    for (const [k, v] of response.headers.entries()) {
      if (k.startsWith("x-detour-")) out.headers[k] = v;
    }
  };
  try {
    const params = { model: req.model, messages: [{ role: "user", content: "hello" }], stream: req.stream };
    if (req.usage) params.stream_options = { include_usage: true };
    const { data, response } = await client.chat.completions.create(params).withResponse();
    keep(response);
    if (req.stream) {
      for await (const chunk of data) {
        out.model = chunk.model;
        out.content += chunk.choices?.[0]?.delta?.content ?? "";
        if (chunk.usage) out.usage = chunk.usage;
      }
    } else {
      out.model = data.model;
      out.content = data.choices[0].message.content;
      out.usage = data.usage ?? null;
    }
  } catch (e) {
    out.error = { name: e.constructor.name, message: String(e.message || e) };
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

main();
