// A refused multi-MB upload through the official Node SDK: the server answers 429 at the model
// field, while the body is still being sent. Prints what each of the calls got, as JSON.
import OpenAI, { toFile } from "openai";

const [baseURL, count] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "sk-test", maxRetries: 0 });
const big = Buffer.alloc(4_000_000);  // several socket buffers still unsent at the refusal
const out = [];
for (let i = 0; i < Number(count); i++) {
  try {
    await client.images.edit({ model: "echo", image: await toFile(big, "a.png", { type: "image/png" }), prompt: "x" });
    out.push({ status: 200 });
  } catch (err) {
    out.push({ status: err.status ?? null, code: err.code ?? null, name: err.constructor.name, retryAfter: err.headers?.get?.("retry-after") ?? null });
  }
}
console.log(JSON.stringify(out));
