// The SDK's helpers (JSON, topics, codes, Content-Formats, config) through tests/sdk.ts, run
// under the mock host. `npm test` compiles and runs it.
import test from "node:test";
import assert from "node:assert/strict";
import { F, MockHost } from "../scripts/mock-host.mjs";

const host = MockHost.load("build/sdk.test.wasm", {
  users: [{ name: "a" }, { name: "b" }], n: -12, bad: "1x",
});
const call = (what, { payload, query } = {}) => {
  const r = host.call("sluice_route", { [F.PATH_SEGMENT]: [what], [F.PAYLOAD]: payload ?? "", [F.QUERY]: query ?? [] });
  assert.equal(r.verdict, 11, `${what}: ${JSON.stringify(host.logs)}`);
  return r.text(F.OUT_PAYLOAD);
};

test("JSON round-trips valid documents compactly", () => {
  const cases = [
    ["{}", "{}"], ["[]", "[]"], [" null ", "null"], ["true", "true"], ["-0.5e-3", "-0.5e-3"], ["0", "0"],
    ["12345678901234567890", "12345678901234567890"], ['"a\\u00e9\\n\\"\\\\\\/"', '"aé\\n\\"\\\\/"'],
    ['"\\ud83d\\ude00"', '"😀"'], ['"é😀"', '"é😀"'], ['"\\u0001\\b\\f\\t\\r"', '"\\u0001\\b\\f\\t\\r"'],
    ['{ "a" : [1, {"b": [ ]}, "c"], "d": {"e": null} }', '{"a":[1,{"b":[]},"c"],"d":{"e":null}}'],
    ['{"a":1,"a":2}', '{"a":2}'],
    ["[" + "[".repeat(100) + "]".repeat(100) + "]", "[" + "[".repeat(100) + "]".repeat(100) + "]"],
  ];
  for (const [input, output] of cases) assert.equal(call("json", { payload: input }), output, input);
  for (const [input, output] of cases) assert.deepEqual(JSON.parse(call("json", { payload: input })), JSON.parse(output));
});

test("JSON refuses invalid documents", () => {
  for (const bad of [
    "", " ", "01", "1.", ".5", "-", "+1", "1e", "[1,]", "{,}", '{"a" 1}', '{"a":}', "{'a':1}", '"\\x"', '"\\u12"',
    '"a\nb"', "[1] x", "tru", "nul", "[", "{", '"open', "[" .repeat(200) + "]".repeat(200), "NaN", "{\"a\":1,}",
  ]) {
    assert.equal(call("json", { payload: bad }), "invalid", JSON.stringify(bad));
  }
});

test("JSON kinds and lengths", () => {
  assert.equal(call("json-kind", { payload: '{"a":1,"b":2}' }), "5:2");
  assert.equal(call("json-kind", { payload: "[1,2,3]" }), "4:3");
  assert.equal(call("json-kind", { payload: '"s"' }), "3:0");
  assert.equal(call("json-kind", { payload: "1" }), "2:0");
});

test("JSON objects can be edited", () => {
  const out = call("json-edit", { payload: '{"s":"kept","gone":1,"n":0}' });
  assert.equal(out, '{"s":"kept","n":1.5,"added":"x\\"y\\n\\u0001é😀","i":-42,"f":3,"nan":null,"list":[true,null],"s_copy":"kept"}');
  assert.deepEqual(JSON.parse(out).added, 'x"y\n\u0001é😀');
  assert.equal(call("json-edit", { payload: "[1]" }), "not an object");
});

test("compact removes whitespace outside strings only", () => {
  assert.equal(call("compact", { payload: '{ "a b" : [ 1 ,\t2 ],\r\n "c": "x \\" y" }\n' }), '{"a b":[1,2],"c":"x \\" y"}|true');
  assert.equal(call("compact", { payload: '{"a":"\\\\"}' }), '{"a":"\\\\"}|false');
  assert.equal(call("compact", { payload: "[1, 2" }), "invalid");
});

test("topic names and filters", () => {
  const t = (s) => call("topic", { query: [s] });
  assert.equal(t("a/b"), "true|true");
  assert.equal(t("a/+/b"), "false|true");
  assert.equal(t("a/#"), "false|true");
  assert.equal(t("a/#/b"), "false|false");
  assert.equal(t("a+/b"), "false|false");
  assert.equal(t("/"), "true|true");
  const m = (f, topic) => call("matches", { query: [f, topic] }) === "true";
  assert.ok(m("a/+/c", "a/b/c"));
  assert.ok(m("a/#", "a"));
  assert.ok(m("a/#", "a/b/c"));
  assert.ok(m("#", "a/b"));
  assert.ok(!m("a/+", "a/b/c"));
  assert.ok(!m("a/b", "a/b/c"));
  assert.ok(!m("#", "$SYS/x"));
  assert.ok(!m("+/x", "$SYS/x"));
  assert.ok(m("$SYS/#", "$SYS/x"));
  const c = (p, f) => call("covers", { query: [p, f] }) === "true";
  assert.ok(c("a/#", "a/+/c"));
  assert.ok(c("a/#", "a"));
  assert.ok(c("a/+", "a/b"));
  assert.ok(!c("a/+", "a/#"));
  assert.ok(!c("a/b", "a/+"));
  assert.ok(c("+/b", "+/b"));
  assert.ok(!c("#", "$SYS/x"));
});

test("codes and content formats", () => {
  assert.equal(call("code", { query: ["131"] }), "4.03|132");
  assert.equal(call("code", { query: ["69"] }), "2.05|132");
  assert.equal(call("code", { query: ["95"] }), "2.31|132");
  assert.equal(call("mime", { query: ["50", "application/JSON"] }), "application/json|50");
  assert.equal(call("mime", { query: ["11542", "application/coap-cf;cf=11542"] }), "application/coap-cf;cf=11542|11542");
  assert.equal(call("mime", { query: ["0", "text/plain"] }), "text/plain;charset=utf-8|0");
  assert.equal(call("mime", { query: ["0", "image/png"] }), "text/plain;charset=utf-8|-1");
});

test("config getters and query values", () => {
  assert.equal(call("config"), '2|-12|5|bad: expected an integer, found "1x"|dflt|true');
  assert.equal(call("query", { query: ["x=1", "clientid=a=b", "c=second"] }), "a=b");
  assert.equal(call("query", { query: ["c"] }), "");
  assert.equal(call("query", { query: ["u=x"] }), "null");
});

test("every API item compiles and behaves", () => {
  host.logs.length = 0;
  const r = host.call("sluice_route", { [F.PATH_SEGMENT]: ["api", "x"], [F.CLIENT_ID]: "dev9" });
  assert.equal(r.text(F.OUT_PAYLOAD), "1 2 11 1 1 -1 acme null anon auth api/x GET CON dev9 12 -1|128|5|4 digits now null 4.4 -10 json 1.25 valid {\"a\":1}");
  assert.deepEqual(host.logs, [[0, "e"], [1, "w"], [2, "i"], [3, "d"], [4, "t"]]);
});

test("a hook reads all its inputs in one crossing", () => {
  const inputs = {
    [F.METHOD]: 3, [F.MESSAGE_TYPE]: 1, [F.PATH_SEGMENT]: ["request", "x", ""], [F.QUERY]: ["c=d1", "k"],
    [F.CONTENT_FORMAT]: 50, [F.ACCEPT]: 60, [F.OBSERVE]: 0, [F.MAX_AGE]: 30, [F.PEER]: "127.0.0.1:5683",
    [F.PSK_IDENTITY]: "dev-psk", [F.CERT_SAN]: ["a.example", "b.example"], [F.PAYLOAD]: "hé",
    [F.CLIENT_ID]: "d1", [F.USERNAME]: "u", [F.ATTRIBUTE]: ["tenant\0acme", "flag"],
  };
  const r = host.call("sluice_route", inputs);
  assert.equal(r.text(F.OUT_PAYLOAD), "3|1|request/x/|c=d1&k|50|60|0|30|127.0.0.1:5683|dev-psk|a.example,b.example|3|d1|u|tenant=acme,flag=");
  assert.deepEqual(host.calls, { inputs: 1, set: 1, set_i64: 2 }, "one inputs call, no get per field");
  // Absent fields read as absent from the block as well.
  const bare = host.call("sluice_route", { [F.PATH_SEGMENT]: ["request"] });
  assert.equal(bare.text(F.OUT_PAYLOAD), "1|0|request||-1|-1|-1|-1||null||0||null|");
  assert.equal(host.calls.inputs, 1);
  assert.equal(host.calls.get ?? 0, 0);
});

test("a block longer than the buffer is fetched again at its length", () => {
  const payload = Buffer.alloc(9000, 7);
  payload[8999] = 42;
  const r = host.call("sluice_uplink", { [F.TOPIC]: "t/1", [F.PAYLOAD]: payload, [F.CONTENT_FORMAT]: 42, [F.CLIENT_ID]: "d2" });
  assert.equal(r.verdict, 1);
  assert.equal(r.text(F.OUT_PAYLOAD), "t/1|9000|42|42|d2");
  assert.equal(host.calls.inputs, 2, "the 4 KiB buffer, then one of the block's length");
  // The next hook gets its small block in one call again.
  const small = host.call("sluice_uplink", { [F.TOPIC]: "t/2", [F.PAYLOAD]: "ab", [F.CLIENT_ID]: "d3" });
  assert.equal(small.text(F.OUT_PAYLOAD), "t/2|2|98|-1|d3");
  assert.equal(small.verdict, 1);
  assert.equal(host.calls.inputs, 1);
});

test("authorize and downlink read their inputs from the block", () => {
  const authz = (access, topic) =>
    host.call("sluice_authorize", { [F.ACCESS]: access, [F.TOPIC]: topic, [F.CLIENT_ID]: "d4" });
  assert.equal(authz(1, "own/d4").verdict, 1);
  assert.equal(authz(0, "own/d4").verdict, 0);
  assert.equal(authz(0, "deny/x").verdict, 2);
  assert.equal(authz(7, "own/d4").verdict, -1, "an access the ABI does not define: the fail policy");
  assert.deepEqual(host.calls, { inputs: 1 });
  const down = host.call("sluice_downlink", {
    [F.TOPIC]: "cmd/d4", [F.PAYLOAD]: "on", [F.CONTENT_TYPE]: "text/plain", [F.USER_PROPERTY]: ["a\0b"], [F.CLIENT_ID]: "d4",
  });
  assert.equal(down.text(F.OUT_PAYLOAD), "cmd/d4|on|text/plain|a=b|d4");
  assert.equal(host.calls.inputs, 1);
  assert.equal(host.calls.get ?? 0, 0);
});
