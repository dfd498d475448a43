// The real `openai` npm client (4.x, pinned in package-lock.json) against Ray's OpenAI-compatible routes
// (spec/http-api.md §3), with Ray attached to the llama-server double. Run by ../openai_client_test.sh (Ray
// directly) and ../caddy_test.sh (Ray behind Caddy); both start the processes and set:
//   RAY_URL          Ray (or the proxy in front of it), the default scheduler, keep-alives every 100 ms
//   RAY_QUEUE_URL    a second Ray (or proxy) on the same double: concurrency 1, maxQueue 2
//   DOUBLE_URL       the double itself, for its /__control knobs and /__stats (never the system under test)
//   RAY_EMBED_URL    a Ray serving an embedding model on the mock adapter (openai_client_test.sh only; the
//                    embeddings test is skipped without it)
//   GEN_TPS          the double's --gen-tps (tokens per second per slot)
//   CTX_PER_REQUEST  the double's n_ctx per request (-c / -np)
// Timing assertions are multiples of the token interval 1/GEN_TPS, or the Retry-After Ray gave.
import { test } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";

function env(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run this through openai_client_test.sh or caddy_test.sh)`);
  return v;
}

const RAY_URL = env("RAY_URL");
const RAY_QUEUE_URL = env("RAY_QUEUE_URL");
const DOUBLE_URL = env("DOUBLE_URL");
const RAY_EMBED_URL = process.env.RAY_EMBED_URL;
const GEN_TPS = Number(env("GEN_TPS"));
const CTX_PER_REQUEST = Number(env("CTX_PER_REQUEST"));
const TOKEN_MS = 1000 / GEN_TPS;
const MODEL_ID = "tiny-llama"; // the configured id; requests say gpt-4o-mini like a hard-coded client would
const ASKED_MODEL = "gpt-4o-mini";
const TEST_TIMEOUT = 30_000;

function client(baseUrl = RAY_URL, options = {}) {
  return new OpenAI({ baseURL: `${baseUrl}/v1`, apiKey: "unused", maxRetries: 0, timeout: 20_000, ...options });
}

// Every call a client makes, as seen at its fetch: when it was sent, when its headers came back, its status and
// the headers the retry logic reads. Wraps the SDK's own default fetch (node-fetch on Node).
function recordingClient(baseUrl, options, onResponse = async () => {}) {
  const inner = client(baseUrl).fetch;
  const calls = [];
  const fetch = async (url, init) => {
    const call = { url: String(url), sentAt: performance.now() };
    calls.push(call);
    const response = await inner(url, init);
    call.receivedAt = performance.now();
    call.status = response.status;
    call.retryAfter = response.headers.get("retry-after");
    call.retryAfterMs = response.headers.get("retry-after-ms");
    await onResponse(call);
    return response;
  };
  return { openai: client(baseUrl, { ...options, fetch }), calls };
}

async function double(path, body) {
  const init = body === undefined ? {} : { method: "POST", body: JSON.stringify(body) };
  const r = await fetch(`${DOUBLE_URL}${path}`, { ...init, signal: AbortSignal.timeout(5_000) });
  assert.equal(r.status, 200, `double ${path}: ${r.status}`);
  return r.json();
}

const control = (knobs) => double("/__control", knobs);
const doubleStats = () => double("/__stats");

// Polls `probe` until it returns a truthy value or `within` ms pass (a bounded wait on an event, not a sleep).
async function eventually(probe, within, what) {
  const until = performance.now() + within;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (performance.now() > until) assert.fail(`not within ${within} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

// The error a promise rejects with (fails when it resolves).
async function rejection(promise) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  assert.fail("expected the call to fail");
}

const chat = (content, extra = {}) => ({
  model: ASKED_MODEL,
  messages: [
    { role: "developer", content: "Answer briefly." },
    { role: "user", content },
  ],
  ...extra,
});

// Every test gets its own prompt: the double's text depends on the prompt, and temperature-0 answers are
// cached by Ray, so a shared prompt would turn a later test into a cache replay.
let promptSerial = 0;
const prompt = (what) => `${what} #${++promptSerial} (${process.pid})`;

// ---------------------------------------------------------------------------------------------------------

test("models.list and models.retrieve return the configured model with the backend's context", { timeout: TEST_TIMEOUT }, async () => {
  const openai = client();
  const page = await openai.models.list();
  assert.equal(page.data.length, 1, JSON.stringify(page.data));
  const m = page.data[0];
  assert.equal(m.id, MODEL_ID);
  assert.equal(m.object, "model");
  assert.equal(m.owned_by, "ray");
  assert.equal(typeof m.created, "number");
  assert.equal(m.meta.context_window, CTX_PER_REQUEST);
  assert.equal(m.meta.backend, "llama.cpp");
  const one = await openai.models.retrieve(MODEL_ID);
  assert.equal(one.id, MODEL_ID);
});

test("chat.completions.create answers a hard-coded gpt-4o-mini with the real model id", { timeout: TEST_TIMEOUT }, async () => {
  const { data, response } = await client()
    .chat.completions.create(chat(prompt("Say hi"), { max_tokens: 5, temperature: 0 }))
    .withResponse();
  assert.equal(response.status, 200);
  assert.equal(data.object, "chat.completion");
  assert.equal(data.model, MODEL_ID);
  assert.match(data.id, /^chatcmpl-/);
  assert.equal(data.choices.length, 1);
  const choice = data.choices[0];
  assert.equal(choice.message.role, "assistant");
  assert.equal(typeof choice.message.content, "string");
  assert.ok(choice.message.content.trim().length > 0, `empty content: ${JSON.stringify(data)}`);
  assert.equal(choice.finish_reason, "length");
  assert.equal(data.usage.completion_tokens, 5);
  assert.ok(data.usage.prompt_tokens > 0);
  assert.equal(data.usage.total_tokens, data.usage.prompt_tokens + data.usage.completion_tokens);
  assert.equal(response.headers.get("x-ray-max-tokens"), "5");
  assert.match(response.headers.get("x-request-id") ?? "", /^req_[0-9a-f]{16}$/);
});

// Reads a chat stream, timing each chunk from `start`.
async function readChatStream(stream, start, onFirst = async () => {}) {
  const out = { chunks: [], text: "", firstAt: undefined, endAt: undefined, finish: undefined, usage: undefined };
  for await (const chunk of stream) {
    if (out.firstAt === undefined) {
      out.firstAt = performance.now() - start;
      await onFirst(chunk);
    }
    out.chunks.push(chunk);
    for (const c of chunk.choices) {
      out.text += c.delta?.content ?? "";
      if (c.finish_reason) out.finish = c.finish_reason;
    }
    if (chunk.usage) out.usage = chunk.usage;
  }
  out.endAt = performance.now() - start;
  return out;
}

test("a chat stream arrives token by token and says the same as the non-streaming answer", { timeout: TEST_TIMEOUT }, async () => {
  const openai = client();
  const tokens = 20;
  const content = prompt("Tell a story");
  const start = performance.now();
  let backendBusyAtFirstChunk;
  const stream = await openai.chat.completions.create(
    chat(content, { max_tokens: tokens, temperature: 0, stream: true, stream_options: { include_usage: true } }),
  );
  const got = await readChatStream(stream, start, async () => {
    // The double is still generating when the client holds the first chunk.
    backendBusyAtFirstChunk = (await doubleStats()).processing;
  });

  assert.ok(got.chunks.length >= 3, `only ${got.chunks.length} chunks`);
  for (const c of got.chunks) {
    assert.equal(c.object, "chat.completion.chunk");
    assert.equal(c.model, MODEL_ID);
    assert.equal(c.id, got.chunks[0].id);
  }
  assert.equal(got.chunks[0].choices[0].delta.role, "assistant");
  assert.equal(backendBusyAtFirstChunk, 1, "the double had already finished when the first chunk arrived");
  // 20 tokens take 19 token intervals after the first one: a buffered stream would end with its first chunk.
  const spread = got.endAt - got.firstAt;
  assert.ok(
    spread >= 10 * TOKEN_MS,
    `first chunk at ${got.firstAt.toFixed(0)} ms, end at ${got.endAt.toFixed(0)} ms: ${spread.toFixed(0)} ms apart, ` +
      `expected >= 10 token intervals (${10 * TOKEN_MS} ms)`,
  );
  const contentChunks = got.chunks.filter((c) => c.choices[0]?.delta?.content).length;
  assert.ok(contentChunks >= 10, `${contentChunks} content chunks for ${tokens} tokens`);
  assert.equal(got.finish, "length");
  // include_usage: the last chunk carries the usage and no choices.
  const last = got.chunks.at(-1);
  assert.deepEqual(last.choices, []);
  assert.equal(got.usage.completion_tokens, tokens);
  assert.ok(got.text.trim().length > 0);
  console.log(
    `# stream: first chunk ${got.firstAt.toFixed(0)} ms, end ${got.endAt.toFixed(0)} ms, ${got.chunks.length} chunks`,
  );

  // The same temperature-0 request without streaming (Ray may answer it from its cache: same text either way).
  const { data, response } = await openai.chat.completions
    .create(chat(content, { max_tokens: tokens, temperature: 0 }))
    .withResponse();
  console.log(`# the non-streaming repeat: x-ray-cache=${response.headers.get("x-ray-cache") ?? "(none)"}`);
  assert.equal(got.text, data.choices[0].message.content);
  assert.equal(data.usage.completion_tokens, tokens);
  assert.equal(data.choices[0].finish_reason, "length");
});

test("a non-streaming answer and the stream of the same request (a cache replay) agree", { timeout: TEST_TIMEOUT }, async () => {
  const openai = client();
  const req = chat(prompt("List three colours"), { max_tokens: 8, temperature: 0 });
  const plain = await openai.chat.completions.create(req);
  const stream = await openai.chat.completions.create({ ...req, stream: true });
  const got = await readChatStream(stream, performance.now());
  assert.equal(got.text, plain.choices[0].message.content);
  assert.equal(got.finish, plain.choices[0].finish_reason);
  assert.ok(got.chunks.every((c) => c.model === MODEL_ID));
});

test("keep-alive comments sent before the first token do not disturb the client", { timeout: TEST_TIMEOUT }, async () => {
  // The double holds every token until the knob is cleared: the stream's headers can only come from Ray's
  // first keep-alive (server.sseKeepAliveMs 100), and the SDK must skip the `: ping` lines.
  await control({ hang_before_first_token: true });
  try {
    const start = performance.now();
    const stream = await client().chat.completions.create(
      chat(prompt("Wait for it"), { max_tokens: 5, stream: true }),
    );
    const headersAt = performance.now() - start;
    const st = await doubleStats();
    // The request is at the double, held before its first token.
    assert.equal(st.active, 1, JSON.stringify(st));
    assert.equal(st.slots.reduce((n, s) => n + (s.is_processing ? s.n_decoded : 0), 0), 0, "a token was produced");
    await control({ hang_before_first_token: false });
    const got = await readChatStream(stream, start);
    assert.ok(got.text.trim().length > 0);
    assert.equal(got.finish, "length");
    assert.ok(got.firstAt > headersAt);
    console.log(`# headers (keep-alive) at ${headersAt.toFixed(0)} ms, first chunk at ${got.firstAt.toFixed(0)} ms`);
  } finally {
    await control({ hang_before_first_token: false });
  }
});

test("completions.create answers in text_completion shape, streaming and not", { timeout: TEST_TIMEOUT }, async () => {
  const openai = client();
  const req = { model: "gpt-3.5-turbo-instruct", prompt: prompt("Once upon a time"), max_tokens: 5, temperature: 0 };
  const r = await openai.completions.create(req);
  assert.equal(r.object, "text_completion");
  assert.equal(r.model, MODEL_ID);
  assert.match(r.id, /^cmpl-/);
  assert.ok(r.choices[0].text.trim().length > 0, JSON.stringify(r));
  assert.equal(r.choices[0].finish_reason, "length");
  assert.equal(r.usage.completion_tokens, 5);

  const stream = await openai.completions.create({ ...req, stream: true });
  let text = "";
  let finish;
  for await (const chunk of stream) {
    assert.equal(chunk.object, "text_completion");
    assert.equal(chunk.model, MODEL_ID);
    text += chunk.choices[0]?.text ?? "";
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  assert.equal(text, r.choices[0].text);
  assert.equal(finish, "length");
});

test("a context overflow raises BadRequestError with code context_length_exceeded", { timeout: TEST_TIMEOUT }, async () => {
  const openai = client();
  const long = "word ".repeat(CTX_PER_REQUEST * 2); // ~1.25 tokens per word in the double: well past n_ctx
  for (const stream of [false, true]) {
    const err = await rejection(openai.chat.completions.create(chat(long, { max_tokens: 16, stream })));
    assert.ok(err instanceof OpenAI.BadRequestError, `stream=${stream}: ${err}`);
    assert.equal(err.status, 400);
    assert.equal(err.code, "context_length_exceeded");
    assert.equal(err.type, "invalid_request_error");
    assert.equal(err.param, "messages");
    assert.match(err.message, new RegExp(`maximum context length is ${CTX_PER_REQUEST} tokens`));
  }
});

test("tools and tool_choice reach the backend as sent, and the answer comes back in chat shape", { timeout: TEST_TIMEOUT }, async () => {
  // Cut at 3 tokens (the double's tool call needs ~30): this checks what Ray forwards.
  const tools = [
    {
      type: "function",
      function: {
        name: "weather",
        description: "Weather in a city",
        parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
      },
    },
  ];
  const content = prompt("What is the weather in Oslo?");
  const r = await client().chat.completions.create(
    chat(content, { tools, tool_choice: "auto", max_tokens: 3, temperature: 0 }),
  );
  assert.equal(r.object, "chat.completion");
  assert.equal(r.model, MODEL_ID);
  assert.equal(r.choices[0].message.role, "assistant");
  const sent = (await doubleStats()).recent.filter(
    (e) => e.path === "/v1/chat/completions" && e.body.messages?.some((m) => m.content === content),
  );
  assert.equal(sent.length, 1, JSON.stringify(sent));
  assert.deepEqual(sent[0].body.tools, tools);
  assert.equal(sent[0].body.tool_choice, "auto");
});

test("a failure after the stream started reaches the client as an APIError", { timeout: TEST_TIMEOUT }, async () => {
  await control({ fail_after_tokens: 3 });
  try {
    const stream = await client().chat.completions.create(
      chat(prompt("Break halfway"), { max_tokens: 20, stream: true }),
    );
    let text = "";
    const err = await rejection(
      (async () => {
        for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
      })(),
    );
    assert.ok(err instanceof OpenAI.APIError, String(err));
    assert.ok(err.error && typeof err.error.message === "string", JSON.stringify(err.error));
    assert.equal(err.error.type, "server_error");
    assert.ok(text.length > 0, "no tokens before the failure");
  } finally {
    await control({ fail_after_tokens: -1 });
  }
});

test("503 queue_full: the client waits the Retry-After Ray gave, then its retry succeeds", { timeout: TEST_TIMEOUT }, async () => {
  // RAY_QUEUE_URL: concurrency 1, maxQueue 2. With the double holding tokens, three requests fill it (one in
  // flight, two waiting) and a fourth is refused.
  await control({ hang_before_first_token: true });
  const held = [];
  try {
    for (let i = 0; i < 3; i++) {
      held.push(
        fetch(`${RAY_QUEUE_URL}/v1/chat/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(chat(prompt(`blocker ${i}`), { max_tokens: 1 })),
          signal: AbortSignal.timeout(TEST_TIMEOUT),
        }).then(async (r) => ({ status: r.status, body: await r.text() })),
      );
    }
    await eventually(
      async () => {
        const r = await fetch(`${RAY_QUEUE_URL}/readyz`, { signal: AbortSignal.timeout(5_000) });
        const b = await r.json();
        return b.inFlight === 1 && b.queueDepth === 2;
      },
      10_000,
      "one request in flight and two waiting",
    );

    // Without retries the 503 surfaces with Ray's envelope and headers.
    const refused = await rejection(client(RAY_QUEUE_URL).chat.completions.create(chat(prompt("refused"), { max_tokens: 2 })));
    assert.ok(refused instanceof OpenAI.InternalServerError, String(refused));
    assert.equal(refused.status, 503);
    assert.equal(refused.code, "queue_full");
    assert.equal(refused.type, "overloaded_error");
    const ra = refused.headers["retry-after"];
    const raMs = Number(refused.headers["retry-after-ms"]);
    assert.match(ra ?? "", /^[0-9]+$/);
    assert.ok(Number(ra) >= 1 && Number(ra) <= 30, `retry-after ${ra}`);
    assert.ok(raMs >= 1000 && raMs <= 30_000, `retry-after-ms ${raMs}`);
    assert.equal(Number(ra), Math.ceil(raMs / 1000));

    // With maxRetries 1: capacity frees as soon as the first 503 is seen (the double lets the held requests
    // finish); the SDK sleeps retry-after-ms (it prefers it to retry-after, both honoured under 60 s), retries,
    // and gets the answer.
    let released = false;
    const { openai, calls } = recordingClient(RAY_QUEUE_URL, { maxRetries: 1 }, async (call) => {
      if (call.status === 503 && !released) {
        released = true;
        await control({ hang_before_first_token: false });
      }
    });
    const start = performance.now();
    const answer = await openai.chat.completions.create(chat(prompt("retried"), { max_tokens: 2 }));
    const elapsed = performance.now() - start;
    assert.equal(answer.model, MODEL_ID);
    assert.ok(answer.choices[0].message.content.length > 0);
    assert.deepEqual(
      calls.map((c) => c.status),
      [503, 200],
    );
    const [first, second] = calls;
    const waited = second.sentAt - first.receivedAt;
    const promisedMs = Number(first.retryAfterMs);
    assert.ok(promisedMs >= 1000, `retry-after-ms ${first.retryAfterMs}`);
    assert.equal(Number(first.retryAfter), Math.ceil(promisedMs / 1000));
    // Timers may fire a millisecond early relative to performance.now(); never a whole interval.
    assert.ok(waited >= promisedMs - 5, `retried after ${waited.toFixed(0)} ms, Ray asked for ${promisedMs} ms`);
    assert.ok(elapsed >= 1000, `the whole call took ${elapsed.toFixed(0)} ms`);
    console.log(
      `# 503 queue_full retry-after=${first.retryAfter} retry-after-ms=${first.retryAfterMs}; ` +
        `the SDK retried after ${waited.toFixed(0)} ms; call took ${elapsed.toFixed(0)} ms`,
    );
    for (const h of await Promise.all(held)) assert.equal(h.status, 200, h.body);
  } finally {
    await control({ hang_before_first_token: false });
    await Promise.allSettled(held);
  }
});

// ---- round two (issue 19): tool calls, structured outputs, /v1/responses

const weatherTools = [
  { type: "function", function: { name: "get_weather", parameters: { type: "object", properties: { city: { type: "string" } } } } },
  { type: "function", function: { name: "get_time", parameters: { type: "object" } } },
];

test("a streamed tool call assembles into the arguments the double produced", { timeout: TEST_TIMEOUT }, async () => {
  const content = prompt("Weather in two cities?");
  const body = chat(content, { tools: weatherTools, tool_choice: "auto", parallel_tool_calls: true, max_tokens: 200 });
  const stream = await client().chat.completions.create({ ...body, stream: true });
  const calls = [];
  let finish = null;
  for await (const chunk of stream) {
    const c = chunk.choices[0];
    if (!c) continue;
    for (const d of c.delta?.tool_calls ?? []) {
      calls[d.index] ??= { id: "", name: "", arguments: "" };
      if (d.id) calls[d.index].id = d.id;
      if (d.function?.name) calls[d.index].name = d.function.name;
      if (d.function?.arguments) calls[d.index].arguments += d.function.arguments;
    }
    if (c.finish_reason) finish = c.finish_reason;
  }
  assert.equal(finish, "tool_calls");
  assert.equal(calls.length, 2);
  // The same request straight to the double, non-streaming: its assembled calls.
  // (Ray sends `developer` as `system`, so the double sees the same prompt.)
  const messages = body.messages.map((m) => (m.role === "developer" ? { ...m, role: "system" } : m));
  const direct = await double("/v1/chat/completions", { ...body, messages, model: MODEL_ID });
  const want = direct.choices[0].message.tool_calls;
  assert.equal(want.length, 2);
  for (let i = 0; i < 2; i++) {
    assert.equal(calls[i].id, want[i].id);
    assert.equal(calls[i].name, want[i].function.name);
    assert.deepEqual(JSON.parse(calls[i].arguments), JSON.parse(want[i].function.arguments));
  }
});

test("a non-streaming tool call comes back as message.tool_calls with finish_reason tool_calls", { timeout: TEST_TIMEOUT }, async () => {
  const r = await client().chat.completions.create(
    chat(prompt("Weather?"), { tools: weatherTools, tool_choice: { type: "function", function: { name: "get_time" } }, max_tokens: 200 }),
  );
  assert.equal(r.choices[0].finish_reason, "tool_calls");
  assert.equal(r.choices[0].message.content, null);
  const calls = r.choices[0].message.tool_calls;
  assert.equal(calls.length, 1);
  assert.equal(calls[0].type, "function");
  assert.equal(calls[0].function.name, "get_time");
  assert.equal(typeof JSON.parse(calls[0].function.arguments).city, "string");
});

test("response_format json_schema: the answer parses and follows the schema (beta.chat.completions.parse)", { timeout: TEST_TIMEOUT }, async () => {
  const schema = {
    type: "object",
    properties: { city: { type: "string" }, days: { type: "integer" } },
    required: ["city", "days"],
    additionalProperties: false,
  };
  const r = await client().beta.chat.completions.parse(
    chat(prompt("Forecast as JSON"), {
      max_tokens: 100,
      temperature: 0,
      response_format: { type: "json_schema", json_schema: { name: "forecast", strict: true, schema } },
    }),
  );
  const parsed = r.choices[0].message.parsed;
  assert.equal(typeof parsed.city, "string");
  assert.equal(Number.isInteger(parsed.days), true);
});

test("responses.create answers with output_text, and its stream is the Responses event sequence", { timeout: TEST_TIMEOUT }, async () => {
  const openai = client();
  const r = await openai.responses.create({ model: ASKED_MODEL, instructions: "be brief", input: prompt("Hello"), max_output_tokens: 4 });
  assert.equal(r.object, "response");
  assert.equal(r.model, MODEL_ID);
  assert.ok(r.output_text.length > 0);
  assert.equal(r.usage.output_tokens, 4);

  const stream = await openai.responses.create({ model: ASKED_MODEL, input: prompt("Hello"), max_output_tokens: 4, stream: true });
  const types = [];
  let text = "";
  let last = -1;
  let final = null;
  for await (const event of stream) {
    types.push(event.type);
    assert.equal(event.sequence_number, last + 1);
    last = event.sequence_number;
    if (event.type === "response.output_text.delta") text += event.delta;
    if (event.type === "response.incomplete" || event.type === "response.completed") final = event.response;
  }
  assert.deepEqual(types.slice(0, 4), ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]);
  assert.equal(types.filter((t) => t === "response.output_text.delta").length, 4);
  assert.ok(final);
  assert.equal(final.output[0].content[0].text, text);

  // The SDK's stream helper assembles the same text.
  const helper = openai.responses.stream({ model: ASKED_MODEL, input: prompt("Hello"), max_output_tokens: 4 });
  let helped = "";
  helper.on("response.output_text.delta", (e) => (helped += e.delta));
  const done = await helper.finalResponse();
  assert.equal(done.output[0].content[0].text, helped); // (4.x's finalResponse() has no output_text helper)
  assert.ok(helped.length > 0);

  await assert.rejects(
    openai.responses.create({ model: ASKED_MODEL, input: "x", previous_response_id: "resp_1" }),
    (e) => e.status === 400 && e.code === "unsupported_parameter" && e.param === "previous_response_id",
  );
});

test(
  "embeddings.create: a string and a 32-input batch; the SDK's base64 default decodes to the float answer",
  { timeout: TEST_TIMEOUT, skip: RAY_EMBED_URL ? false : "RAY_EMBED_URL is not set (run by openai_client_test.sh)" },
  async () => {
    const openai = client(RAY_EMBED_URL);
    // Ray serves the configured embedding model whatever name a hard-coded client sends.
    const one = await openai.embeddings.create({ model: "text-embedding-3-small", input: `hello (${process.pid})` });
    assert.equal(one.object, "list");
    assert.equal(one.model, "embedder");
    assert.equal(one.data.length, 1);
    assert.equal(one.data[0].object, "embedding");
    assert.equal(one.data[0].index, 0);
    const v = one.data[0].embedding;
    assert.equal(v.length, 64);
    const norm = Math.sqrt(v.reduce((s, x) => s + x * x, 0));
    assert.ok(Math.abs(norm - 1) < 1e-5, `norm ${norm}`);
    assert.ok(one.usage.prompt_tokens > 0);
    assert.equal(one.usage.total_tokens, one.usage.prompt_tokens);

    const inputs = Array.from({ length: 32 }, (_, i) => `passage ${i} (${process.pid})`);
    // No encoding_format: the SDK asks for base64 and decodes the float32 array itself.
    const b64 = await openai.embeddings.create({ model: "text-embedding-3-small", input: inputs });
    const flt = await openai.embeddings.create({
      model: "text-embedding-3-small",
      input: inputs,
      encoding_format: "float",
    });
    assert.equal(b64.data.length, 32);
    assert.equal(flt.data.length, 32);
    for (let i = 0; i < 32; i++) {
      assert.equal(b64.data[i].index, i);
      assert.equal(flt.data[i].index, i);
      assert.equal(b64.data[i].embedding.length, 64);
      // The float answer is the shortest decimal of each float32: rounding it back gives the same bits.
      assert.deepEqual(b64.data[i].embedding, flt.data[i].embedding.map(Math.fround), `input ${i}`);
    }

    // Ray does not shorten vectors: any other size is a 400 naming `dimensions`.
    const err = await rejection(openai.embeddings.create({ model: "x", input: "short", dimensions: 8 }));
    assert.ok(err instanceof OpenAI.BadRequestError, String(err));
    assert.equal(err.status, 400);
    assert.equal(err.code, "unsupported_parameter");
    assert.equal(err.param, "dimensions");
  },
);
