#!/usr/bin/env node
// Exercise a Sluice gateway with the npm `coap` library (node-coap), which has
// no RFC 9175 Echo support.
//
// Usage: node tests/clients/node/cases.js HOST PORT [CASE ...]
//
// Needs `npm ci` (or `npm install`) in tests/clients/node first. The gateway
// must let anonymous clients in. The script uses the library as any
// application would: it does not look at Echo options or repeat a request
// after a 4.01. Against a gateway that asks for Echo before large answers or
// Observe registrations, those cases fail with the 4.01 in their FAIL line.
//
// Cases (one output line each, `ok CASE` or `FAIL CASE: WHAT`; exit 1 if any
// failed; CASE arguments pick some, in the order given):
//   put        PUT /ps/js/put (2.01/2.04) and PUT /mqtt/js/pub (2.04)
//   observe    GET Observe=0 on /ps/js/obs, then v1, v2, v3 as notifications
//   block1     PUT 5000 bytes to /ps/js/big (node-coap sends the Block1
//              blocks itself once the request carries a Block1 option)
//   block2     GET /ps/js/big: the same 5000 bytes (node-coap reassembles)
//   discovery  GET /.well-known/core: 2.05 with </ps>
'use strict';

const dgram = require('dgram');
const net = require('net');
const coap = require('coap');

const STEP_TIMEOUT = 5000; // ms for one request or one notification
const CASE_TIMEOUT = 15000; // ms for a whole case
const LIB = 'js';
const BIG = Buffer.from(Array.from({ length: 5000 }, (_, i) => 0x61 + (i % 26)));

const CODE_NAMES = {
  '2.01': 'Created', '2.02': 'Deleted', '2.03': 'Valid', '2.04': 'Changed',
  '2.05': 'Content', '2.31': 'Continue', '4.00': 'Bad Request',
  '4.01': 'Unauthorized', '4.02': 'Bad Option', '4.03': 'Forbidden',
  '4.04': 'Not Found', '4.05': 'Method Not Allowed', '4.06': 'Not Acceptable',
  '4.08': 'Request Entity Incomplete', '4.12': 'Precondition Failed',
  '4.13': 'Request Entity Too Large', '4.15': 'Unsupported Content-Format',
  '5.00': 'Internal Server Error', '5.01': 'Not Implemented',
  '5.02': 'Bad Gateway', '5.03': 'Service Unavailable', '5.04': 'Gateway Timeout',
};
// Option numbers coap-packet has no name for (it calls them by number).
const OPTION_NAMES = { 252: 'Echo', 292: 'Request-Tag' };

class CaseFailed extends Error {}

function codeText(code) {
  return CODE_NAMES[code] ? `${code} ${CODE_NAMES[code]}` : String(code);
}

// A response as a FAIL line shows it: code, options, payload.
function describe(res) {
  let text = codeText(res.code);
  const opts = (res.options || []).map((o) => OPTION_NAMES[o.name] || String(o.name));
  if (opts.length > 0) text += ` [${opts.join(', ')}]`;
  const payload = res.payload || Buffer.alloc(0);
  if (payload.length > 0) {
    text += ` ${JSON.stringify(payload.subarray(0, 80).toString('utf8'))}`;
    if (payload.length > 80) text += `... (${payload.length} bytes)`;
  }
  return text;
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new CaseFailed(`${what}: no answer within ${ms / 1000} s`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class Cases {
  constructor(host, port) {
    this.host = host;
    this.port = port;
    // One socket for the whole run, as a device has one address and port. An
    // Agent left to make its own socket closes it whenever no request is
    // pending and opens a new one (a new port) for the next request; a
    // request started while the old socket is still closing fails with
    // ERR_SOCKET_DGRAM_NOT_RUNNING (node-coap 1.5.0; e.g. the deregistration
    // sent by close(true) on the last open observation).
    this.socket = dgram.createSocket(net.isIPv6(host) ? 'udp6' : 'udp4');
    this.agent = new coap.Agent({ socket: this.socket });
  }

  // Starts a request; `prepare(req)` may set options before it is sent.
  start({ method = 'GET', path, client, payload, observe, prepare }) {
    const req = this.agent.request({
      hostname: this.host,
      port: this.port,
      method,
      pathname: path,
      query: client ? `c=${client}` : undefined,
      observe,
    });
    if (prepare) prepare(req);
    const answered = new Promise((resolve, reject) => {
      req.on('response', resolve);
      req.on('error', (e) => reject(new CaseFailed(`${method} ${path}: error: ${e.message}`)));
      req.on('timeout', (e) => reject(new CaseFailed(`${method} ${path}: timeout: ${e.message}`)));
    });
    if (payload) req.write(payload);
    req.end();
    return { req, answered };
  }

  // One request, its (reassembled) response within STEP_TIMEOUT.
  async request(opts) {
    const { answered } = this.start(opts);
    return withTimeout(answered, STEP_TIMEOUT, `${opts.method || 'GET'} ${opts.path}`);
  }

  async expect(codes, opts) {
    const res = await this.request(opts);
    if (!codes.includes(res.code)) {
      const want = codes.map(codeText).join(' or ');
      throw new CaseFailed(`${opts.method || 'GET'} ${opts.path}: expected ${want}, got ${describe(res)}`);
    }
    return res;
  }

  async put() {
    await this.expect(['2.01', '2.04'], {
      method: 'PUT', path: `/ps/${LIB}/put`, client: `${LIB}-1`, payload: Buffer.from('hello'),
    });
    await this.expect(['2.04'], {
      method: 'PUT', path: `/mqtt/${LIB}/pub`, client: `${LIB}-1`, payload: Buffer.from('hi'),
    });
  }

  async observe() {
    const path = `/ps/${LIB}/obs`;
    const putValue = (v) => this.expect(['2.01', '2.04'], {
      method: 'PUT', path, client: `${LIB}-3`, payload: Buffer.from(v),
    });
    await putValue('v0');

    const { answered } = this.start({ path, client: `${LIB}-2`, observe: true });
    const stream = await withTimeout(answered, STEP_TIMEOUT, 'registration');
    // The stream's own fields follow the latest notification: keep the first answer's.
    const first = { code: stream.code, options: stream.options, payload: stream.payload };
    const observing = first.code === '2.05' && stream.headers.Observe !== undefined;
    const received = [];
    let wake = () => {};
    stream.on('data', (chunk) => {
      received.push(chunk.toString('utf8'));
      wake();
    });
    try {
      if (!observing) {
        throw new CaseFailed(`registration: expected 2.05 Content with Observe, got ${describe(first)}`);
      }
      if (!first.payload || first.payload.toString('utf8') !== 'v0') {
        throw new CaseFailed(`registration: expected "v0", got ${describe(first)}`);
      }
      for (const v of ['v1', 'v2', 'v3']) await putValue(v);
      const deadline = Date.now() + STEP_TIMEOUT;
      while (!received.includes('v3') && Date.now() < deadline) {
        await Promise.race([new Promise((resolve) => { wake = resolve; }), sleep(deadline - Date.now())]);
      }
      // The registration's answer is the stream's first chunk; the gateway may
      // also repeat v0 once before the new values.
      const values = received.slice();
      while (values[0] === 'v0') values.shift();
      if (values.join(',') !== 'v1,v2,v3') {
        const got = received.length > 0 ? received.join(', ') : 'nothing';
        throw new CaseFailed(`expected notifications v1, v2, v3, received ${got}` +
          (stream.code !== '2.05' ? ` (last: ${describe(stream)})` : ''));
      }
    } finally {
      // close(true): forget the token and send a deregistration (GET Observe=1).
      // (node-coap answers a 4.04 with a plain message, which has no close.)
      if (typeof stream.close === 'function') stream.close(observing);
    }
  }

  async block1() {
    // node-coap does the Block1 exchange itself (README: "rudimentary type 1
    // blockwise transfers") once the request carries a Block1 option whose
    // value is the block size exponent: 6 means 1024-byte blocks. Without it
    // the library sends the whole 5000 bytes in one datagram.
    await this.expect(['2.01', '2.04'], {
      method: 'PUT',
      path: `/ps/${LIB}/big`,
      client: `${LIB}-1`,
      payload: BIG,
      prepare: (req) => req.setOption('Block1', Buffer.of(6)),
    });
  }

  async block2() {
    const res = await this.expect(['2.05'], { path: `/ps/${LIB}/big`, client: `${LIB}-1` });
    if (!BIG.equals(res.payload)) {
      const p = res.payload;
      let diff = -1;
      for (let i = 0; i < Math.min(p.length, BIG.length); i++) {
        if (p[i] !== BIG[i]) { diff = i; break; }
      }
      throw new CaseFailed(`2.05 with ${p.length} bytes, expected the 5000 put` +
        (diff >= 0 ? ` (first difference at byte ${diff})` : ''));
    }
  }

  async discovery() {
    const res = await this.expect(['2.05'], { path: '/.well-known/core' });
    if (!res.payload.toString('utf8').includes('</ps>')) {
      throw new CaseFailed(`no </ps> in ${describe(res)}`);
    }
  }
}

const ALL = ['put', 'observe', 'block1', 'block2', 'discovery'];

async function main() {
  const [host, port, ...picked] = process.argv.slice(2);
  const names = picked.length > 0 ? picked : ALL;
  if (!host || !/^\d+$/.test(port || '') || names.some((n) => !ALL.includes(n))) {
    console.error(`usage: node cases.js HOST PORT [${ALL.join('|')} ...]`);
    return 2;
  }
  const cases = new Cases(host, Number(port));
  let failed = 0;
  for (const name of names) {
    try {
      await withTimeout(cases[name](), CASE_TIMEOUT, 'the whole case');
      console.log(`ok ${name}`);
    } catch (e) {
      console.log(`FAIL ${name}: ${e instanceof CaseFailed ? e.message : (e && e.stack) || e}`);
      failed += 1;
    }
  }
  await sleep(200); // let a deregistration or last ACK go out
  cases.socket.close();
  return failed > 0 ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (e) => { console.log(`FAIL: ${(e && e.stack) || e}`); process.exit(1); },
);
