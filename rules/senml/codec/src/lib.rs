//! # sluice-senml: SenML, CBOR and JSON payloads as JSON
//!
//! Small decoders with no dependencies, for Sluice rules compiled to WebAssembly (they keep the
//! module small) and natively:
//!
//! * [`cbor`]: CBOR (RFC 8949), every major type, definite and indefinite lengths, half floats;
//! * [`json`]: JSON (RFC 8259);
//! * [`senml`]: SenML packs (RFC 8428): CBOR labels, resolution of base values, output shapes;
//! * [`to_json`]: a payload of Content-Format 60, 110 or 112 as JSON text.
//!
//! Every decoder bounds its allocations by the input's size and its nesting depth, and reports
//! where and what went wrong, so a hostile payload costs at most its own size. Used by
//! `rules/senml` (the uplink transform) and `examples/thingsboard`.

pub mod cbor;
pub mod json;
pub mod senml;
pub mod value;

pub use value::Value;

/// CoAP Content-Format `application/cbor`.
pub const CBOR: u16 = 60;
/// CoAP Content-Format `application/senml+json`.
pub const SENML_JSON: u16 = 110;
/// CoAP Content-Format `application/senml+cbor`.
pub const SENML_CBOR: u16 = 112;

/// The shape of the JSON a SenML pack becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// A SenML+JSON array of records.
    #[default]
    Records,
    /// One object mapping each resolved name to its value.
    Object,
}

/// How a payload is turned into JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The shape of a SenML pack.
    pub output: Output,
    /// Apply base values (records output; the object output always resolves).
    pub resolve: bool,
    /// Also convert plain CBOR (60).
    pub cbor: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { output: Output::Records, resolve: true, cbor: true }
    }
}

/// The JSON for `payload` of Content-Format `content_format`: `Ok(None)` when the format is
/// not one this converts, `Err` with a diagnostic when the payload does not parse.
pub fn to_json(payload: &[u8], content_format: Option<u16>, options: &Options) -> Result<Option<String>, String> {
    let pack = match content_format {
        Some(SENML_JSON) => json::parse(payload).map_err(|e| format!("SenML+JSON: {e}"))?,
        Some(SENML_CBOR) => cbor::decode(payload).map_err(|e| format!("SenML+CBOR: {e}"))?,
        Some(CBOR) if options.cbor => {
            return cbor::decode(payload).map(|v| Some(v.to_json())).map_err(|e| format!("CBOR: {e}"));
        }
        _ => return Ok(None),
    };
    let records = senml::records(pack)?;
    Ok(Some(match options.output {
        Output::Records if options.resolve => senml::to_records_json(&senml::resolve(records)?),
        Output::Records => senml::to_records_json(&records),
        Output::Object => senml::to_object_json(&senml::resolve(records)?),
    }))
}
