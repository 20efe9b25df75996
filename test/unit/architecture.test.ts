// The rules of docs/architecture.md §1, checked over the TypeScript sources: every import of
// a file in src/ must be allowed for the layer the file lives in (a new import across layers
// fails here first: change docs/architecture.md and RULES together), and no file or function
// outgrows one concept.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const SRC = path.join(ROOT, 'src');

/**
 * Layer -> what its files may import (paths relative to src/, a trailing '/' for a folder).
 * A layer may always import its own files. Packages and node: modules are listed where
 * a layer must stay free of them (FORBIDDEN_PACKAGES).
 */
const RULES: Record<string, readonly string[]> = {
  'net/': [],
  'keys.ts': [],
  'stun/': ['net/'],
  'turn/': ['net/', 'stun/', 'store/types.ts', 'keys.ts'],
  'store/': ['net/', 'stun/'],
  'transport/': ['net/', 'stun/', 'turn/ports.ts', 'turn/counters.ts', 'turn/auth/rate-limit.ts'],
  'cluster/': ['net/', 'stun/', 'keys.ts', 'store/types.ts', 'transport/', 'turn/ports.ts', 'turn/counters.ts', 'turn/clock.ts', 'turn/auth/rate-limit.ts'],
  'ops/': [
    'net/',
    'turn/ports.ts',
    'turn/counters.ts',
    'store/types.ts',
    'transport/counters.ts',
    'transport/stream/framer.ts',
    'transport/udp/',
    'cluster/counters.ts',
    'config/',
    'dataplane/open.ts',
  ],
  'dataplane/': ['net/', 'turn/ports.ts', 'turn/counters.ts'],
  'config/': ['net/', 'turn/limits.ts', 'turn/admission.ts', 'store/shared.ts', 'transport/counters.ts', 'ops/log.ts'],
};

/** Layers that must never touch a socket, Redis or the process: the pure codec and the engine. */
const PURE = ['node:dgram', 'node:net', 'node:tls', 'node:http', 'ioredis', 'pino', 'prom-client'];
const FORBIDDEN_PACKAGES: Record<string, readonly string[]> = {
  'net/': PURE,
  'stun/': PURE,
  'turn/': PURE,
  'config/': ['node:dgram', 'node:net', 'ioredis'],
  'dataplane/': ['ioredis', 'pino', 'prom-client'],
};

/** docs/architecture.md: one concept per file. */
const MAX_FILE_LINES = 400;
const MAX_FUNCTION_LINES = 80;

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const full = path.join(dir, name);
    if (statSync(full).isDirectory()) out.push(...sourceFiles(full));
    else if (name.endsWith('.ts')) out.push(full);
  }
  return out;
}

function layerOf(relative: string): string | undefined {
  return Object.keys(RULES).find((layer) => (layer.endsWith('/') ? relative.startsWith(layer) : relative === layer));
}

/** Every module specifier a file imports or re-exports (static and dynamic). */
function specifiers(text: string): string[] {
  const out: string[] = [];
  for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)\s[^;]*?from\s+'([^']+)'/g)) out.push(m[1]!);
  for (const m of text.matchAll(/(?:^|\n)\s*import\s+'([^']+)'/g)) out.push(m[1]!);
  for (const m of text.matchAll(/import\(\s*'([^']+)'\s*\)/g)) out.push(m[1]!);
  return out;
}

function violations(): string[] {
  const found: string[] = [];
  for (const file of sourceFiles(SRC)) {
    const relative = path.relative(SRC, file).split(path.sep).join('/');
    const layer = layerOf(relative);
    if (layer === undefined) continue; // the composition root (server, cli, workers) may import anything
    const allowed = RULES[layer]!;
    for (const spec of specifiers(readFileSync(file, 'utf8'))) {
      if (!spec.startsWith('.')) {
        if (FORBIDDEN_PACKAGES[layer]?.includes(spec)) found.push(`${relative} imports ${spec}`);
        continue;
      }
      const target = path
        .relative(SRC, path.resolve(path.dirname(file), spec))
        .split(path.sep)
        .join('/')
        .replace(/\.js$/, '.ts');
      const ok = layerOf(target) === layer || allowed.some((a) => (a.endsWith('/') ? target.startsWith(a) : target === a));
      if (!ok) found.push(`${relative} imports ${target}`);
    }
  }
  return found;
}

/** Files over MAX_FILE_LINES and functions (of any kind, methods included) over MAX_FUNCTION_LINES. */
function oversized(): string[] {
  const found: string[] = [];
  for (const file of sourceFiles(SRC)) {
    const relative = path.relative(SRC, file).split(path.sep).join('/');
    const text = readFileSync(file, 'utf8');
    const lines = text.split('\n').length;
    if (lines > MAX_FILE_LINES) found.push(`${relative}: ${lines} lines`);
    const source = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true);
    const visit = (node: ts.Node): void => {
      if (ts.isFunctionLike(node) && 'body' in node && node.body !== undefined) {
        const first = source.getLineAndCharacterOfPosition(node.getStart()).line;
        const last = source.getLineAndCharacterOfPosition(node.end).line;
        if (last - first + 1 > MAX_FUNCTION_LINES) found.push(`${relative}:${first + 1}: a function of ${last - first + 1} lines`);
      }
      ts.forEachChild(node, visit);
    };
    visit(source);
  }
  return found;
}

describe('import rules (docs/architecture.md)', () => {
  it('every import in src/ crosses layers only where the rules allow', () => {
    assert.deepEqual(violations(), []);
  });

  it(`no file in src/ over ${MAX_FILE_LINES} lines, no function over ${MAX_FUNCTION_LINES}`, () => {
    assert.deepEqual(oversized(), []);
  });

  it('finds imports at all (the check cannot pass by reading nothing)', () => {
    const stun = sourceFiles(path.join(SRC, 'stun'));
    assert.ok(stun.length > 3);
    assert.ok(stun.some((f) => specifiers(readFileSync(f, 'utf8')).some((s) => s.startsWith('./'))));
    assert.ok(layerOf('turn/engine.ts') === 'turn/' && layerOf('server.ts') === undefined);
  });
});
