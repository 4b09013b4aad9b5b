// Runs build/rule.raw.wasm under the SDK's mock host (node). The gateway runs the vectors in
// rule.yaml (`sluice rule build .`); host/tests/assemblyscript.rs runs the packaged rule.
import test from "node:test";
import assert from "node:assert/strict";
import { F, MockHost } from "@sluice/sdk/scripts/mock-host.mjs";

const WASM = "build/rule.raw.wasm";

test("route rewrites /t/{a}/{b} under the prefix and the client id", () => {
  const h = MockHost.load(WASM);
  let r = h.call("sluice_route", { [F.PATH_SEGMENT]: ["t", "room1", "temp"], [F.CLIENT_ID]: "dev1" });
  assert.deepEqual([r.verdict, r.text(F.OUT_TOPIC), r.int(F.OUT_QOS), r.int(F.OUT_RETAIN)], [1, "devices/dev1/room1/temp", undefined, 0]);
  assert.equal(h.call("sluice_route", { [F.PATH_SEGMENT]: ["t", "a"], [F.CLIENT_ID]: "dev1" }).verdict, 0);
  assert.equal(h.call("sluice_route", { [F.PATH_SEGMENT]: ["mqtt", "a", "b"], [F.CLIENT_ID]: "dev1" }).verdict, 0);
  r = h.call("sluice_route", { [F.PATH_SEGMENT]: ["t", "a", "+"], [F.CLIENT_ID]: "dev1" });
  assert.deepEqual([r.verdict, r.int(F.OUT_CODE)], [12, 128]);
  const other = MockHost.load(WASM, { prefix: "site/7" });
  r = other.call("sluice_route", { [F.PATH_SEGMENT]: ["t", "a", "b"], [F.CLIENT_ID]: "d" });
  assert.equal(r.text(F.OUT_TOPIC), "site/7/d/a/b");
});

test("init refuses a bad config", () => {
  assert.throws(() => MockHost.load(WASM, { prefix: "a/#" }), /prefix/);
  assert.throws(() => MockHost.load(WASM, { timestamp: "yes" }), /timestamp: expected true or false/);
});

test("uplink enriches JSON objects only", () => {
  const h = MockHost.load(WASM);
  const up = (payload, cf) => h.call("sluice_uplink", { [F.TOPIC]: "devices/dev1/a/b", [F.PAYLOAD]: payload, [F.CONTENT_FORMAT]: cf, [F.CLIENT_ID]: "dev1", [F.NOW_MS]: 1700000000123 });
  let r = up('{ "t": 21.50, "s": "a\\"b\\u00e9", "n": [1, {"x": null}], "device": "spoof" }', 50);
  assert.equal(r.verdict, 1);
  assert.equal(r.text(F.OUT_PAYLOAD), '{"t":21.50,"s":"a\\"bé","n":[1,{"x":null}],"device":"dev1","received_at":1700000000123}');
  assert.equal(r.int(F.OUT_CONTENT_FORMAT), 50);
  r = up('{"t":1}');
  assert.equal(r.text(F.OUT_PAYLOAD), '{"t":1,"device":"dev1","received_at":1700000000123}');
  assert.equal(up("[1,2]", 50).verdict, 0);
  assert.equal(up("21.5", 0).verdict, 0);
  assert.equal(up("{\"t\":1}", 0).verdict, 0);
  assert.equal(up("{not json", 50).verdict, 0);
  assert.equal(up(Buffer.from([0xa1, 0x61, 0x74, 0x01]), 60).verdict, 0);
  const quiet = MockHost.load(WASM, { timestamp: false });
  r = quiet.call("sluice_uplink", { [F.PAYLOAD]: "{}", [F.CLIENT_ID]: "d" });
  assert.equal(r.text(F.OUT_PAYLOAD), '{"device":"d"}');
});

test("downlink compacts JSON byte for byte", () => {
  const h = MockHost.load(WASM);
  const down = (payload) => h.call("sluice_downlink", { [F.TOPIC]: "cmd", [F.PAYLOAD]: payload, [F.CLIENT_ID]: "dev1" });
  let r = down('{\n  "on": true,\n  "level": 1.0e2,\n  "text": "a b\\u0020c",\n  "list": [ 1 , 2 ]\n}\n');
  assert.deepEqual([r.verdict, r.text(F.OUT_PAYLOAD), r.int(F.OUT_CONTENT_FORMAT)], [1, '{"on":true,"level":1.0e2,"text":"a b\\u0020c","list":[1,2]}', undefined]);
  assert.equal(down('{"on":true}').verdict, 0);
  assert.equal(down("plain text here").verdict, 0);
  assert.equal(down('{"broken": }').verdict, 0);
});

test("authenticate names /t devices by identity or c=", () => {
  const h = MockHost.load(WASM);
  const auth = (extra) => h.call("sluice_authenticate", { [F.PATH_SEGMENT]: ["t", "a", "b"], ...extra });
  let r = auth({ [F.QUERY]: ["c=dev1"] });
  assert.deepEqual([r.verdict, r.text(F.OUT_CLIENT_ID), r.outputs.length], [1, "dev1", 1]);
  r = auth({ [F.QUERY]: ["clientid=dev2"] });
  assert.equal(r.text(F.OUT_CLIENT_ID), "dev2");
  r = auth({ [F.QUERY]: ["c=dev1"], [F.CERT_SUBJECT]: "cn-dev" });
  assert.equal(r.text(F.OUT_CLIENT_ID), "cn-dev");
  r = auth({});
  assert.deepEqual([r.verdict, r.int(F.OUT_CODE)], [3, 128]);
  assert.equal(h.call("sluice_authenticate", { [F.PATH_SEGMENT]: ["mqtt", "a"], [F.QUERY]: ["c=x"] }).verdict, 0);
  r = h.call("sluice_route", { [F.PATH_SEGMENT]: ["t", "a", "b"] });
  assert.deepEqual([r.verdict, r.int(F.OUT_CODE)], [12, 129]);
});
