// A minimal Node.js (18+) client of `intercept-sdk agent`: check, block, report.
// Usage: node agent-client.mjs http://127.0.0.1:8471/ <id_number> <measure> [entry_id]
// Prints one JSON object with what each call answered. Keep-alive is Node's default.
const [base, idNumber, measure, entryId] = process.argv.slice(2);
const token = process.env.INTERCEPT_AGENT_TOKEN;

async function post(path, body) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(new URL(path, base), {
    method: "POST",
    headers,
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

const subject = { id_number: idNumber };
const check = await post("/v1/check", { measure, subject });
const block = await post("/v1/block", { measure, subject, context: { room: "1808" } });
const out = { check, block };
if (entryId) {
  out.report = await post("/v1/report", {
    kind: "objection",
    entry_id: entryId,
    details: { grounds: "客人申请复核" },
  });
}
console.log(JSON.stringify(out));
