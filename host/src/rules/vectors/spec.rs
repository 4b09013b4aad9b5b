//! The inputs of a test vector as written (in `rule.yaml` or the package's JSON), and the SDK
//! values they build: a request, a principal, an uplink or a downlink message. A payload is
//! written as `payload` (UTF-8 text), `payload_hex` or `payload_json`, at most one of them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_sdk::{Downlink, Identity, MessageType, Method, Principal, Request, Uplink};

use super::VectorError;

/// `publish` or `subscribe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessSpec {
    /// [`Access::Publish`]
    Publish,
    /// [`Access::Subscribe`]
    Subscribe,
}

/// A path: `"a/b/c"` or `["a", "b/c"]` (a list keeps `/` inside a segment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PathSpec {
    /// Segments joined with `/`.
    Joined(String),
    /// Segments one by one.
    Segments(Vec<String>),
}

/// A request as written in a vector.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// `GET` (default), `POST`, `PUT`, `DELETE`, `FETCH`, `PATCH`, `IPATCH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `CON` (default) or `NON`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub message_type: Option<String>,
    /// The Uri-Path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathSpec>,
    /// Uri-Query entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<String>,
    /// Content-Format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_format: Option<u16>,
    /// Accept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept: Option<u16>,
    /// Observe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observe: Option<u32>,
    /// Max-Age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u32>,
    /// The device's address (default `192.0.2.1:5683`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The payload as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The payload as hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<String>,
    /// The payload as JSON (serialized compactly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_json: Option<Value>,
    /// DTLS PSK identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psk_identity: Option<String>,
    /// Certificate subject CN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_subject: Option<String>,
    /// Certificate SANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cert_sans: Vec<String>,
    /// Certificate SHA-256, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_fingerprint: Option<String>,
}

/// A principal as written in a vector.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalSpec {
    /// Client id.
    #[serde(default)]
    pub client_id: String,
    /// User name.
    #[serde(default)]
    pub username: Option<String>,
    /// Attributes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// An uplink message as written in a vector.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkSpec {
    /// The topic chosen by route.
    #[serde(default)]
    pub topic: String,
    /// The payload as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The payload as hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<String>,
    /// The payload as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_json: Option<Value>,
    /// Content-Format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_format: Option<u16>,
}

/// A downlink message as written in a vector.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownlinkSpec {
    /// The MQTT topic.
    #[serde(default)]
    pub topic: String,
    /// The payload as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The payload as hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<String>,
    /// The payload as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_json: Option<Value>,
    /// MQTT v5 content type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// MQTT v5 user properties.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user_properties: BTreeMap<String, String>,
}

fn payload(text: &Option<String>, hex_text: &Option<String>, json: &Option<Value>) -> Result<Vec<u8>, VectorError> {
    match (text, hex_text, json) {
        (Some(t), None, None) => Ok(t.as_bytes().to_vec()),
        (None, Some(h), None) => hex::decode(h.trim()).map_err(VectorError::PayloadHex),
        (None, None, Some(j)) => Ok(j.to_string().into_bytes()),
        (None, None, None) => Ok(Vec::new()),
        _ => Err(VectorError::PayloadForms),
    }
}

impl RequestSpec {
    /// The SDK request.
    pub fn build(&self) -> Result<Request, VectorError> {
        let method = match self.method.as_deref().map(str::to_ascii_uppercase).as_deref() {
            None | Some("GET") => Method::Get,
            Some("POST") => Method::Post,
            Some("PUT") => Method::Put,
            Some("DELETE") => Method::Delete,
            Some("FETCH") => Method::Fetch,
            Some("PATCH") => Method::Patch,
            Some("IPATCH") => Method::IPatch,
            Some(other) => return Err(VectorError::Method(other.into())),
        };
        let message_type = match self.message_type.as_deref().map(str::to_ascii_uppercase).as_deref() {
            None | Some("CON") => MessageType::Confirmable,
            Some("NON") => MessageType::NonConfirmable,
            Some(other) => return Err(VectorError::MessageType(other.into())),
        };
        let path = match &self.path {
            None => Vec::new(),
            Some(PathSpec::Segments(s)) => s.clone(),
            Some(PathSpec::Joined(s)) => {
                s.trim_start_matches('/').split('/').filter(|p| !p.is_empty()).map(str::to_owned).collect()
            }
        };
        Ok(Request {
            method,
            message_type,
            path,
            query: self.query.clone(),
            content_format: self.content_format,
            accept: self.accept,
            observe: self.observe,
            max_age: self.max_age,
            peer: self.peer.clone().unwrap_or_else(|| "192.0.2.1:5683".into()),
            identity: Identity {
                psk_identity: self.psk_identity.clone(),
                cert_subject: self.cert_subject.clone(),
                cert_sans: self.cert_sans.clone(),
                cert_fingerprint: self.cert_fingerprint.clone(),
            },
            payload: payload(&self.payload, &self.payload_hex, &self.payload_json)?,
        })
    }
}

impl PrincipalSpec {
    /// The SDK principal.
    pub fn build(&self) -> Principal {
        Principal {
            client_id: self.client_id.clone(),
            username: self.username.clone(),
            attributes: self.attributes.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }
}

impl UplinkSpec {
    /// The SDK uplink message.
    pub fn build(&self) -> Result<Uplink, VectorError> {
        Ok(Uplink {
            topic: self.topic.clone(),
            payload: payload(&self.payload, &self.payload_hex, &self.payload_json)?,
            content_format: self.content_format,
        })
    }
}

impl DownlinkSpec {
    /// The SDK downlink message.
    pub fn build(&self) -> Result<Downlink, VectorError> {
        Ok(Downlink {
            topic: self.topic.clone(),
            payload: payload(&self.payload, &self.payload_hex, &self.payload_json)?,
            content_type: self.content_type.clone(),
            user_properties: self.user_properties.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        })
    }
}
