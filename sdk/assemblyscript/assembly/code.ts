// CoAP response codes (`class << 5 | detail`, one byte) and Content-Format numbers.

/** CoAP response codes as code bytes: `Code.FORBIDDEN` is 4.03 = 131. */
export namespace Code {
  /** Builds a code from class and detail: `Code.make(4, 3)` is 4.03. */
  export function make(cls: u8, detail: u8): u8 {
    return <u8>((cls << 5) | detail);
  }
  /** The class digit (2, 4 or 5). */
  export function classOf(code: u8): u8 {
    return code >> 5;
  }
  /** The detail digits. */
  export function detailOf(code: u8): u8 {
    return code & 0x1f;
  }
  /** `class.detail`, as CoAP writes it: `4.03`. */
  export function format(code: u8): string {
    const detail = detailOf(code);
    return classOf(code).toString() + (detail < 10 ? ".0" : ".") + detail.toString();
  }
  /** 2.01 Created */
  export const CREATED: u8 = 65;
  /** 2.02 Deleted */
  export const DELETED: u8 = 66;
  /** 2.03 Valid */
  export const VALID: u8 = 67;
  /** 2.04 Changed */
  export const CHANGED: u8 = 68;
  /** 2.05 Content */
  export const CONTENT: u8 = 69;
  /** 4.00 Bad Request */
  export const BAD_REQUEST: u8 = 128;
  /** 4.01 Unauthorized */
  export const UNAUTHORIZED: u8 = 129;
  /** 4.02 Bad Option */
  export const BAD_OPTION: u8 = 130;
  /** 4.03 Forbidden */
  export const FORBIDDEN: u8 = 131;
  /** 4.04 Not Found */
  export const NOT_FOUND: u8 = 132;
  /** 4.05 Method Not Allowed */
  export const METHOD_NOT_ALLOWED: u8 = 133;
  /** 4.06 Not Acceptable */
  export const NOT_ACCEPTABLE: u8 = 134;
  /** 4.13 Request Entity Too Large */
  export const REQUEST_ENTITY_TOO_LARGE: u8 = 141;
  /** 4.15 Unsupported Content-Format */
  export const UNSUPPORTED_CONTENT_FORMAT: u8 = 143;
  /** 5.00 Internal Server Error */
  export const INTERNAL_SERVER_ERROR: u8 = 160;
  /** 5.02 Bad Gateway */
  export const BAD_GATEWAY: u8 = 162;
  /** 5.03 Service Unavailable */
  export const SERVICE_UNAVAILABLE: u8 = 163;
  /** 5.04 Gateway Timeout */
  export const GATEWAY_TIMEOUT: u8 = 164;
}

/** "No value" for the optional numbers of this SDK (Content-Format, QoS, expiry, …). */
export const NONE: i32 = -1;

/** CoAP Content-Format numbers (IANA registry). */
export namespace ContentFormat {
  /** text/plain;charset=utf-8 */
  export const TEXT_PLAIN: i32 = 0;
  /** application/link-format */
  export const LINK_FORMAT: i32 = 40;
  /** application/xml */
  export const XML: i32 = 41;
  /** application/octet-stream */
  export const OCTET_STREAM: i32 = 42;
  /** application/exi */
  export const EXI: i32 = 47;
  /** application/json */
  export const JSON: i32 = 50;
  /** application/cbor */
  export const CBOR: i32 = 60;
  /** application/senml+json */
  export const SENML_JSON: i32 = 110;
  /** application/senml+cbor */
  export const SENML_CBOR: i32 = 112;

  /** The MIME type for a Content-Format; unregistered numbers become `application/coap-cf;cf=N`. */
  export function toMime(cf: i32): string {
    switch (cf) {
      case TEXT_PLAIN: return "text/plain;charset=utf-8";
      case LINK_FORMAT: return "application/link-format";
      case XML: return "application/xml";
      case OCTET_STREAM: return "application/octet-stream";
      case EXI: return "application/exi";
      case JSON: return "application/json";
      case CBOR: return "application/cbor";
      case SENML_JSON: return "application/senml+json";
      case SENML_CBOR: return "application/senml+cbor";
    }
    return "application/coap-cf;cf=" + cf.toString();
  }

  /** The Content-Format for a MIME type, or `NONE`. */
  export function fromMime(mime: string): i32 {
    const m = mime.trim().toLowerCase();
    const prefix = "application/coap-cf;cf=";
    if (m.startsWith(prefix)) {
      const n = m.substring(prefix.length);
      return isDigits(n) && n.length <= 5 ? <i32>I32.parseInt(n) : NONE;
    }
    if (m == "text/plain") return TEXT_PLAIN;
    const known: i32[] = [TEXT_PLAIN, LINK_FORMAT, XML, OCTET_STREAM, EXI, JSON, CBOR, SENML_JSON, SENML_CBOR];
    for (let i = 0; i < known.length; i++) {
      if (toMime(known[i]) == m) return known[i];
    }
    return NONE;
  }
}

/** True when `s` is one or more ASCII digits. */
export function isDigits(s: string): bool {
  if (s.length == 0) return false;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 57) return false;
  }
  return true;
}
