// LobeChat's and LibreChat's calls as they build them with the official Node SDK (clients.md
// §2-3), against a running retouch server. Prints one JSON object; tests/test_client_shapes.py
// asserts on it.
import OpenAI, { toFile } from "openai";
import { readFileSync } from "node:fs";

const [baseURL, imagePath] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "sk-lobechat", maxRetries: 0 });
const image = readFileSync(imagePath);
const out = {};

async function outcome(call) {
  try {
    const r = await call();
    return { ok: true, count: r.data.length, size: r.size, b64: (r.data[0].b64_json ?? "").length > 0 };
  } catch (err) {
    return { ok: false, status: err.status, code: err.code, param: err.param };
  }
}

// LobeChat createImage: n=1, input_fidelity=high (older lobe-chat: every model), the image as a
// File named image.<subtype>, size left out when auto.
for (const model of ["gpt-image-1", "classic", "gpt-image-2", "gpt-image-1-mini"]) {
  out[`lobechat_${model}`] = await outcome(async () =>
    client.images.edit({
      model, n: 1, input_fidelity: "high", prompt: "black and white",
      image: await toFile(image, "image.png", { type: "image/png" }),
    }),
  );
}
// Several images: the Node SDK sends image[] parts.
out.lobechat_many = await outcome(async () =>
  client.images.edit({
    model: "gpt-image-1", n: 1, input_fidelity: "high", prompt: "use the second image as background",
    image: [await toFile(image, "image.png", { type: "image/png" }), await toFile(image, "image.png", { type: "image/png" })],
  }),
);
// LibreChat image_gen_oai: images.generate with its defaults.
out.librechat_generate = await outcome(() =>
  client.images.generate({
    model: "gpt-image-1", prompt: "a red boat", n: 1, background: "auto", output_format: "png",
    quality: "auto", size: "auto",
  }),
);
console.log(JSON.stringify(out));
