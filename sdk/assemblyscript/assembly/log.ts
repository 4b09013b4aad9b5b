// Logging from a rule, through the host (`sluice1.log`): tagged with the rule's name and version,
// rate-limited by the host. Never log a secret: rule logs are read by whoever runs the gateway.

import * as abi from "./abi";

/** How important a message is (the ABI's numbering: 0 error … 4 trace). */
export enum Level {
  /** The rule cannot do its job. */
  Error = 0,
  /** Something is off; the rule carries on. */
  Warn = 1,
  /** Worth knowing in normal operation. */
  Info = 2,
  /** Detail for finding a problem. */
  Debug = 3,
  /** Everything. */
  Trace = 4,
}

/** Writes one message at `level`. */
export function write(level: Level, message: string): void {
  const utf8 = String.UTF8.encode(message);
  abi.log(<i32>level, changetype<usize>(utf8), utf8.byteLength);
}

/** Logs at error level. */
export function error(message: string): void {
  write(Level.Error, message);
}
/** Logs at warn level. */
export function warn(message: string): void {
  write(Level.Warn, message);
}
/** Logs at info level. */
export function info(message: string): void {
  write(Level.Info, message);
}
/** Logs at debug level. */
export function debug(message: string): void {
  write(Level.Debug, message);
}
/** Logs at trace level. */
export function trace(message: string): void {
  write(Level.Trace, message);
}

let aborting = false;

/**
 * The abort handler rules are compiled with (`--use abort=…/sluiceAbort`, set by the template's
 * asconfig.json): logs the message through the host, then traps, so the host applies the hook's
 * fail policy and recycles the instance. Without it, AssemblyScript imports `env.abort`, which
 * the host also accepts.
 */
export function sluiceAbort(message: string | null, fileName: string | null, line: u32, column: u32): void {
  if (!aborting) {
    // An allocation failure lands here too: a second abort while logging traps directly.
    aborting = true;
    const msg = message ? message : "abort";
    const file = fileName ? fileName : "?";
    write(Level.Error, msg + " at " + file + ":" + line.toString() + ":" + column.toString());
  }
  unreachable();
}
