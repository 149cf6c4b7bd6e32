// Sends chat completions whose body is larger than the sidecar's limit through the Node
// `openai` client, as the test asks on argv:
//   node large_body.cjs '{"base": "http://127.0.0.1:4000/v1", "bytes": 11534336, "tries": 9}'
// Prints one JSON line: for each try, the status the client saw (413) or the error it got
// instead ("Connection error." when the answer was lost to a reset). The client's own retries
// are off, so each try is one upload.
const OpenAI = require("openai");

async function main() {
  const req = JSON.parse(process.argv[2]);
  const client = new OpenAI({ baseURL: req.base, apiKey: "unused", maxRetries: 0, timeout: 30000 });
  const content = "x".repeat(req.bytes);
  const seen = [];
  for (let i = 0; i < req.tries; i++) {
    try {
      await client.chat.completions.create({ model: "m", messages: [{ role: "user", content }] });
      seen.push("answered");
    } catch (e) {
      seen.push(e.status ? { status: e.status, code: e.code ?? null } : { error: String(e.message || e) });
    }
  }
  process.stdout.write(JSON.stringify(seen) + "\n");
}

main();
