// The official OpenAI Node SDK against a running retouch server. Prints one JSON object with
// what each call returned; tests/test_node_sdk.py asserts on it.
import OpenAI, { toFile } from "openai";
import { readFileSync } from "node:fs";

const [baseURL, imagePath, maskPath] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "sk-test", maxRetries: 0 });
const image = readFileSync(imagePath);
const mask = readFileSync(maskPath);
const out = {};

const one = await client.images.edit({
  model: "gpt-image-1",
  image: await toFile(image, "a.png", { type: "image/png" }),
  prompt: "black and white",
  output_format: "webp",
});
out.single = { size: one.size, format: one.output_format, b64: one.data[0].b64_json.length > 0, usage: one.usage };

const many = await client.images.edit({
  model: "classic",
  image: [await toFile(image, "a.png", { type: "image/png" }), await toFile(image, "b.png")],
  prompt: "use the second image as background",
  n: 2,
});
out.many = { count: many.data.length, size: many.size };

const stream = await client.images.edit({
  model: "classic",
  image: await toFile(image, "a.png", { type: "image/png" }),
  mask: await toFile(mask, "mask.png", { type: "image/png" }),
  prompt: "erase it",
  stream: true,
  partial_images: 2,
});
out.stream = [];
for await (const event of stream) {
  out.stream.push({ type: event.type, index: event.partial_image_index ?? null });
}

try {
  await client.images.edit({
    model: "gpt-image-1",
    image: await toFile(image, "a.png", { type: "image/png" }),
    prompt: "x",
    size: "1024x1792",
  });
  out.error = null;
} catch (err) {
  out.error = { status: err.status, code: err.code, param: err.param, type: err.type, requestID: err.requestID ?? null };
}
console.log(JSON.stringify(out));
