// Drive a real MCP server with the official TypeScript SDK client, the way MCP hosts do.
//
//   node tests/interop/driver.mjs < plan.json > outcome.json
//
// The plan (JSON on stdin):
//   {
//     "deadlineMs": 60000,                       // the whole run; what is unfinished then is recorded as such
//     "sessions": {                              // opened on first use: connect, then tools/list (as hosts do)
//       "alice": {"transport": "streamable-http", "url": "http://127.0.0.1:P/mcp", "headers": {...}},
//       "bob":   {"transport": "sse", "url": "http://127.0.0.1:P/sse", "headers": {...}},
//       "carol": {"transport": "stdio", "command": "/abs/mcp-locks", "args": ["stdio"], "env": {...}},
//       "dave":  {"alias": "carol"}              // the same connection under another name
//     },
//     "groups": [{"name": "...", "steps": [step, ...]}, ...]   // run one after the other
//   }
//
// A step is {"op": ..., "session": "alice", ...}:
//   connect                                    open the session now (connect + tools/list)
//   listTools | listResources | listResourceTemplates
//   readResource {uri}
//   subscribe {uri}                            resources/subscribe; updates are collected from now on
//   waitUpdate {uri}                           until a notifications/resources/updated for uri arrives
//   callTool {name, arguments, progress?, cancelAfterProgress?, until?, untilMs?}
//                                              `until` (a path, see `save`) repeats the call every 50 ms
//                                              until the path resolves to a non-null value, or with a leading
//                                              "!" to null (at most untilMs, 200 times)
//   sleep {ms}
//   join {label}                               wait for a step started with "async": label
// Any step may carry "tag" (copied to its record), "timeoutMs" (default 15000), "async": "label" (run it in
// the background; its record comes with the join) and "save": {"var": "structuredContent.locks.0.token"} (a
// path into the result); strings "${var}" in later arguments or URIs of the same group become the saved value.
// A call cancelled by cancelAfterProgress is recorded with "cancelled": true and the error the SDK threw.
//
// The outcome (ONE JSON document on stdout):
//   {"groups": {"<name>": [record, ...]}, "sessions": {"<name>": {"connected": bool, "stderr": "..."}},
//    "fatal"?: {...}}                          // "fatal" only if the run was cut short
// with one record per step: {"op", "session", "name"?, "ms", "ok": true, "result": {...}, "progress": [...]}
// or {"ok": false, "error": {"name", "code", "message"}}. A tool result is recorded as
// {"isError", "text" (content[0].text), "structuredContent", "_meta"}.
//
// The client's own behaviour is what is tested: callTool validates structuredContent against the tool's
// outputSchema (cached by tools/list, which every host calls first), exactly as hosts built on this SDK do.
// Nothing here waits without a bound: every step has a timeout, the run has a deadline, and the process
// exits by itself (closing every transport, which ends the stdio servers it started).

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ResourceUpdatedNotificationSchema } from '@modelcontextprotocol/sdk/types.js';

const DEFAULT_STEP_MS = 15000;
const started = Date.now();

function readStdin() {
  return new Promise((resolve, reject) => {
    let data = '';
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', (chunk) => { data += chunk; });
    process.stdin.on('end', () => resolve(data));
    process.stdin.on('error', reject);
  });
}

function describeError(e) {
  if (e === undefined || e === null) return { name: 'Error', code: null, message: String(e) };
  if (typeof e !== 'object') return { name: typeof e, code: null, message: String(e) };
  const out = { name: e.name ?? e.constructor?.name ?? 'Error', code: e.code ?? null, message: String(e.message ?? e) };
  if (e.data !== undefined) out.data = e.data;
  if (e.cause) out.cause = String(e.cause?.message ?? e.cause);
  return out;
}

function withTimeout(promise, ms, what) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => {
      const e = new Error(`${what}: no answer within ${ms} ms (driver step timeout)`);
      e.name = 'DriverTimeout';
      reject(e);
    }, ms);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function lookup(value, path) {
  let cur = value;
  for (const part of path.split('.')) {
    if (cur === undefined || cur === null) return undefined;
    cur = cur[/^\d+$/.test(part) ? Number(part) : part];
  }
  return cur;
}

// `until: "path"` holds once the path resolves to a non-null value; `until: "!path"` once it resolves to null.
function untilMet(result, until) {
  return until.startsWith('!') ? lookup(result, until.slice(1)) == null : lookup(result, until) != null;
}

function substitute(value, vars) {
  if (typeof value === 'string') {
    const whole = /^\$\{([A-Za-z0-9_]+)\}$/.exec(value);
    if (whole) return vars[whole[1]];
    return value.replace(/\$\{([A-Za-z0-9_]+)\}/g, (_, k) => String(vars[k]));
  }
  if (Array.isArray(value)) return value.map((v) => substitute(v, vars));
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, substitute(v, vars)]));
  }
  return value;
}

function toolResult(r) {
  const first = Array.isArray(r.content) && r.content.length ? r.content[0] : null;
  return {
    isError: r.isError === true,
    text: first && first.type === 'text' ? first.text : null,
    structuredContent: r.structuredContent ?? null,
    _meta: r._meta ?? null,
  };
}

// ------------------------------------------------------------------ sessions

class Session {
  constructor(name, spec) {
    this.name = name;
    this.spec = spec;
    this.client = null;
    this.connecting = null;
    this.updates = []; // URIs of notifications/resources/updated, in arrival order
    this.waiters = [];
    this.stderr = '';
    this.transport = null;
  }

  makeTransport() {
    const s = this.spec;
    const headers = s.headers ?? {};
    if (s.transport === 'streamable-http') {
      return new StreamableHTTPClientTransport(new URL(s.url), { requestInit: { headers } });
    }
    if (s.transport === 'sse') {
      // Headers on the POSTs (requestInit) and on the event stream's GET (eventSourceInit.fetch).
      const sseFetch = (url, init) => {
        const h = new Headers(init?.headers);
        for (const [k, v] of Object.entries(headers)) h.set(k, v);
        return fetch(url, { ...init, headers: h });
      };
      return new SSEClientTransport(new URL(s.url), { requestInit: { headers }, eventSourceInit: { fetch: sseFetch } });
    }
    if (s.transport === 'stdio') {
      const t = new StdioClientTransport({
        command: s.command, args: s.args ?? [], env: s.env, cwd: s.cwd, stderr: 'pipe',
      });
      return t;
    }
    throw new Error(`unknown transport ${s.transport}`);
  }

  async open(timeoutMs) {
    if (this.client) return this.client;
    if (!this.connecting) {
      this.connecting = (async () => {
        const client = new Client({ name: 'mcp-locks-interop-ts', version: '0.0.0' }, { capabilities: {} });
        client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => {
          this.updates.push(n.params.uri);
          for (const w of this.waiters.splice(0)) w();
        });
        const transport = this.makeTransport();
        this.transport = transport;
        if (transport instanceof StdioClientTransport && transport.stderr) {
          transport.stderr.setEncoding('utf8');
          transport.stderr.on('data', (d) => { this.stderr = (this.stderr + d).slice(-4000); });
        }
        await client.connect(transport, { timeout: timeoutMs });
        // As hosts do: list the tools right away (this also caches their output-schema validators).
        await client.listTools(undefined, { timeout: timeoutMs });
        this.client = client;
        return client;
      })();
    }
    return this.connecting;
  }

  async close() {
    try {
      if (this.client) await withTimeout(this.client.close(), 3000, 'close');
      else if (this.transport) await withTimeout(this.transport.close(), 3000, 'close');
    } catch {
      // closing is best effort; the process exits anyway
    }
  }

  updateArrived(uri, since) {
    return this.updates.slice(since).includes(uri);
  }
}

// ------------------------------------------------------------------ steps

async function runStep(step, sessions, vars, stepsCtx) {
  const rec = { op: step.op, session: step.session ?? null };
  if (step.name) rec.name = step.name;
  if (step.tag) rec.tag = step.tag;
  const t0 = Date.now();
  const timeoutMs = step.timeoutMs ?? DEFAULT_STEP_MS;
  try {
    if (step.op === 'sleep') {
      await sleep(step.ms);
      rec.ok = true;
      return rec;
    }
    if (step.op === 'join') {
      const inner = stepsCtx.background.get(step.label);
      if (!inner) throw new Error(`no async step labelled ${step.label}`);
      const r = await withTimeout(inner, timeoutMs, `join ${step.label}`);
      return { ...r, joined: step.label };
    }
    const session = sessions.get(step.session);
    if (!session) throw new Error(`no session named ${step.session}`);
    const client = await withTimeout(session.open(timeoutMs), timeoutMs, `connect ${step.session}`);
    const opts = { timeout: timeoutMs };
    switch (step.op) {
      case 'connect':
        rec.result = { serverVersion: client.getServerVersion() ?? null, instructions: !!client.getInstructions() };
        break;
      case 'listTools': {
        const r = await client.listTools(undefined, opts);
        rec.result = {
          tools: r.tools.map((t) => ({ name: t.name, inputSchema: t.inputSchema ?? null, outputSchema: t.outputSchema ?? null })),
        };
        break;
      }
      case 'listResources':
        rec.result = await client.listResources(undefined, opts);
        break;
      case 'listResourceTemplates':
        rec.result = await client.listResourceTemplates(undefined, opts);
        break;
      case 'readResource':
        rec.result = await client.readResource({ uri: substitute(step.uri, vars) }, opts);
        break;
      case 'subscribe': {
        const uri = substitute(step.uri, vars);
        stepsCtx.subscribedAt.set(`${step.session} ${uri}`, session.updates.length);
        rec.result = await client.subscribeResource({ uri }, opts);
        break;
      }
      case 'waitUpdate': {
        const uri = substitute(step.uri, vars);
        const since = stepsCtx.subscribedAt.get(`${step.session} ${uri}`) ?? 0;
        const deadline = Date.now() + timeoutMs;
        while (!session.updateArrived(uri, since)) {
          const left = deadline - Date.now();
          if (left <= 0) {
            const e = new Error(`no notifications/resources/updated for ${uri} within ${timeoutMs} ms`);
            e.name = 'DriverTimeout';
            throw e;
          }
          await new Promise((resolve) => {
            const t = setTimeout(resolve, Math.min(left, 200));
            session.waiters.push(() => { clearTimeout(t); resolve(); });
          });
        }
        rec.result = { uri, updates: session.updates.slice(since) };
        break;
      }
      case 'callTool': {
        const args = substitute(step.arguments ?? {}, vars);
        const progress = [];
        const controller = new AbortController();
        const callOpts = { ...opts, signal: controller.signal };
        if (step.progress || step.cancelAfterProgress) {
          rec.progress = progress; // kept when the call throws (a cancelled call does)
          callOpts.onprogress = (p) => {
            progress.push({ progress: p.progress, total: p.total ?? null, message: p.message ?? null, atMs: Date.now() - t0 });
            if (step.cancelAfterProgress && !controller.signal.aborted) {
              rec.cancelled = true;
              controller.abort('cancelled by the interop test');
            }
          };
        }
        const untilDeadline = Date.now() + (step.untilMs ?? 0);
        let attempts = 0;
        for (;;) {
          attempts += 1;
          const r = await withTimeout(client.callTool({ name: step.name, arguments: args }, undefined, callOpts), timeoutMs + 1000, `tools/call ${step.name}`);
          rec.result = toolResult(r);
          if (!step.until || untilMet(rec.result, step.until) || Date.now() >= untilDeadline || attempts >= 200) break;
          await sleep(50);
        }
        if (step.until) rec.attempts = attempts;
        if (step.save) {
          for (const [k, path] of Object.entries(step.save)) vars[k] = lookup(rec.result, path);
        }
        break;
      }
      default:
        throw new Error(`unknown op ${step.op}`);
    }
    rec.ok = true;
  } catch (e) {
    rec.ok = false;
    rec.error = describeError(e);
    if (rec.cancelled) rec.error = { ...rec.error, name: rec.error.name === 'string' ? 'Cancelled' : rec.error.name };
  } finally {
    rec.ms = Date.now() - t0;
  }
  return rec;
}

async function runGroup(group, sessions, deadline, records) {
  const vars = {};
  const ctx = { background: new Map(), subscribedAt: new Map() };
  for (const step of group.steps) {
    if (Date.now() > deadline) {
      records.push({ op: step.op, session: step.session ?? null, ok: false, error: { name: 'DriverDeadline', code: null, message: 'the run deadline passed before this step' } });
      continue;
    }
    if (step.async) {
      const p = runStep(step, sessions, vars, ctx);
      ctx.background.set(step.async, p);
      records.push({ op: step.op, session: step.session ?? null, name: step.name, ok: true, started: step.async });
      continue;
    }
    records.push(await runStep(step, sessions, vars, ctx));
  }
  // Background steps nobody joined still finish (bounded by their own timeouts) before the group ends.
  await Promise.allSettled([...ctx.background.values()]);
  return records;
}

async function main() {
  let plan;
  try {
    plan = JSON.parse(await readStdin());
  } catch (e) {
    await emit({ fatal: describeError(e) });
    return 2;
  }
  const deadline = started + (plan.deadlineMs ?? 60000);
  const sessions = new Map();
  for (const [name, spec] of Object.entries(plan.sessions ?? {})) {
    if (!spec.alias) sessions.set(name, new Session(name, spec));
  }
  for (const [name, spec] of Object.entries(plan.sessions ?? {})) {
    if (spec.alias) sessions.set(name, sessions.get(spec.alias));
  }
  const out = { groups: {}, sessions: {} };
  // A hard stop: if anything still hangs past the deadline (+ grace), print what we have and leave.
  const hardStop = setTimeout(() => {
    out.fatal = { name: 'DriverDeadline', code: null, message: 'the run deadline passed; the driver stopped' };
    for (const s of sessions.values()) {
      const pid = s.transport instanceof StdioClientTransport ? s.transport.pid : null;
      if (pid) {
        try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
      }
    }
    process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(3));
  }, Math.max(1000, deadline - Date.now() + 5000));
  for (const group of plan.groups ?? []) {
    out.groups[group.name] = [];  // filled as the steps end, so a hard stop still shows how far it got
    await runGroup(group, sessions, deadline, out.groups[group.name]);
  }
  const unique = [...new Set(sessions.values())];
  await Promise.allSettled(unique.map((s) => s.close()));
  for (const [name, s] of sessions) out.sessions[name] = { connected: s.client !== null, stderr: s.stderr };
  clearTimeout(hardStop);
  await emit(out);
  return 0;
}

function emit(doc) {
  return new Promise((resolve) => process.stdout.write(JSON.stringify(doc) + '\n', resolve));
}

main().then(
  (code) => process.exit(code),
  (e) => emit({ fatal: describeError(e) }).then(() => process.exit(1)),
);
