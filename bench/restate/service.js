// The Restate peer of fusion-bench (bench/README.md, "Restate side by side"):
// one Restate service, `Bench`, whose handlers are the workloads W1-W3 (W4 is
// W1 under many clients), each step a `ctx.run` calling the same echo function
// over HTTP that Fusion's workflows call (its router URL, env ECHO_URL).
// Listens on 127.0.0.1:$PORT (HTTP/2, as Restate's endpoints do); the harness
// starts it, registers it with restate-server's admin API and stops it.
"use strict";

// The SDK expects Promise.withResolvers (node >= 22); node 20 lacks it.
if (typeof Promise.withResolvers !== "function") {
  Promise.withResolvers = function withResolvers() {
    let resolve;
    let reject;
    const promise = new this((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  };
}

const restate = require("@restatedev/restate-sdk");

const ECHO_URL = process.env.ECHO_URL;
const PORT = Number(process.env.PORT);
if (!ECHO_URL || !PORT) {
  console.error("service.js: set ECHO_URL and PORT");
  process.exit(2);
}

// One call of the echo function: POST the JSON body, answer its JSON answer.
async function echo(body) {
  const resp = await fetch(ECHO_URL, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await resp.text();
  if (!resp.ok) {
    throw new Error(`echo answered ${resp.status}: ${text.slice(0, 200)}`);
  }
  return JSON.parse(text);
}

const step = (ctx, name, body) => ctx.run(name, () => echo(body));

const bench = restate.service({
  name: "Bench",
  handlers: {
    // W1 (and W4): one HTTP step.
    w1: async (ctx, input) => step(ctx, "s0", input),
    // W2: ten HTTP steps in a row, each on the previous one's answer.
    w2: async (ctx, input) => {
      let out = input;
      for (let i = 0; i < 10; i++) {
        out = await step(ctx, `s${i}`, out);
      }
      return out;
    },
    // W3: ten HTTP steps in parallel, then a join.
    w3: async (ctx, input) => {
      const steps = [];
      for (let i = 0; i < 10; i++) {
        steps.push(step(ctx, `s${i}`, input));
      }
      const outs = await restate.RestatePromise.all(steps);
      return outs.length;
    },
  },
});

restate.endpoint().bind(bench).listen(PORT);
