// The command line as an operator meets it: `node dist/src/cli.js` spawned for
// real. Bad values exit 2 with a message naming the flag, the value and what
// is allowed; --help lists every flag; configuration from ANYTURN_* works; the
// process logs JSON lines, serves, and exits 0 on SIGTERM.

import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { TestTurnClient } from '../helpers/turn-client.js';
import { findFreeUdpPort } from '../helpers/anyturn-process.js';

/** dist/test/integration/cli.test.js -> dist/src/cli.js */
const CLI = fileURLToPath(new URL('../../src/cli.js', import.meta.url));
/** dist/test/integration/cli.test.js -> src/config/flags.ts (the source that defines the flags) */
const CLI_SOURCE = fileURLToPath(new URL('../../../src/config/flags.ts', import.meta.url));

// Deadlines only bound how long a broken process can hang the suite; no assertion is about speed.
const HANG_DEADLINE_MS = 15_000;

interface Spawned {
  readonly child: ChildProcess;
  stdout(): string;
  stderr(): string;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const running = new Set<ChildProcess>();

/** Spawns the CLI with a clean environment: no ANYTURN_* from the caller leaks in. */
function spawnCli(args: readonly string[], env: Record<string, string> = {}): Spawned {
  const base: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('ANYTURN_')) base[k] = v;
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...base, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (s: string) => (out += s));
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (err += s));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on('close', (code, signal) => {
      running.delete(child);
      resolve({ code, signal });
    });
  });
  const killer = setTimeout(() => child.kill('SIGKILL'), HANG_DEADLINE_MS);
  void exited.then(() => clearTimeout(killer));
  return { child, stdout: () => out, stderr: () => err, exited };
}

async function runCli(args: readonly string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const p = spawnCli(args, env);
  const { code } = await p.exited;
  return { code, stdout: p.stdout(), stderr: p.stderr() };
}

async function until<T>(probe: () => T | undefined, what: string, deadlineMs = HANG_DEADLINE_MS): Promise<T> {
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    const v = probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function jsonLines(text: string): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      out.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // not a log line
    }
  }
  return out;
}

// Safe defaults for the bad-value runs: if validation ever let one through, it would
// listen on loopback only, on an ephemeral port, with relay ports in this file's range.
const SAFE = ['--listening-ip', '127.0.0.1', '--min-port', '47000', '--max-port', '47999'];
const CREDS = ['--user', 'op:secret'];

describe('anyturn CLI', () => {
  after(() => {
    for (const child of running) child.kill('SIGKILL');
  });

  const bad: { name: string; args: string[]; env?: Record<string, string>; mentions: (string | RegExp)[] }[] = [
    { name: '--listening-port 70000', args: [...SAFE, ...CREDS, '--listening-port', '70000'], mentions: ['--listening-port', '70000', /0 to 65535/] },
    {
      name: '--min-port 60000 --max-port 50000',
      args: ['--listening-ip', '127.0.0.1', '--listening-port', '0', ...CREDS, '--min-port', '60000', '--max-port', '50000'],
      mentions: ['--min-port', '60000', '--max-port', '50000'],
    },
    {
      name: '--relay-ip not-an-ip',
      args: [...SAFE, '--listening-port', '0', ...CREDS, '--relay-ip', 'not-an-ip'],
      mentions: ['--relay-ip', 'not-an-ip', /IPv4 or IPv6 address/],
    },
    {
      name: '--allowed-peer-ip 10.0.0.1/8 (host bits set)',
      args: [...SAFE, '--listening-port', '0', ...CREDS, '--allowed-peer-ip', '10.0.0.1/8'],
      mentions: ['--allowed-peer-ip', '10.0.0.1/8', /bits are set/, '10.0.0.0/8'],
    },
    { name: '--user nocolon', args: [...SAFE, '--listening-port', '0', '--user', 'nocolon'], mentions: ['--user', 'nocolon', 'name:password'] },
    {
      name: '--log-level loud',
      args: [...SAFE, '--listening-port', '0', ...CREDS, '--log-level', 'loud'],
      mentions: ['log-level', 'loud', 'info', 'debug', 'silent'],
    },
    {
      name: 'ANYTURN_LISTENING_PORT=abc',
      args: [...SAFE, ...CREDS],
      env: { ANYTURN_LISTENING_PORT: 'abc' },
      mentions: ['listening-port', 'abc', /whole number/],
    },
    { name: 'no credentials at all', args: [...SAFE, '--listening-port', '0'], mentions: ['--user', /never an open relay/] },
    { name: '--workers 65', args: [...SAFE, '--listening-port', '0', ...CREDS, '--workers', '65'], mentions: ['--workers', '65', /1 to 64/, "'auto'"] },
    {
      name: 'ANYTURN_WORKERS=abc',
      args: [...SAFE, '--listening-port', '0', ...CREDS],
      env: { ANYTURN_WORKERS: 'abc' },
      mentions: ['--workers', 'abc', /not a number/, "'auto'"],
    },
    {
      name: '--workers 3 with 2 relay ports',
      args: ['--listening-ip', '127.0.0.1', '--listening-port', '0', ...CREDS, '--min-port', '47000', '--max-port', '47001', '--workers', '3'],
      mentions: ['--workers 3', '--min-port 47000', '--max-port 47001', /at most the number of relay ports/],
    },
    { name: 'an unknown flag', args: [...SAFE, '--listening-port', '0', ...CREDS, '--bogus-flag', '1'], mentions: ['bogus-flag', /--help/] },
  ];
  for (const c of bad) {
    it(`exits 2 with a message naming flag, value and what is allowed: ${c.name}`, async () => {
      const r = await runCli(c.args, c.env);
      assert.equal(r.code, 2, `exit code (stderr: ${r.stderr})`);
      for (const m of c.mentions) {
        if (typeof m === 'string') assert.ok(r.stderr.includes(m), `stderr mentions ${JSON.stringify(m)}: ${r.stderr}`);
        else assert.match(r.stderr, m);
      }
      assert.ok(!r.stdout.includes('anyturn ready'), 'never started');
    });
  }

  it('--help exits 0 and lists every flag defined in src/config/flags.ts', async () => {
    const source = readFileSync(CLI_SOURCE, 'utf8');
    const flags = [...source.matchAll(/^ {2}'?([a-z0-9-]+)'?: \{ (?:group|hidden):/gm)].map((m) => m[1]!);
    assert.ok(flags.length >= 20, `found ${flags.length} flags in ${CLI_SOURCE}`);
    const r = await runCli(['--help']);
    assert.equal(r.code, 0);
    for (const flag of [...flags, 'help', 'version']) assert.ok(r.stdout.includes(`--${flag}`), `--help lists --${flag}`);
    assert.match(r.stdout, /ANYTURN_/, 'the help explains the environment variables');
  });

  it('runs from ANYTURN_* variables: logs ready, answers, logs allocations, exits 0 on SIGTERM', async () => {
    const port = await findFreeUdpPort();
    const realm = 'env.realm.test';
    const p = spawnCli([], {
      ANYTURN_USER: 'envuser:envpass',
      ANYTURN_LISTENING_IP: '127.0.0.1',
      ANYTURN_LISTENING_PORT: String(port),
      ANYTURN_METRICS_PORT: '0',
      ANYTURN_MIN_PORT: '47000',
      ANYTURN_MAX_PORT: '47999',
      ANYTURN_REALM: realm,
      ANYTURN_NODE_ID: 'cli-test-node',
    });
    const clients: TestTurnClient[] = [];
    try {
      const ready = await until(() => jsonLines(p.stdout()).find((l) => l.msg === 'anyturn ready'), `"anyturn ready" (stderr: ${p.stderr()})`);
      assert.ok(p.stdout().includes('"msg":"anyturn ready"'));
      // UDP and TCP on the same port number (RFC 8656 §3.1); no TLS without --cert/--pkey.
      assert.deepEqual(ready.listening, [
        { transport: 'udp', address: '127.0.0.1', port },
        { transport: 'tcp', address: '127.0.0.1', port },
      ]);
      assert.equal(ready.realm, realm);
      assert.equal(ready.nodeId, 'cli-test-node');
      assert.equal(ready.ports, '47000-47999');

      const server = { address: '127.0.0.1', port };
      const client = await TestTurnClient.open(server, { username: 'envuser', password: 'envpass', realm });
      clients.push(client);
      assert.deepEqual(await client.binding(), { address: '127.0.0.1', port: client.localPort });

      const allocated = await client.allocate();
      assert.equal(allocated.response.code, 200);
      const relayed = allocated.relayed!;
      assert.ok(relayed.port >= 47000 && relayed.port <= 47999);
      const clientText = `127.0.0.1:${client.localPort}`;
      const relayedText = `127.0.0.1:${relayed.port}`;
      const created = await until(() => jsonLines(p.stdout()).find((l) => l.event === 'allocation_created' && l.client === clientText), 'allocation_created');
      assert.equal(created.relayed, relayedText);
      assert.equal(created.user, 'envuser');

      assert.equal((await client.refresh(0)).code, 200);
      const deleted = await until(() => jsonLines(p.stdout()).find((l) => l.event === 'allocation_deleted' && l.client === clientText), 'allocation_deleted');
      assert.equal(deleted.relayed, relayedText);
      assert.equal(deleted.user, 'envuser');
      assert.equal(typeof deleted.reason, 'string');
      assert.ok((deleted.reason as string).length > 0);

      // An allocation alive at SIGTERM is deleted (and logged) on the way out.
      const second = await TestTurnClient.open(server, { username: 'envuser', password: 'envpass', realm });
      clients.push(second);
      assert.equal((await second.allocate()).response.code, 200);
      const secondText = `127.0.0.1:${second.localPort}`;
      await until(() => jsonLines(p.stdout()).find((l) => l.event === 'allocation_created' && l.client === secondText), 'second allocation_created');

      p.child.kill('SIGTERM');
      const exit = await p.exited;
      assert.deepEqual(exit, { code: 0, signal: null }, `exit status (stderr: ${p.stderr()})`);
      const lines = jsonLines(p.stdout());
      const shutdown = lines.find((l) => l.event === 'allocation_deleted' && l.client === secondText);
      assert.ok(shutdown, 'the live allocation was deleted on shutdown');
      assert.equal(shutdown.user, 'envuser');
      assert.equal(typeof shutdown.reason, 'string');
      assert.ok(lines.some((l) => l.msg === 'anyturn stopped'));
      // Every line on stdout is JSON.
      const nonJson = p
        .stdout()
        .split('\n')
        .filter((l) => l.trim() && jsonLines(l).length === 0);
      assert.deepEqual(nonJson, []);
      assert.equal(p.stderr(), '');
    } finally {
      for (const c of clients) c.close();
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    }
  });

  it('repeatable address flags take a comma-separated list from the environment; a user entry is not split', async () => {
    const port = await findFreeUdpPort();
    const p = spawnCli([], {
      // The epilogue promises lists for address flags only: a password may contain ','.
      ANYTURN_USER: 'listy:one,two',
      ANYTURN_LISTENING_IP: '127.0.0.1',
      ANYTURN_LISTENING_PORT: String(port),
      ANYTURN_MIN_PORT: '47000',
      ANYTURN_MAX_PORT: '47999',
      ANYTURN_DENIED_PEER_IP: '8.8.8.0/24, 1.1.1.0/24',
      ANYTURN_LOG_LEVEL: 'warn',
    });
    const client = await TestTurnClient.open({ address: '127.0.0.1', port }, { username: 'listy', password: 'one,two', realm: 'anyturn' });
    try {
      // No "ready" line at warn level: the first answered Binding says it is up.
      let answered: Awaited<ReturnType<typeof client.binding>>;
      for (let i = 0; i < 50 && !answered && p.child.exitCode === null; i++) answered = await client.binding(300);
      assert.ok(answered, `the server answers (stderr: ${p.stderr()})`);
      assert.equal((await client.allocate()).response.code, 200, 'password "one,two" works');
      // Addresses below are XOR-PEER-ADDRESS data only: a permission sends nothing.
      assert.equal((await client.createPermission({ address: '8.8.8.8', port: 53 })).code, 403);
      assert.equal((await client.createPermission({ address: '1.1.1.1', port: 53 })).code, 403);
      assert.equal((await client.createPermission({ address: '9.9.9.9', port: 53 })).code, 200);
      assert.equal((await client.refresh(0)).code, 200);
      p.child.kill('SIGTERM');
      assert.equal((await p.exited).code, 0);
      assert.ok(!p.stdout().includes('anyturn ready'), 'info lines are off at --log-level warn');
    } finally {
      client.close();
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    }
  });
});
