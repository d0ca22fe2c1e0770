// Conformance with an independent implementation (issue 13): unmodified Baileys 7 as a
// WhatsApp-side user of the simulator over its WebSocket chat listener, and interop-client as a
// Partner user behind the proxy (interop-local), all release binaries on loopback. Run by conformance/run.sh.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { createInterface } from 'node:readline';
import { createRequire } from 'node:module';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';

const NM = process.env.CONFORMANCE_NODE_MODULES;
const BIN = process.env.CONFORMANCE_BIN;
assert.ok(NM && BIN, 'run through conformance/run.sh');
const require = createRequire(join(NM, 'noop.js'));
const pino = require('pino');
const B = await import(pathToFileURL(join(NM, '@whiskeysockets/baileys/lib/index.js')).href);
const makeWASocket = B.default?.default ?? B.default ?? B.makeWASocket;

const run = promisify(execFile);
const PHONE = '15557770001';
const DEVICE = 2;
const dir = mkdtempSync(join(tmpdir(), 'conformance-'));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const b64 = (buf) => Buffer.from(buf).toString('base64url');

let proxy;
let banner;
let sock;
let alice;
const rawMessages = [];
const rawReceipts = [];
// What Baileys sent, for its `getMessage` (a retry receipt asks it to re-send).
const sentMessages = new Map();

async function client(...args) {
  const { stdout } = await run(join(BIN, 'interop-client'), ['--state', join(dir, 'alice'), ...args], {
    env: { ...process.env, RUST_LOG: 'warn' },
    timeout: 60_000,
  });
  return stdout;
}

// `interop-client listen` for `secs` seconds; `out.text` grows with what it prints.
function listenFor(secs) {
  const listen = spawn(join(BIN, 'interop-client'), ['--state', join(dir, 'alice'), '--proxy', banner.tcp, 'listen', '--for', String(secs)], {
    env: { ...process.env, RUST_LOG: 'warn' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const out = { text: '' };
  listen.stdout.on('data', (d) => { out.text += d; });
  return { listen, out };
}

async function until(what, check, ms = 20_000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

// The simulator's admin API is HTTPS with a certificate from the proxy's local CA (in its
// banner); Node's fetch cannot be given a CA after start, so node:https is.
function adminRequest(path, { method = 'GET', body } = {}) {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      `${banner.http}${path}`,
      { method, ca: readFileSync(banner.ca), headers: body ? { 'content-type': 'application/json' } : {} },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode, text }));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

async function mailbox(jid) {
  const res = await adminRequest(`/admin/accounts/${jid}/mailbox`);
  return JSON.parse(res.text).entries;
}

before(async () => {
  // The embedded default on ephemeral loopback ports; its banner ends with `serving`.
  proxy = spawn(join(BIN, 'interop-local'), ['--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0'], {
    env: { ...process.env, RUST_LOG: 'warn' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  banner = {};
  for await (const line of createInterface({ input: proxy.stdout })) {
    let m;
    if ((m = line.match(/^clients connect to {3}tcp:\/\/(\S+)/))) banner.tcp = m[1];
    if ((m = line.match(/^embedded chatd-sim .* https (\S+)/))) banner.http = m[1];
    if ((m = line.match(/^local CA +(\S+)/))) banner.ca = m[1];
    if ((m = line.match(/^embedded partner +(\S+)/))) banner.partner = m[1];
    if ((m = line.match(/^whatsapp web clients (ws:\/\/\S+)/))) banner.ws = m[1];
    if (line === 'serving') break;
  }
  assert.ok(banner.tcp && banner.http && banner.partner && banner.ws && banner.ca, JSON.stringify(banner));

  // The Partner user: enlisted, logged in through the proxy (publishes its prekeys).
  const enlisted = await client('--ca-file', banner.ca, 'enlist', '--user', 'conformance-alice', '--partner', banner.partner, '--chatd', banner.http);
  alice = enlisted.match(/enlisted: (\S+)/)[1];
  await client('--proxy', banner.tcp, 'login');

  // The WhatsApp-side user: Baileys' own fresh keys, provisioned as a phone would register.
  const { state, saveCreds } = await B.useMultiFileAuthState(join(dir, 'baileys'));
  Object.assign(state.creds, B.initAuthCreds(), { me: { id: `${PHONE}:${DEVICE}@s.whatsapp.net` }, registered: true });
  const c = state.creds;
  const res = await adminRequest('/admin/wa-users', {
    method: 'POST',
    body: JSON.stringify({
      phone: Number(PHONE),
      device: DEVICE,
      noise_public: b64(c.noiseKey.public),
      registration_id: c.registrationId,
      identity: b64(c.signedIdentityKey.public),
      signed_prekey: { id: c.signedPreKey.keyId, public: b64(c.signedPreKey.keyPair.public), signature: b64(c.signedPreKey.signature) },
    }),
  });
  assert.equal(res.status, 200, res.text);
  await saveCreds();
  sock = makeWASocket({
    waWebSocketUrl: `${banner.ws}`,
    auth: state,
    logger: pino({ level: process.env.BAILEYS_LOG ?? 'silent' }),
    markOnlineOnConnect: false,
    getMessage: async (key) => sentMessages.get(key.id),
    syncFullHistory: false,
  });
  sock.ev.on('creds.update', saveCreds);
  sock.ws.on('CB:message', (node) => rawMessages.push(node));
  sock.ws.on('CB:receipt', (node) => rawReceipts.push(node));
  await new Promise((resolve, reject) => {
    sock.ev.on('connection.update', (u) => {
      if (u.connection === 'open') resolve();
      if (u.connection === 'close') reject(new Error(`Baileys closed: ${u.lastDisconnect?.error}`));
    });
  });
});

after(() => {
  sock?.end?.(undefined);
  proxy?.kill('SIGTERM');
  rmSync(dir, { recursive: true, force: true });
});

test('Baileys logs in over the simulator WebSocket and stays connected', async () => {
  let closed = false;
  sock.ev.on('connection.update', (u) => { if (u.connection === 'close') closed = true; });
  await sleep(3000);
  assert.equal(closed, false);
});

test('privacy settings: Baileys reads every category, and its own change reads back', async () => {
  const before = await sock.fetchPrivacySettings(true);
  for (const name of ['last', 'online', 'profile', 'status', 'readreceipts', 'groupadd', 'calladd', 'messages']) {
    assert.equal(typeof before[name], 'string', `category ${name} in ${JSON.stringify(before)}`);
  }
  await sock.updateReadReceiptsPrivacy('none');
  await sock.updateLastSeenPrivacy('contacts');
  const after = await sock.fetchPrivacySettings(true);
  assert.equal(after.readreceipts, 'none');
  assert.equal(after.last, 'contacts');
  assert.equal(after.online, before.online);
  await sock.updateReadReceiptsPrivacy('all');
});

test('interop-client -> Baileys: decrypted by Baileys\' own Signal code', async () => {
  const text = 'hello Baileys, from a Partner app';
  await client('--proxy', banner.tcp, 'send', text, '--to', `${PHONE}@s.whatsapp.net`);
  const node = await until('the message at Baileys', () => rawMessages.find((n) => String(n.attrs.from).endsWith('@interop')));
  const enc = node.content.find((c) => c.tag === 'enc');
  assert.ok(enc, 'an <enc> child');
  // Baileys 7 routes no `@interop` sender (decodeMessageNode refuses it), so the check is at the
  // Signal level: its repository decrypts the ciphertext, the plaintext is a padded waE2E.Message.
  const plain = await sock.signalRepository.decryptMessage({ jid: node.attrs.from, type: enc.attrs.type, ciphertext: enc.content });
  const msg = B.proto.Message.decode(B.unpadRandomMax16(plain));
  assert.equal(msg.conversation || msg.extendedTextMessage?.text, text);
});

test('Baileys -> interop-client: shown, delivery receipt back, mailboxes empty', async () => {
  const { listen, out } = listenFor(30);
  try {
    await sleep(1500);
    const text = 'hello Partner, from Baileys';
    const sent = await sock.sendMessage(alice, { text });
    await until('the text at interop-client', () => out.text.includes(`${PHONE}@s.whatsapp.net: ${text}`));
    await until('the delivery receipt at Baileys', () => rawReceipts.find((r) => r.attrs.id === sent.key.id && !r.attrs.type));
    await until('alice\'s mailbox empty', async () => (await mailbox(alice)) === 0);
    await until('Baileys\' mailbox empty', async () => (await mailbox(`${PHONE}@s.whatsapp.net`)) === 0);
  } finally {
    listen.kill('SIGTERM');
  }
});

test('Baileys -> interop-client while it is offline: arrives once at the next login, marked offline', async () => {
  const text = 'sent while you were away, from Baileys';
  await sock.sendMessage(alice, { text });
  await until('the message queued for alice', async () => (await mailbox(alice)) >= 1);
  const { listen, out } = listenFor(30);
  try {
    const line = `${PHONE}@s.whatsapp.net: ${text} (sent while you were away)`;
    await until('the queued text at interop-client', () => out.text.includes(line));
    await until('alice\'s mailbox empty', async () => (await mailbox(alice)) === 0);
    await sleep(1000);
    assert.equal(out.text.split(line).length - 1, 1, out.text);
  } finally {
    listen.kill('SIGTERM');
  }
});

test('blocking both ways: the blocked side\'s messages are refused with 403 until unblocked', async () => {
  const acks = [];
  const onAck = (node) => acks.push(node);
  sock.ws.on('CB:ack,class:message', onAck);
  try {
    await client('--proxy', banner.tcp, 'block', `${PHONE}@s.whatsapp.net`);
    const sent = await sock.sendMessage(alice, { text: 'you blocked me' });
    const ack = await until('the nack at Baileys', () => acks.find((a) => a.attrs.id === sent.key.id));
    assert.equal(ack.attrs.error, '403');
    await assert.rejects(client('--proxy', banner.tcp, 'send', 'to a blocked user', '--to', `${PHONE}@s.whatsapp.net`));
  } finally {
    sock.ws.off('CB:ack,class:message', onAck);
    await client('--proxy', banner.tcp, 'unblock', `${PHONE}@s.whatsapp.net`);
  }
});

test('a retry receipt from interop-client recovers a lost session with Baileys', async () => {
  // Our side loses its session; Baileys' next message (a `msg` on the old session) cannot be
  // decrypted, interop-client answers with a retry receipt carrying fresh keys, Baileys re-sends.
  await client('--proxy', banner.tcp, 'reset-session', `${PHONE}@s.whatsapp.net`);
  const { listen, out } = listenFor(30);
  try {
    await sleep(1500);
    const text = 'after the session was lost';
    const sent = await sock.sendMessage(alice, { text });
    sentMessages.set(sent.key.id, sent.message);
    await until('the retry request at interop-client', () => out.text.includes('could not be decrypted'));
    await until('the re-sent text at interop-client', () => out.text.includes(`${PHONE}@s.whatsapp.net: ${text}`));
  } finally {
    listen.kill('SIGTERM');
  }
});
