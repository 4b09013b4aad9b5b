//! The protocol spoken on the connection: MQTT 5 or MQTT 3.1.1.
//!
//! The sans-IO [`State`](super::state::State) works in MQTT 5 packets only. [`Wire`] turns
//! them into bytes of the version the broker accepted and the broker's bytes back into MQTT 5
//! packets, so that nothing above this module knows which version is in use. What 3.1.1 cannot
//! carry is dropped on the way out (publish properties, subscription identifiers, subscribe
//! options) and absent on the way in; the CONNACK of a 3.1.1 broker becomes an MQTT 5 CONNACK
//! that says "no subscription identifiers", which the subscription set already handles (a
//! message then reaches every observer whose filter matches it).
//!
//! PUBLISH is the one packet on the hot path; on 3.1.1 it is encoded here straight from the
//! MQTT 5 publish (no conversion, no copy of the topic or payload into another packet type).

use std::fmt;

use bytes::{BufMut, BytesMut};
use rumqttc::mqttbytes as v4bytes;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Packet, PingResp, PubAck, PubAckReason, PubComp, PubCompReason,
    PubRec, PubRecReason, PubRel, PubRelReason, Publish, SubAck, SubscribeReasonCode, UnsubAck, UnsubAckReason,
};
use rumqttc::v5::mqttbytes::{Error as CodecError, QoS};

/// The largest packet read from the broker: what MQTT can frame.
const MAX_INCOMING: usize = 268_435_460;

/// The MQTT version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wire {
    /// MQTT 5.
    #[default]
    V5,
    /// MQTT 3.1.1 (protocol level 4).
    V311,
}

impl fmt::Display for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Wire::V5 => "5",
            Wire::V311 => "3.1.1",
        })
    }
}

/// A packet from the broker that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct WireError(String);

impl WireError {
    pub(crate) fn new(text: String) -> Self {
        WireError(text)
    }
}

impl From<CodecError> for WireError {
    fn from(e: CodecError) -> Self {
        WireError(e.to_string())
    }
}

impl Wire {
    /// Decodes the next packet in `rbuf`; None when it is not complete yet.
    pub(crate) fn read(self, rbuf: &mut BytesMut) -> Result<Option<Packet>, WireError> {
        match self {
            Wire::V5 => match Packet::read(rbuf, None) {
                Ok(packet) => Ok(Some(packet)),
                Err(CodecError::InsufficientBytes(_)) => Ok(None),
                Err(e) => Err(e.into()),
            },
            Wire::V311 => match v4::Packet::read(rbuf, MAX_INCOMING) {
                Ok(packet) => from_v4(packet).map(Some),
                Err(v4bytes::Error::InsufficientBytes(_)) => Ok(None),
                Err(e) => Err(WireError(e.to_string())),
            },
        }
    }

    /// Serialises `packet` into `out`; returns the bytes written.
    pub(crate) fn write(self, packet: &Packet, out: &mut BytesMut) -> Result<usize, WireError> {
        match self {
            Wire::V5 => Ok(packet.write(out, None)?),
            Wire::V311 => match packet {
                Packet::Publish(publish) => write_publish_v4(publish, out),
                other => {
                    let packet = to_v4(other)?;
                    packet.write(out, usize::MAX).map_err(|e| WireError(e.to_string()))
                }
            },
        }
    }

    /// Serialises a publish (the hot path: no conversion on either version).
    pub(crate) fn write_publish(self, publish: &Publish, out: &mut BytesMut) -> Result<usize, WireError> {
        match self {
            Wire::V5 => Ok(publish.write(out)?),
            Wire::V311 => write_publish_v4(publish, out),
        }
    }
}

/// A 3.1.1 PUBLISH (§3.3): fixed header, topic, packet id when QoS > 0, payload.
fn write_publish_v4(publish: &Publish, out: &mut BytesMut) -> Result<usize, WireError> {
    if publish.topic.is_empty() || publish.topic.len() > usize::from(u16::MAX) {
        return Err(WireError("invalid topic length".into()));
    }
    if publish.qos != QoS::AtMostOnce && publish.pkid == 0 {
        return Err(WireError("packet id 0 on a QoS > 0 publish".into()));
    }
    let id_len = if publish.qos == QoS::AtMostOnce { 0 } else { 2 };
    let remaining = 2 + publish.topic.len() + id_len + publish.payload.len();
    if remaining > 268_435_455 {
        return Err(WireError("payload too large for MQTT".into()));
    }
    let header = 0x30 | (u8::from(publish.dup) << 3) | ((publish.qos as u8) << 1) | u8::from(publish.retain);
    let start = out.len();
    out.reserve(5 + remaining);
    out.put_u8(header);
    let mut len = remaining;
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            break;
        }
    }
    out.put_u16(publish.topic.len() as u16);
    out.extend_from_slice(&publish.topic);
    if id_len > 0 {
        out.put_u16(publish.pkid);
    }
    out.extend_from_slice(&publish.payload);
    Ok(out.len() - start)
}

fn qos_to_v4(qos: QoS) -> v4bytes::QoS {
    match qos {
        QoS::AtMostOnce => v4bytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => v4bytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => v4bytes::QoS::ExactlyOnce,
    }
}

fn qos_from_v4(qos: v4bytes::QoS) -> QoS {
    match qos {
        v4bytes::QoS::AtMostOnce => QoS::AtMostOnce,
        v4bytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
        v4bytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// The 3.1.1 form of a packet the client sends (other than PUBLISH).
fn to_v4(packet: &Packet) -> Result<v4::Packet, WireError> {
    Ok(match packet {
        Packet::PubAck(ack) => v4::Packet::PubAck(v4::PubAck::new(ack.pkid)),
        Packet::PubRec(rec) => v4::Packet::PubRec(v4::PubRec::new(rec.pkid)),
        Packet::PubRel(rel) => v4::Packet::PubRel(v4::PubRel::new(rel.pkid)),
        Packet::PubComp(comp) => v4::Packet::PubComp(v4::PubComp::new(comp.pkid)),
        Packet::Subscribe(sub) => v4::Packet::Subscribe(v4::Subscribe {
            pkid: sub.pkid,
            filters: sub.filters.iter().map(|f| v4::SubscribeFilter::new(f.path.clone(), qos_to_v4(f.qos))).collect(),
        }),
        Packet::Unsubscribe(unsub) => {
            v4::Packet::Unsubscribe(v4::Unsubscribe { pkid: unsub.pkid, topics: unsub.filters.clone() })
        }
        Packet::PingReq(_) => v4::Packet::PingReq,
        Packet::Disconnect(_) => v4::Packet::Disconnect,
        _ => return Err(WireError("the client sends no such packet on MQTT 3.1.1".into())),
    })
}

/// The MQTT 5 form of a packet a 3.1.1 broker sent.
fn from_v4(packet: v4::Packet) -> Result<Packet, WireError> {
    Ok(match packet {
        v4::Packet::ConnAck(ack) => Packet::ConnAck(connack_from_v4(&ack)),
        v4::Packet::Publish(p) => {
            let mut publish = Publish::new(p.topic, qos_from_v4(p.qos), p.payload, None);
            publish.dup = p.dup;
            publish.retain = p.retain;
            publish.pkid = p.pkid;
            Packet::Publish(publish)
        }
        v4::Packet::PubAck(ack) => {
            Packet::PubAck(PubAck { pkid: ack.pkid, reason: PubAckReason::Success, properties: None })
        }
        v4::Packet::PubRec(rec) => {
            Packet::PubRec(PubRec { pkid: rec.pkid, reason: PubRecReason::Success, properties: None })
        }
        v4::Packet::PubRel(rel) => {
            Packet::PubRel(PubRel { pkid: rel.pkid, reason: PubRelReason::Success, properties: None })
        }
        v4::Packet::PubComp(comp) => {
            Packet::PubComp(PubComp { pkid: comp.pkid, reason: PubCompReason::Success, properties: None })
        }
        v4::Packet::SubAck(ack) => Packet::SubAck(SubAck {
            pkid: ack.pkid,
            return_codes: ack
                .return_codes
                .iter()
                .map(|code| match code {
                    v4::SubscribeReasonCode::Success(qos) => SubscribeReasonCode::Success(qos_from_v4(*qos)),
                    v4::SubscribeReasonCode::Failure => SubscribeReasonCode::Unspecified,
                })
                .collect(),
            properties: None,
        }),
        // 3.1.1 has no reason codes: an UNSUBACK means done.
        v4::Packet::UnsubAck(ack) => {
            Packet::UnsubAck(UnsubAck { pkid: ack.pkid, reasons: vec![UnsubAckReason::Success], properties: None })
        }
        v4::Packet::PingResp => Packet::PingResp(PingResp),
        other => return Err(WireError(format!("unexpected {other:?} from an MQTT 3.1.1 broker"))),
    })
}

/// A 3.1.1 CONNACK as MQTT 5 sees it: the return code, and no subscription identifiers.
pub(crate) fn connack_from_v4(ack: &v4::ConnAck) -> ConnAck {
    let code = match ack.code {
        v4::ConnectReturnCode::Success => ConnectReturnCode::Success,
        v4::ConnectReturnCode::RefusedProtocolVersion => ConnectReturnCode::UnsupportedProtocolVersion,
        v4::ConnectReturnCode::BadClientId => ConnectReturnCode::ClientIdentifierNotValid,
        v4::ConnectReturnCode::ServiceUnavailable => ConnectReturnCode::ServerUnavailable,
        v4::ConnectReturnCode::BadUserNamePassword => ConnectReturnCode::BadUserNamePassword,
        v4::ConnectReturnCode::NotAuthorized => ConnectReturnCode::NotAuthorized,
    };
    let properties = ConnAckProperties { subscription_identifiers_available: Some(0), ..no_connack_properties() };
    ConnAck { session_present: ack.session_present, code, properties: Some(properties) }
}

/// CONNACK properties that say nothing (rumqttc's type has no constructor or `Default`).
pub(crate) fn no_connack_properties() -> ConnAckProperties {
    ConnAckProperties {
        session_expiry_interval: None,
        receive_max: None,
        max_qos: None,
        retain_available: None,
        max_packet_size: None,
        assigned_client_identifier: None,
        topic_alias_max: None,
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
        server_keep_alive: None,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}

/// Whether the first bytes the broker answered a MQTT 5 CONNECT with are a refusal of the
/// protocol version: a 3.1.1 CONNACK (remaining length 2, which MQTT 5 never sends) with
/// return code 1, or a MQTT 5 CONNACK with 0x84 (Unsupported Protocol Version).
pub(crate) fn refuses_v5(first: &[u8]) -> bool {
    match first {
        [0x20, 2, _, code, ..] => *code == 1,
        [0x20, len, _, code, ..] if *len > 2 => *code == 0x84,
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn a_v311_publish_is_what_the_v4_codec_reads() {
        for (qos, pkid) in [(QoS::AtMostOnce, 0), (QoS::AtLeastOnce, 7), (QoS::ExactlyOnce, 9)] {
            let payload = Bytes::from(vec![b'x'; 300]); // a two-byte remaining length
            let mut publish = Publish::new("bench/1", qos, payload.clone(), None);
            publish.pkid = pkid;
            publish.retain = true;
            let mut out = BytesMut::new();
            let n = Wire::V311.write_publish(&publish, &mut out).unwrap();
            assert_eq!(n, out.len());
            let v4::Packet::Publish(read) = v4::Packet::read(&mut out, MAX_INCOMING).unwrap() else { panic!() };
            assert_eq!((read.topic.as_str(), read.pkid, read.retain), ("bench/1", pkid, true));
            assert_eq!((qos_from_v4(read.qos), read.payload), (qos, payload));
        }
    }

    #[test]
    fn v311_packets_come_back_as_their_v5_forms() {
        let mut buf = BytesMut::new();
        v4::Packet::SubAck(v4::SubAck::new(3, vec![v4::SubscribeReasonCode::Failure]))
            .write(&mut buf, usize::MAX)
            .unwrap();
        v4::Packet::PubAck(v4::PubAck::new(4)).write(&mut buf, usize::MAX).unwrap();
        let Some(Packet::SubAck(ack)) = Wire::V311.read(&mut buf).unwrap() else { panic!() };
        assert_eq!((ack.pkid, ack.return_codes), (3, vec![SubscribeReasonCode::Unspecified]));
        let Some(Packet::PubAck(ack)) = Wire::V311.read(&mut buf).unwrap() else { panic!() };
        assert_eq!((ack.pkid, ack.reason), (4, PubAckReason::Success));
        assert!(Wire::V311.read(&mut buf).unwrap().is_none());
    }

    #[test]
    fn a_v311_connack_says_there_are_no_subscription_identifiers() {
        let ack = connack_from_v4(&v4::ConnAck::new(v4::ConnectReturnCode::Success, false));
        assert_eq!(ack.code, ConnectReturnCode::Success);
        assert_eq!(ack.properties.unwrap().subscription_identifiers_available, Some(0));
    }

    #[test]
    fn a_protocol_refusal_is_recognised_in_either_version() {
        assert!(refuses_v5(&[0x20, 2, 0, 1]));
        assert!(refuses_v5(&[0x20, 3, 0, 0x84, 0]));
        assert!(!refuses_v5(&[0x20, 2, 0, 5]));
        assert!(!refuses_v5(&[0x20, 3, 0, 0, 0]));
    }
}
