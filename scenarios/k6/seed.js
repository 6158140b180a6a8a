// The seed plan (scenarios/seed.toml) for k6: the same open-model arrival rate against the same
// API. k6 only generates the load; the stack, the seed data and the audit come from `loadtest`:
//
//   make build
//   target/debug/loadtest up --fresh --scenario scenarios/seed.toml   # services on 18080-18082, fresh random
//                                                         # credentials, the fair-use limits `loadtest run` deploys
//   target/debug/loadtest seed --scenario scenarios/seed.toml   # 1 product (3,000 units), 50 accounts
//   TOKENS=$(target/debug/loadtest token --users 50) k6 run scenarios/k6/seed.js
//   target/debug/loadtest verify                            # the same audit `loadtest run` does
//   target/debug/loadtest down
//
// Environment: TOKENS (required, comma-separated JWTs of users 1..=N; request n uses token n % N,
// as `loadtest run` does), BASE_URL (default http://127.0.0.1:18080), PRODUCT_ID (default 1),
// QUANTITY (default 1), DURATION_SCALE (default 1: multiplies every stage's duration, e.g. 0.1
// for a 33-second smoke run of the same shape).
//
// Every answer but 202 Accepted counts as failed here (k6's http_req_failed), which is stricter
// than `loadtest`, where only 5xx and transport errors count; with the seed plan both expect none.
// A sold-out order is still 202: it fails later, asynchronously, as FAILED:OUT_OF_STOCK.
//
// Like `loadtest run`, every iteration sends an Idempotency-Key unique to the run
// (`k6-<run>-<iteration>`) and, answered 503 or 500 /problems/outcome-unknown, sends the same
// request again with the same key after Retry-After, within its 10-second budget: a retry can
// never place a second order (README, "The API"). Each attempt is an HTTP request of its own in
// k6's figures; the `order accepted (202)` check is made on the final answer.

import http from 'k6/http';
import exec from 'k6/execution';
import { check, sleep } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:18080';
const PRODUCT_ID = parseInt(__ENV.PRODUCT_ID || '1', 10);
const QUANTITY = parseInt(__ENV.QUANTITY || '1', 10);
const DURATION_SCALE = parseFloat(__ENV.DURATION_SCALE || '1');
const TOKENS = (__ENV.TOKENS || '')
  .split(',')
  .map((t) => t.trim())
  .filter((t) => t.length > 0);

if (TOKENS.length === 0) {
  throw new Error('set TOKENS to comma-separated JWTs, e.g. TOKENS=$(target/debug/loadtest token --users 50)');
}

const BODY = JSON.stringify({ product_id: PRODUCT_ID, quantity: QUANTITY });
const HEADERS = TOKENS.map((token) => ({
  Authorization: `Bearer ${token}`,
  'Content-Type': 'application/json',
}));

http.setResponseCallback(http.expectedStatuses(202));

// The seed plan's stages (scenarios/seed.toml), in seconds.
const STAGES = [
  { seconds: 30, target: 500 },
  { seconds: 60, target: 1000 },
  { seconds: 180, target: 1000 },
  { seconds: 30, target: 0 },
].map((s) => ({ duration: `${Math.max(1, Math.round(s.seconds * DURATION_SCALE))}s`, target: s.target }));

export const options = {
  discardResponseBodies: true,
  scenarios: {
    seed: {
      // Open model: iterations start on schedule whatever the responses do; when no VU is free
      // the iteration is dropped and counted in dropped_iterations.
      executor: 'ramping-arrival-rate',
      startRate: 0,
      timeUnit: '1s',
      preAllocatedVUs: 200,
      maxVUs: 2000, // the same in-flight cap as scenarios/seed.toml (max_in_flight)
      stages: STAGES, // 30s → 500/s, 1m → 1000/s, 3m at 1000/s, 30s → 0
      gracefulStop: '30s',
    },
  },
  thresholds: {
    http_req_duration: ['p(95)<2000'], // the seed plan's threshold
    http_req_failed: ['rate==0'],
  },
};

// A request's whole budget, retries included, and the most retries of one request.
const BUDGET_MS = 10000;
const MAX_RETRIES = 8;

// One tag for the whole run, shared by every VU (each VU runs the init code on its own).
export function setup() {
  return { run: `${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}` };
}

// Whether an answer invites the same request again, with the same key: 503 (nothing was
// written) or 500 /problems/outcome-unknown (the server could not tell); after how long.
function retryAfterMs(response) {
  const outcomeUnknown =
    response.status === 500 && String(response.body || '').includes('/problems/outcome-unknown');
  if (response.status !== 503 && !outcomeUnknown) {
    return null;
  }
  const seconds = parseInt(response.headers['Retry-After'] || '', 10);
  return Number.isNaN(seconds) ? 200 : seconds * 1000;
}

export default function (data) {
  const n = exec.scenario.iterationInTest;
  const headers = Object.assign({ 'Idempotency-Key': `k6-${data.run}-${n}` }, HEADERS[n % HEADERS.length]);
  const deadline = Date.now() + BUDGET_MS;
  let response;
  for (let retries = 0; ; retries++) {
    const remaining = deadline - Date.now();
    response = http.post(`${BASE_URL}/orders`, BODY, {
      headers,
      timeout: `${Math.max(1, remaining)}ms`,
      // The body tells an outcome-unknown 500 from another (bodies are discarded otherwise).
      responseType: 'text',
    });
    const wait = retryAfterMs(response);
    if (wait === null || retries >= MAX_RETRIES || Date.now() + wait >= deadline) {
      break;
    }
    sleep(wait / 1000);
  }
  check(response, { 'order accepted (202)': (r) => r.status === 202 });
}
