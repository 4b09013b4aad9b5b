//! Incoming requests: deduplication, the checks the endpoint answers itself, block-wise
//! steps, and delivery to the app.

use std::net::SocketAddr;
use std::time::Instant;

use coap_lite::{MessageType, Packet};
use tracing::debug;

use super::exchange::{Evicted, Seen};
use super::message::{self, Header, code};
use super::pending::Pending;
use super::{Endpoint, Event, GoneReason, IncomingRequest};

/// What a request arrived with, carried through the steps of [`Endpoint::handle_request`].
struct Arrival {
    peer: SocketAddr,
    header: Header,
    token: Vec<u8>,
}

impl Endpoint {
    /// Handles a CON or NON carrying a request code (0.01..=0.31), in four steps: a duplicate
    /// is answered from the dedup cache; the options are parsed (or the request refused); a
    /// block-wise transfer goes on or is served from the cache; a complete request is delivered
    /// to the app. Each step that answers by itself ends the handling.
    pub(super) fn handle_request(&mut self, peer: SocketAddr, header: Header, packet: Packet, now: Instant) {
        if self.deduplicate(peer, header, now) {
            return;
        }
        let arrival = Arrival { peer, header, token: packet.get_token().to_vec() };
        let Some((method, options)) = self.parse(&arrival, &packet, now) else { return };
        let Some(payload) = self.block_wise(&arrival, method, &options, packet.payload, now) else { return };
        self.deliver(arrival, method, options, payload, now);
    }

    /// Step 1: a duplicate CON gets its answer again (or an ACK while the app is still at it),
    /// a duplicate NON is dropped: `true`. A new Message-ID is remembered: `false`.
    fn deduplicate(&mut self, peer: SocketAddr, header: Header, now: Instant) -> bool {
        let confirmable = header.kind == MessageType::Confirmable;
        let key = (peer, header.mid);
        let (reply, request) = match self.dedup.see(key, confirmable, now) {
            Seen::First { evicted } => {
                if let Some(Evicted { unanswered }) = evicted {
                    self.stats.dedup_evictions += 1;
                    if let Some(id) = unanswered {
                        self.requests.forget(id);
                    }
                }
                return false;
            }
            Seen::Again { reply, request } => (reply, request),
        };
        self.stats.duplicates += 1;
        if !confirmable {
            debug!(%peer, mid = header.mid, "Dropped duplicate NON.");
            return true;
        }
        let reply = reply.unwrap_or_else(|| {
            // Still with the app: acknowledge now, the answer goes separately.
            let ack = message::empty(MessageType::Acknowledgement, header.mid);
            self.dedup.remember_reply(&key, ack.clone(), false);
            if let Some(id) = request {
                self.requests.acked(id);
            }
            ack
        });
        if !self.check.allows(peer, self.datagram_len, reply.len(), now) {
            // A forged duplicate must not reflect a large cached answer to its victim; a
            // real retransmission is as large as the original and is answered.
            debug!(%peer, mid = header.mid, "Dropped a duplicate smaller than the answer it would replay.");
            return true;
        }
        debug!(%peer, mid = header.mid, "Replayed the answer to a duplicate CON.");
        self.transmit(peer, reply);
        true
    }

    /// Step 2: the method and options; a request that cannot be served (an unknown critical
    /// option, a bad Uri-Path) is answered with the reason.
    fn parse(&mut self, arrival: &Arrival, packet: &Packet, now: Instant) -> Option<(u8, message::RequestOptions)> {
        match message::parse_request(packet) {
            Ok(parsed) => Some(parsed),
            Err(error) => {
                let Arrival { peer, header, token } = arrival;
                debug!(%peer, mid = header.mid, %error, "Rejected a request.");
                let mut reply = message::packet(MessageType::Acknowledgement, error.code(), 0, token);
                reply.payload = error.to_string().into_bytes();
                self.reply_locally(*peer, *header, reply, now);
                None
            }
        }
    }

    /// Step 3: block-wise transfers. A later Block2 block of a cached answer is served here
    /// (any method: after a Block1 upload the client asks for the rest of the response with
    /// the upload's method, RFC 7959 §3.3); a Block1 block that is not the last is
    /// acknowledged with 2.31. The complete body otherwise.
    fn block_wise(
        &mut self,
        arrival: &Arrival,
        method: u8,
        options: &message::RequestOptions,
        payload: Vec<u8>,
        now: Instant,
    ) -> Option<Vec<u8>> {
        let Arrival { peer, header, token } = arrival;
        if let Some(block) = options.block2.filter(|b| b.num > 0)
            && options.block1.is_none()
            && let Some(reply) = self.cached_block2(*peer, &options.uri_key(), block, token, now)
        {
            debug!(%peer, mid = header.mid, num = block.num, "Served a Block2 block from the cache.");
            self.reply_locally(*peer, *header, reply, now);
            return None;
        }
        match self.receive_block1(*peer, method, options, payload, token, now) {
            Ok(body) => Some(body),
            Err(reply) => {
                self.reply_locally(*peer, *header, reply, now);
                None
            }
        }
    }

    /// Step 4: a complete request. Observe=1 ends the device's relation on the path first;
    /// the request is remembered until the app answers it, and handed over as an event.
    fn deliver(
        &mut self,
        arrival: Arrival,
        method: u8,
        options: message::RequestOptions,
        payload: Vec<u8>,
        now: Instant,
    ) {
        let Arrival { peer, header, token } = arrival;
        let confirmable = header.kind == MessageType::Confirmable;
        let path_key = options.path_key();
        if method == code::GET
            && options.observe == Some(1)
            && let Some(old) = self.observers.find(peer, &path_key)
        {
            self.drop_observer(old, Some(GoneReason::Deregistered));
        }
        let id = self.requests.insert(
            Pending {
                peer,
                mid: header.mid,
                token: token.clone(),
                confirmable,
                acked: false,
                method,
                observe: options.observe,
                uri_key: options.uri_key(),
                path_key,
                block1: options.block1,
                block2: options.block2,
                no_response: options.no_response,
                request_len: self.datagram_len,
            },
            now + self.config.separate_response_after,
        );
        self.dedup.delivered(&(peer, header.mid), id);
        self.stats.requests += 1;
        debug!(%peer, mid = header.mid, request = id.0, method, path = %options.path_key(), "Request received.");
        tracing::trace!(request = id.0, payload = ?payload, "Request payload.");
        self.events.push_back(Event::Request(IncomingRequest {
            id,
            peer,
            confirmable,
            method,
            path: options.path,
            query: options.query,
            content_format: options.content_format,
            accept: options.accept,
            observe: options.observe,
            max_age: options.max_age,
            token,
            payload,
            identity: None,
        }));
    }

    /// Answers a request just received: piggybacked in the ACK of a CON (remembered for
    /// duplicates), or as a NON with a fresh Message-ID.
    pub(super) fn reply_locally(&mut self, peer: SocketAddr, header: Header, mut reply: Packet, now: Instant) {
        self.stats.answered_locally += 1;
        let confirmable = header.kind == MessageType::Confirmable;
        if confirmable {
            reply.header.set_type(MessageType::Acknowledgement);
            reply.header.message_id = header.mid;
        } else {
            reply.header.set_type(MessageType::NonConfirmable);
            reply.header.message_id = self.next_mid();
        }
        if !reply.payload.is_empty()
            && let Some(allowance) = self.check.allowance(peer, self.datagram_len, now)
        {
            let size = message::encode(&reply).map_or(0, |bytes| bytes.len());
            if !self.check.allows(peer, self.datagram_len, size, now) {
                // Beyond the budget, the diagnostic of an unverified peer's error is cut to
                // the amplification allowance.
                message::cut_payload(&mut reply, allowance);
            }
        }
        let Some(bytes) = message::encode(&reply) else { return };
        if confirmable {
            self.dedup.remember_reply(&(peer, header.mid), bytes.clone(), false);
        }
        self.transmit(peer, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::Response;
    use crate::coap::message::opt;
    use crate::coap::testing::*;

    fn rejected(p: &Packet) -> Packet {
        let mut h = Harness::new();
        h.send(p);
        assert!(h.events().is_empty());
        let reply = h.one();
        assert_eq!(h.ep.stats().answered_locally, 1);
        reply
    }

    #[test]
    fn unknown_critical_option_gets_4_02_naming_it() {
        let mut get = con_get(0x0a0b, &[3], "x");
        message::add(&mut get, 2049, vec![1]);
        let reply = rejected(&get);
        assert_eq!(reply.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(reply.header.message_id, 0x0a0b);
        assert_eq!(u8::from(reply.header.code), 0x82);
        assert_eq!(reply.get_token(), [3]);
        assert_eq!(reply.payload, b"Unrecognized critical option 2049");
    }

    #[test]
    fn unknown_elective_option_is_ignored() {
        let mut h = Harness::new();
        let mut get = con_get(1, &[], "x");
        message::add(&mut get, 2048, vec![1]);
        h.send(&get);
        assert_eq!(h.request().path, ["x"]);
    }

    #[test]
    fn method_0_08_gets_4_05() {
        let reply = rejected(&decode(&[0x40, 0x08, 0x12, 0x34, 0xb1, b'x']));
        assert_eq!(u8::from(reply.header.code), 0x85);
        assert_eq!(reply.header.message_id, 0x1234);
    }

    #[test]
    fn proxy_uri_gets_5_05() {
        let mut get = con_get(1, &[], "");
        message::add(&mut get, opt::PROXY_URI, b"coap://example.com/".to_vec());
        assert_eq!(u8::from(rejected(&get).header.code), 0xa5);
    }

    #[test]
    fn non_utf8_path_gets_4_00() {
        let reply = rejected(&decode(&[0x40, 0x01, 0, 1, 0xb2, 0xc3, 0x28]));
        assert_eq!(u8::from(reply.header.code), 0x80);
    }

    #[test]
    fn rejected_non_request_gets_a_non_answer() {
        let mut get = request(MessageType::NonConfirmable, 0x01, 0x0404, &[], "x");
        message::add(&mut get, 9, vec![]);
        let reply = rejected(&get);
        assert_eq!(reply.header.get_type(), MessageType::NonConfirmable);
        assert_ne!(reply.header.message_id, 0x0404);
    }

    #[test]
    fn duplicate_of_a_rejected_con_replays_the_rejection() {
        let mut h = Harness::new();
        let bytes = [0x40, 0x09, 0x12, 0x34];
        h.send_bytes(&bytes);
        let first = h.transmits();
        h.send_bytes(&bytes);
        assert_eq!(h.transmits(), first);
    }

    #[test]
    fn request_options_reach_the_app() {
        let mut h = Harness::new();
        let mut post = request(MessageType::Confirmable, 0x02, 1, &[1, 2, 3, 4], "mqtt/a/b");
        message::add(&mut post, opt::URI_HOST, b"gw".to_vec());
        message::add(&mut post, opt::URI_PORT, vec![0x16, 0x33]);
        message::add(&mut post, opt::URI_QUERY, b"c=dev1".to_vec());
        message::add(&mut post, opt::URI_QUERY, b"qos=1".to_vec());
        message::add_uint(&mut post, opt::CONTENT_FORMAT, 50);
        message::add_uint(&mut post, opt::ACCEPT, 60);
        post.payload = b"{\"t\":1}".to_vec();
        h.send(&post);
        let r = h.request();
        assert_eq!((r.peer, r.confirmable, r.method), (peer(), true, 2));
        assert_eq!(r.path, ["mqtt", "a", "b"]);
        assert_eq!(r.query, ["c=dev1", "qos=1"]);
        assert_eq!((r.content_format, r.accept, r.observe), (Some(50), Some(60), None));
        assert_eq!(r.token, [1, 2, 3, 4]);
        assert_eq!(r.payload, b"{\"t\":1}");
        assert!(!r.is_observe_registration());
        h.ep.respond(r.id, Response::default(), h.now);
    }
}
