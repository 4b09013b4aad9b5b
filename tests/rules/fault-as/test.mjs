// Runs build/hooks.raw.wasm and build/rule.raw.wasm under the SDK's mock host (node): every hook
// and verdict encoding of the AssemblyScript SDK, and the fault behaviours that do not need the
// real host's limits. The real host runs the same modules in host/tests/assemblyscript.rs.
import test from "node:test";
import assert from "node:assert/strict";
import { F, MockHost } from "@sluice/sdk/scripts/mock-host.mjs";

const hooks = () => MockHost.load("build/hooks.raw.wasm", { greeting: "hi", items: ["a", "b", "c"], n: 7, flag: true });
const route = (h, path, extra = {}) => h.call("sluice_route", { [F.PATH_SEGMENT]: path, [F.CLIENT_ID]: "dev1", ...extra });

test("authenticate verdicts", () => {
  const h = hooks();
  const auth = (v) => h.call("sluice_authenticate", { [F.PATH_SEGMENT]: ["auth"], [F.QUERY]: [`v=${v}`] });
  assert.equal(auth("continue").verdict, 0);
  let r = auth("allow");
  assert.equal(r.verdict, 1);
  assert.deepEqual(r.outputs.map(([f, v]) => [f, v.toString()]), [
    [F.OUT_CLIENT_ID, "dev1"], [F.OUT_USERNAME, "user1"], [F.OUT_ATTRIBUTE, "tenant\0acme"], [F.OUT_ATTRIBUTE, "tier\0gold"],
  ]);
  r = auth("allow-bare");
  assert.deepEqual([r.verdict, r.outputs.map(([f, v]) => [f, v.toString()])], [1, [[F.OUT_CLIENT_ID, "dev2"]]]);
  r = auth("session");
  assert.deepEqual([r.verdict, r.text(F.OUT_CLIENT_ID), r.text(F.OUT_TOKEN)], [2, "dev3", "tok3"]);
  r = auth("deny");
  assert.deepEqual([r.verdict, r.int(F.OUT_CODE), r.text(F.OUT_REASON)], [3, 131, "denied by hooks"]);
  r = auth("deny-default");
  assert.deepEqual([r.verdict, r.int(F.OUT_CODE), r.text(F.OUT_REASON)], [3, 129, ""]);
});

test("the request is decoded field by field", () => {
  const h = hooks();
  const r = h.call("sluice_authenticate", {
    [F.METHOD]: 2, [F.MESSAGE_TYPE]: 1, [F.PATH_SEGMENT]: ["auth", "a/b"], [F.QUERY]: ["v=echo", "x"],
    [F.CONTENT_FORMAT]: 50, [F.ACCEPT]: 60, [F.OBSERVE]: 0, [F.MAX_AGE]: 30, [F.PEER]: "127.0.0.1:5683",
    [F.PSK_IDENTITY]: "psk1", [F.CERT_SUBJECT]: "cn", [F.CERT_SAN]: ["s1", "s2"], [F.CERT_FINGERPRINT]: "ab",
    [F.PAYLOAD]: "x".repeat(300) + "é",
  });
  assert.equal(r.verdict, 1);
  assert.equal(r.text(F.OUT_CLIENT_ID), `2|1|auth/a/b|v=echo&x|50|60|0|30|127.0.0.1:5683|psk1|cn|s1,s2|ab|${"x".repeat(300)}é`);
  const bare = h.call("sluice_route", { [F.PATH_SEGMENT]: ["echo"] });
  assert.equal(bare.text(F.OUT_PAYLOAD), "1|0|echo||-|-|-|-||-|-||-|");
});

test("route verdicts", () => {
  const h = hooks();
  let r = route(h, ["publish"]);
  assert.equal(r.verdict, 1);
  assert.deepEqual(r.outputs.map(([f, v]) => [f, typeof v === "bigint" ? Number(v) : v.toString()]), [
    [F.OUT_TOPIC, "p/dev1"], [F.OUT_QOS, 1], [F.OUT_RETAIN, 1], [F.OUT_EXPIRY, 60], [F.OUT_USER_PROPERTY, "k\0v"], [F.OUT_USER_PROPERTY, "k2\0"],
  ]);
  r = route(h, ["publish-default"]);
  assert.deepEqual([r.verdict, r.outputs.map(([f, v]) => [f, typeof v === "bigint" ? Number(v) : v.toString()])], [1, [[F.OUT_TOPIC, "p/default"], [F.OUT_RETAIN, 0]]]);
  r = route(h, ["set"]);
  assert.deepEqual([r.verdict, r.text(F.OUT_TOPIC), r.int(F.OUT_QOS), r.int(F.OUT_RETAIN), r.int(F.OUT_EXPIRY)], [2, "v/x", 2, 0, 30]);
  r = route(h, ["sub"]);
  assert.deepEqual([r.verdict, r.text(F.OUT_TOPIC), r.int(F.OUT_QOS)], [3, "s/+/x", 1]);
  r = route(h, ["sub-default"]);
  assert.deepEqual([r.verdict, r.text(F.OUT_TOPIC), r.int(F.OUT_QOS), r.outputs.length], [3, "s/#", undefined, 1]);
  r = route(h, ["unsub"]);
  assert.deepEqual([r.verdict, r.text(F.OUT_TOPIC), r.outputs.length], [4, "s/#", 1]);
  r = route(h, ["read"]);
  assert.deepEqual([r.verdict, r.text(F.OUT_TOPIC)], [5, "r/x"]);
  r = route(h, ["observe"]);
  assert.deepEqual([r.verdict, r.text(F.OUT_TOPIC), r.int(F.OUT_QOS)], [6, "o/x", 0]);
  r = route(h, ["delete"]);
  assert.deepEqual([r.verdict, r.text(F.OUT_TOPIC)], [7, "d/x"]);
  for (const [path, v] of [["connect", 8], ["heartbeat", 9], ["disconnect", 10], ["nothing", 0]]) {
    r = route(h, [path]);
    assert.deepEqual([r.verdict, r.outputs.length], [v, 0], path);
  }
  r = route(h, ["respond"]);
  assert.deepEqual([r.verdict, r.int(F.OUT_CODE), r.text(F.OUT_PAYLOAD), r.int(F.OUT_CONTENT_FORMAT)], [11, 69, "hello", 0]);
  r = route(h, ["respond-empty"]);
  assert.deepEqual([r.verdict, r.int(F.OUT_CODE), r.text(F.OUT_PAYLOAD), r.int(F.OUT_CONTENT_FORMAT)], [11, 67, "", undefined]);
  r = route(h, ["reject"]);
  assert.deepEqual([r.verdict, r.int(F.OUT_CODE), r.text(F.OUT_REASON)], [12, 132, "no such thing"]);
});

test("the principal and the config are decoded", () => {
  const h = hooks();
  let r = route(h, ["who"], { [F.USERNAME]: "u", [F.ATTRIBUTE]: ["tenant\0acme", "flag"] });
  assert.equal(r.text(F.OUT_PAYLOAD), "dev1|u|tenant=acme,flag=");
  r = route(h, ["who"]);
  assert.equal(r.text(F.OUT_PAYLOAD), "dev1|-|");
  r = route(h, ["config"]);
  assert.equal(r.text(F.OUT_PAYLOAD), "hi|hi|3|7|true");
});

test("init refuses with the reason", () => {
  assert.throws(() => MockHost.load("build/hooks.raw.wasm", { refuse: true }), /refuse: told to refuse/);
  assert.throws(() => MockHost.load("build/hooks.raw.wasm", { refuse: "maybe" }), /refuse: expected true or false/);
});

test("authorize verdicts", () => {
  const h = hooks();
  const authz = (access, topic) => h.call("sluice_authorize", { [F.ACCESS]: access, [F.TOPIC]: topic, [F.CLIENT_ID]: "d" }).verdict;
  assert.equal(authz(0, "allow/x"), 1);
  assert.equal(authz(1, "deny/x"), 2);
  assert.equal(authz(0, "other"), 0);
  assert.equal(authz(0, "pubonly/x"), 1);
  assert.equal(authz(1, "pubonly/x"), 2);
  assert.equal(authz(7, "allow/x"), -1);
});

test("uplink and downlink verdicts", () => {
  const h = hooks();
  const up = (payload, cf) => h.call("sluice_uplink", { [F.TOPIC]: "t/1", [F.PAYLOAD]: payload, [F.CONTENT_FORMAT]: cf, [F.CLIENT_ID]: "dev1" });
  assert.equal(up("keep").verdict, 0);
  assert.equal(up("drop").verdict, 2);
  let r = up("reject");
  assert.deepEqual([r.verdict, r.int(F.OUT_CODE), r.text(F.OUT_REASON)], [3, 128, "rejected by hooks"]);
  r = up("replace", 42);
  assert.deepEqual([r.verdict, r.text(F.OUT_PAYLOAD), r.int(F.OUT_CONTENT_FORMAT)], [1, "t/1|dev1|42", 0]);
  r = up("replace");
  assert.equal(r.text(F.OUT_PAYLOAD), "t/1|dev1|-");
  const down = (payload) => h.call("sluice_downlink", {
    [F.TOPIC]: "c/1", [F.PAYLOAD]: payload, [F.CONTENT_TYPE]: "text/plain", [F.USER_PROPERTY]: ["a\0b", "c\0"], [F.CLIENT_ID]: "dev1",
  });
  assert.equal(down("keep").verdict, 0);
  assert.equal(down("drop").verdict, 2);
  r = down("replace");
  assert.deepEqual([r.verdict, r.text(F.OUT_PAYLOAD), r.int(F.OUT_CONTENT_FORMAT)], [1, "c/1|text/plain|a=b,c=|dev1", 50]);
});

test("fault rule: ok, refused outputs and traps", () => {
  const h = MockHost.load("build/rule.raw.wasm");
  let r = route(h, ["ok", "x"]);
  assert.deepEqual([r.verdict, r.text(F.OUT_TOPIC)], [1, "ok/x"]);
  assert.equal(route(h, ["other"]).verdict, 0);
  // The mock refuses outputs over 64 KiB with TOO_LARGE: the hook answers that status.
  r = route(h, ["bigout"]);
  assert.equal(r.verdict, -3);
  assert.match(h.logs.at(-1)[1], /refused output field 104: status -3/);
  assert.equal(route(h, ["ok", "y"]).verdict, 1);
  assert.equal(route(h, ["badtopic"]).text(F.OUT_TOPIC), "a/+/b");
  assert.throws(() => route(h, ["trap"]), WebAssembly.RuntimeError);
  assert.throws(() => route(h, ["oob"]), /bad pointer/);
  assert.throws(() => h.call("sluice_uplink", { [F.PAYLOAD]: "trap" }), WebAssembly.RuntimeError);
  assert.equal(h.call("sluice_uplink", { [F.PAYLOAD]: "fine" }).verdict, 0);
  // memory: the bomb ends in a trap when memory cannot grow (here: node's 4 GiB limit is too slow
  // to reach; the real host's cap is tested in host/tests/assemblyscript.rs).
});
