// Conformance with an independent implementation (issue 13): unmodified Baileys 7 as a
// WhatsApp-side user of the simulator over its WebSocket chat listener, and interop-client as a
// Partner user behind the proxy (interop-local), all release binaries on loopback. Run by conformance/run.sh.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { createInterface } from 'node:readline';
import { createRequire } from 'node:module';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
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
// The voice note (3 s of Ogg/Opus silence, valid CRCs) and MP4 header the Rust tests use too.
const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), '..', 'crates', 'client', 'tests', 'fixtures');

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

// `interop-client listen` for `secs` seconds (and `extra` options); `out.text` grows with what
// it prints (the messages), `out.status` with its status lines on stderr (also passed through),
// `exited` settles when it ends.
function listenFor(secs, ...extra) {
  const listen = spawn(join(BIN, 'interop-client'), ['--state', join(dir, 'alice'), '--proxy', banner.tcp, 'listen', '--for', String(secs), ...extra], {
    env: { ...process.env, RUST_LOG: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const out = { text: '', status: '' };
  listen.stdout.on('data', (d) => { out.text += d; });
  listen.stderr.on('data', (d) => { out.status += d; process.stderr.write(d); });
  const exited = new Promise((resolve) => listen.on('exit', (code) => resolve(code)));
  return { listen, out, exited };
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
    // A retry receipt can overtake `sendMessage`'s return (and so the `sentMessages.set` after
    // it): wait for the entry, as an app's store would have it by then. Baileys' own retry cache
    // misses here because it keys by the text it sent to (`1-N@interop`) and its decoder names
    // the receipt's sender `1-N:0@interop` (docs/conformance.md, check 7).
    getMessage: async (key) => {
      const end = Date.now() + 5000;
      while (!sentMessages.has(key.id) && Date.now() < end) await sleep(20);
      return sentMessages.get(key.id);
    },
    syncFullHistory: false,
    // Media uploads go over node:https to the `<media_conn>` host, the simulator's HTTPS port,
    // whose certificate chains to the proxy's local CA (a documented Baileys option, not a patch).
    fetchAgent: new HttpsAgent({ ca: readFileSync(banner.ca) }),
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

test('Baileys -> interop-client media: image, voice note, video and document, decrypted and saved byte for byte', async () => {
  const voice = readFileSync(join(FIXTURES, 'voice-3s.ogg'));
  const clip = readFileSync(join(FIXTURES, 'clip.mp4'));
  const png = Buffer.concat([Buffer.from('89504e470d0a1a0a', 'hex'), Buffer.alloc(3000, 'picture from Baileys ')]);
  const pdf = Buffer.from('%PDF-1.7 quarterly numbers from Baileys\n'.repeat(200));
  // Given, so Baileys looks for no thumbnail or waveform tools (sharp, jimp, ffmpeg, audio-decode).
  const thumb = Buffer.alloc(0);
  const downloads = join(dir, 'downloads');
  const { listen, out, exited } = listenFor(20, '--download', downloads);
  try {
    await sleep(1500);
    const sent = {};
    sent.image = await sock.sendMessage(alice, { image: png, mimetype: 'image/png', caption: 'a picture', jpegThumbnail: thumb });
    sent.voice = await sock.sendMessage(alice, { audio: voice, mimetype: 'audio/ogg; codecs=opus', ptt: true, seconds: 3, waveform: new Uint8Array(64) });
    sent.video = await sock.sendMessage(alice, { video: clip, mimetype: 'video/mp4', caption: 'a clip', seconds: 7, jpegThumbnail: thumb });
    sent.document = await sock.sendMessage(alice, { document: pdf, mimetype: 'application/pdf', fileName: 'numbers.pdf' });
    // Baileys uploaded each to the simulator's media host and got a direct path back.
    for (const [name, m] of Object.entries(sent)) {
      const media = Object.values(m.message).find((v) => v && typeof v === 'object' && 'directPath' in v);
      assert.ok(media?.directPath?.startsWith('/v/t'), `${name}: ${JSON.stringify(m.message)}`);
    }
    const from = `${PHONE}@s.whatsapp.net`;
    await until('all four at interop-client', () =>
      out.text.includes(`${from}: [image/png, ${png.length} bytes] a picture`) &&
      out.text.includes(`${from}: [voice note 3s]`) &&
      out.text.includes(`${from}: [video 7s] a clip`) &&
      out.text.includes(`${from}: [application/pdf, ${pdf.length} bytes] numbers.pdf`));
    for (const [name, m] of Object.entries(sent)) {
      await until(`the delivery receipt for the ${name}`, () => rawReceipts.find((r) => r.attrs.id === m.key.id && !r.attrs.type));
    }
    // `--download` saves after the listening time: decrypted, hash- and MAC-checked, equal.
    assert.equal(await exited, 0, out.text);
    const saved = (file) => readFileSync(join(downloads, file));
    assert.deepEqual(saved(`${sent.image.key.id}.png`), png);
    assert.deepEqual(saved(`${sent.voice.key.id}.ogg`), voice);
    assert.deepEqual(saved(`${sent.video.key.id}.mp4`), clip);
    assert.deepEqual(saved('numbers.pdf'), pdf);
    await until('alice\'s mailbox empty', async () => (await mailbox(alice)) === 0);
  } finally {
    listen.kill('SIGTERM');
  }
});

test('interop-client -> Baileys: a voice note as audioMessage with ptt and seconds, <enc mediatype="ptt">', async () => {
  const before = rawMessages.length;
  await client('--proxy', banner.tcp, 'send-media', '--voice', join(FIXTURES, 'voice-3s.ogg'), '--to', `${PHONE}@s.whatsapp.net`);
  const node = await until('the voice note at Baileys', () => rawMessages.slice(before).find((n) => String(n.attrs.from).endsWith('@interop')));
  assert.equal(node.attrs.type, 'media');
  const enc = node.content.find((c) => c.tag === 'enc');
  assert.equal(enc.attrs.mediatype, 'ptt');
  const plain = await sock.signalRepository.decryptMessage({ jid: node.attrs.from, type: enc.attrs.type, ciphertext: enc.content });
  const audio = B.proto.Message.decode(B.unpadRandomMax16(plain)).audioMessage;
  assert.equal(audio.ptt, true);
  assert.equal(audio.seconds, 3);
  assert.equal(audio.mimetype, 'audio/ogg; codecs=opus');
  assert.equal(audio.mediaKey.length, 32);
});

test('read receipts: interop-client sends them for what it shows, and none once the user turns them off', async () => {
  const first = listenFor(8);
  try {
    await sleep(1500);
    const on = await sock.sendMessage(alice, { text: 'read receipts on' });
    await until('the text at interop-client', () => first.out.text.includes('read receipts on'));
    const read = await until('the read receipt at Baileys', () => rawReceipts.find((r) => r.attrs.id === on.key.id && r.attrs.type === 'read'));
    assert.ok(read.attrs.t, 'a read receipt carries its time');
  } finally {
    first.listen.kill('SIGTERM');
    await first.exited;
  }
  assert.match(await client('settings', '--read-receipts', 'off'), /read receipts: off/);
  const second = listenFor(8);
  try {
    await sleep(1500);
    const off = await sock.sendMessage(alice, { text: 'read receipts off' });
    await until('the text at interop-client', () => second.out.text.includes('read receipts off'));
    await until('the delivery receipt at Baileys', () => rawReceipts.find((r) => r.attrs.id === off.key.id && !r.attrs.type));
    await sleep(1500);
    assert.equal(rawReceipts.find((r) => r.attrs.id === off.key.id && r.attrs.type === 'read'), undefined);
  } finally {
    second.listen.kill('SIGTERM');
    await second.exited;
    await client('settings', '--read-receipts', 'on');
  }
});

test('Baileys -> interop-client asleep: the partner server\'s push wakes it, the message arrives once', async () => {
  // `--push`: after 5 s without events the client disconnects and long-polls the partner server;
  // the simulator queues Baileys' message, pushes to the partner server, and the client wakes.
  // A push left from check 5 (a message queued while no client listened) may wake it at once;
  // it then sleeps again after 5 s idle. Asleep means: the last status line says so, for 1 s.
  const { listen, out } = listenFor(60, '--push');
  try {
    await until('interop-client asleep', async () => {
      const before = out.status;
      if (!before.trimEnd().endsWith('waiting for a push')) return false;
      await sleep(1000);
      return out.status === before;
    }, 30_000);
    const text = 'wake up, from Baileys';
    const sent = await sock.sendMessage(alice, { text });
    await until('the push at interop-client', () => out.status.includes('push received'));
    const line = `${PHONE}@s.whatsapp.net: ${text} (sent while you were away)`;
    await until('the text at interop-client', () => out.text.includes(line));
    await until('the delivery receipt at Baileys', () => rawReceipts.find((r) => r.attrs.id === sent.key.id && !r.attrs.type));
    await until('alice\'s mailbox empty', async () => (await mailbox(alice)) === 0);
    await sleep(1000);
    assert.equal(out.text.split(line).length - 1, 1, out.text);
  } finally {
    listen.kill('SIGTERM');
  }
});
