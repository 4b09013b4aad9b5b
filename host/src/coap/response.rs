//! The app's answers: piggybacked in the ACK when in time, else a separate CON; NON for NON.

use std::time::Instant;

use coap_lite::{MessageType, Packet};
use tracing::debug;

use super::block::Body;
use super::exchange::Owner;
use super::message::{self, Block, code, opt};
use super::pending::Pending;
use super::{Endpoint, GoneReason, ObserverId, RequestId, Response};

impl Endpoint {
    /// Answers request `id`. With `response.observe`, registers the relation and returns its id.
    ///
    /// A relation is only registered for a GET with Observe=0 answered 2.xx and while
    /// `max_observers` is not reached; otherwise the response goes without Observe. A
    /// re-registration the app answers without `observe` ends the peer's old relation on that
    /// path ([`GoneReason::Deregistered`]). Unknown or already answered ids are ignored.
    pub fn respond(&mut self, id: RequestId, response: Response, now: Instant) -> Option<ObserverId> {
        let Some(pending) = self.requests.take(id) else {
            debug!(request = id.0, "Dropped a response to an unknown or answered request.");
            return None;
        };
        let mut observer = None;
        let mut sequence = None;
        if pending.method == code::GET && pending.observe == Some(0) {
            if response.observe && response.code >> 5 == 2 {
                if let Some((new, seq)) = self.register_observer(&pending, now) {
                    observer = Some(new);
                    sequence = Some(seq);
                }
            } else if let Some(old) = self.observers.find(pending.peer, &pending.path_key) {
                self.drop_observer(old, Some(GoneReason::Deregistered));
            }
        }
        let mut packet = message::packet(MessageType::NonConfirmable, response.code, 0, &pending.token);
        if let Some(sequence) = sequence {
            message::add_uint(&mut packet, opt::OBSERVE, sequence);
        }
        for segment in response.location_path {
            message::add(&mut packet, opt::LOCATION_PATH, segment.into_bytes());
        }
        if let Some(block) = pending.block1 {
            message::add(&mut packet, opt::BLOCK1, Block { more: false, ..block }.encode());
        }
        if response.secret {
            tracing::trace!(request = id.0, len = response.payload.len(), "Response payload withheld (a credential).");
        } else {
            tracing::trace!(request = id.0, payload = ?response.payload, "Response payload.");
        }
        let body =
            Body { content_format: response.content_format, max_age: response.max_age, payload: response.payload };
        self.attach_body(&mut packet, pending.peer, &pending.uri_key, pending.block2, body, now);
        self.send_response(&pending, packet, observer, now);
        observer
    }

    /// Requests handed to the app that it has not answered yet.
    pub fn unanswered(&self) -> usize {
        self.requests.len()
    }

    /// Answers every request the app has not answered with `response` (when the app stops);
    /// returns how many.
    pub fn refuse_unanswered(&mut self, response: &Response, now: Instant) -> usize {
        let ids = self.requests.ids();
        for &id in &ids {
            self.respond(id, response.clone(), now);
        }
        ids.len()
    }

    /// Answers with 5.03 Service Unavailable and Max-Age 1 because the app is overloaded.
    pub fn respond_busy(&mut self, id: RequestId, now: Instant) {
        self.stats.busy_rejections += 1;
        let response = Response { code: code::SERVICE_UNAVAILABLE, max_age: Some(1), ..Response::default() };
        self.respond(id, response, now);
    }

    /// Sends the answer to `pending`; `registered` is the relation it starts, if any.
    fn send_response(&mut self, pending: &Pending, mut packet: Packet, registered: Option<ObserverId>, now: Instant) {
        let (peer, mid) = (pending.peer, pending.mid);
        if pending.suppresses(u8::from(packet.header.code)) {
            debug!(%peer, mid, "Answer suppressed by No-Response.");
            if pending.confirmable && !pending.acked {
                let ack = message::empty(MessageType::Acknowledgement, mid);
                self.dedup.remember_reply(&(peer, mid), ack.clone(), true);
                self.transmit(peer, ack);
            }
            return;
        }
        if !packet.payload.is_empty() {
            packet = self.within_allowance(pending, packet, now);
        }
        if let Some(id) = registered
            && self.check.unverified(peer, now)
        {
            // A relation with a device that has not shown it receives at its address: the
            // answer goes as a CON (after an empty ACK to a CON request), whose ACK verifies
            // the address; unacknowledged or reset, the relation ends, so registrations forged
            // in a victim's name leave nothing behind.
            if pending.confirmable && !pending.acked {
                let ack = message::empty(MessageType::Acknowledgement, mid);
                self.dedup.remember_reply(&(peer, mid), ack.clone(), true);
                self.transmit(peer, ack);
            }
            debug!(%peer, mid, observer = id.0, "Registration answered with a CON to verify the address.");
            if let Some(sent) = self.send_con(peer, packet, Owner::Registration(id), now) {
                // Notifications wait behind it, as behind a CON notification.
                self.registration_in_flight(id, sent);
            }
            return;
        }
        if pending.confirmable && !pending.acked {
            packet.header.set_type(MessageType::Acknowledgement);
            packet.header.message_id = mid;
            let Some(bytes) = message::encode(&packet) else { return };
            self.dedup.remember_reply(&(peer, mid), bytes.clone(), true);
            self.transmit(peer, bytes);
        } else if pending.confirmable {
            debug!(%peer, mid, "Sending a separate response.");
            self.send_con(peer, packet, Owner::Response, now);
        } else {
            packet.header.message_id = self.next_mid();
            if let Some(bytes) = message::encode(&packet) {
                self.transmit(peer, bytes);
            }
        }
    }

    /// An answer to an unverified peer, at most `amplification_factor` times its request
    /// unless the amplification budget pays for the rest (RFC 9175 §2.4). Without budget, an
    /// error keeps its code, which is what devices act on, and its diagnostic is cut; a larger
    /// success becomes a 4.01 with an Echo value, which the client repeats the request with
    /// to get the answer.
    fn within_allowance(&mut self, pending: &Pending, mut packet: Packet, now: Instant) -> Packet {
        let peer = pending.peer;
        let Some(allowance) = self.check.allowance(peer, pending.request_len, now) else { return packet };
        let size = message::encode(&packet).map_or(0, |bytes| bytes.len());
        if size <= allowance {
            return packet;
        }
        if self.check.allows(peer, pending.request_len, size, now) {
            return packet;
        }
        let code = u8::from(packet.header.code);
        if code >> 5 >= 4 {
            message::cut_payload(&mut packet, allowance);
            debug!(%peer, mid = pending.mid, code, "Cut a diagnostic payload to the allowance of an unverified peer.");
            return packet;
        }
        self.stats.echo_challenges += 1;
        debug!(%peer, mid = pending.mid, size, request = pending.request_len, "Answer too large for an unverified peer; sent an Echo value.");
        let mut challenge = message::packet(MessageType::NonConfirmable, code::UNAUTHORIZED, 0, &pending.token);
        message::add(&mut challenge, opt::ECHO, self.check.echo(peer, now));
        super::endpoint::explain_challenge(&mut challenge, allowance);
        if message::encode(&challenge).is_none_or(|bytes| bytes.len() > allowance) {
            // A request of a few bytes: not even the Echo value fits.
            challenge = message::packet(MessageType::NonConfirmable, code::UNAUTHORIZED, 0, &pending.token);
        }
        challenge
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::coap::testing::*;

    #[test]
    fn fast_answer_is_piggybacked_in_the_ack() {
        let mut h = Harness::new();
        h.send(&con_get(0x1234, &[0xaa], "temp"));
        let request = h.request();
        assert!(request.confirmable);
        h.advance(Duration::from_millis(999));
        assert!(h.transmits().is_empty());
        let response = Response { content_format: Some(0), payload: b"21".to_vec(), ..Default::default() };
        assert_eq!(h.ep.respond(request.id, response, h.now), None);
        let reply = h.one();
        assert_eq!(reply.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(reply.header.message_id, 0x1234);
        assert_eq!(u8::from(reply.header.code), code::CONTENT);
        assert_eq!(reply.get_token(), [0xaa]);
        assert_eq!(uint(&reply, opt::CONTENT_FORMAT), Some(0));
        assert_eq!(reply.payload, b"21");
        h.advance(secs(10));
        assert!(h.transmits().is_empty(), "no separate ACK after answering");
    }

    #[test]
    fn non_request_gets_a_non_response_with_a_new_message_id() {
        let mut h = Harness::new();
        h.send(&request(MessageType::NonConfirmable, 0x02, 0x0101, &[1], "t"));
        let request = h.request();
        assert!(!request.confirmable);
        h.ep.respond(request.id, Response { code: 0x44, ..Default::default() }, h.now);
        let reply = h.one();
        assert_eq!(reply.header.get_type(), MessageType::NonConfirmable);
        assert_ne!(reply.header.message_id, 0x0101);
        assert_eq!(reply.get_token(), [1]);
    }

    #[test]
    fn location_path_and_max_age_are_sent() {
        let mut h = Harness::new();
        h.send(&request(MessageType::Confirmable, 0x02, 1, &[], "ps"));
        let request = h.request();
        let response = Response {
            code: 0x41,
            max_age: Some(60),
            location_path: vec!["ps".into(), "t1".into()],
            ..Default::default()
        };
        h.ep.respond(request.id, response, h.now);
        let reply = h.one();
        let location: Vec<_> = reply.get_option(opt::LOCATION_PATH.into()).unwrap().iter().cloned().collect();
        assert_eq!(location, [b"ps".to_vec(), b"t1".to_vec()]);
        assert_eq!(uint(&reply, opt::MAX_AGE), Some(60));
    }

    #[test]
    fn second_answer_to_a_request_is_ignored() {
        let mut h = Harness::new();
        h.send(&con_get(1, &[], "x"));
        let request = h.request();
        h.ep.respond(request.id, Response::default(), h.now);
        h.ep.respond(request.id, Response::default(), h.now);
        assert_eq!(h.out().len(), 1);
    }

    #[test]
    fn slow_answer_gets_an_empty_ack_at_one_second_then_a_con_response() {
        let mut h = Harness::new();
        let start = h.now;
        h.send(&con_get(0x0202, &[9, 9], "slow"));
        let request = h.request();
        let sent = h.run_until(start + secs(5));
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, start + secs(1));
        assert_eq!(encode(&sent[0].1), ack(0x0202));
        assert_eq!(h.ep.stats().separate_acks, 1);
        h.ep.respond(request.id, Response { payload: b"late".to_vec(), ..Default::default() }, h.now);
        let reply = h.one();
        assert_eq!(reply.header.get_type(), MessageType::Confirmable);
        assert_ne!(reply.header.message_id, 0x0202);
        assert_eq!(reply.get_token(), [9, 9]);
        assert_eq!(reply.payload, b"late");
    }

    /// Answers a request late and returns the separate response's Message-ID.
    fn separate(h: &mut Harness) -> u16 {
        h.send(&con_get(1, &[5], "slow"));
        let request = h.request();
        h.advance(secs(1));
        assert_eq!(h.transmits()[0].bytes, ack(1));
        h.ep.respond(request.id, Response::default(), h.now);
        h.one().header.message_id
    }

    #[test]
    fn separate_response_is_retransmitted_with_doubling_randomised_intervals_then_given_up() {
        let mut h = Harness::new();
        let start = h.now;
        let mid = separate(&mut h);
        let sent = h.run_until(start + secs(200));
        let times: Vec<_> = sent.iter().filter(|(_, p)| p.header.message_id == mid).map(|(t, _)| *t).collect();
        assert_eq!(times.len(), 4, "max_retransmit retransmissions");
        let first = times[0] - (start + secs(1)); // the response went out at 1 s
        // Timers fire at the end of their 10 ms slot: up to 10 ms late, never early.
        assert!(first >= secs(2) && first <= Duration::from_millis(3010), "{first:?}");
        let near = |got: Duration, want: Duration| got.abs_diff(want) <= Duration::from_millis(20);
        assert!(near(times[1] - times[0], first * 2), "{times:?}");
        assert!(near(times[2] - times[1], first * 4), "{times:?}");
        assert!(near(times[3] - times[2], first * 8), "{times:?}");
        assert_eq!(h.ep.stats().retransmissions, 4);
        assert_eq!(h.ep.stats().transmit_timeouts, 1);
    }

    #[test]
    fn ack_stops_retransmission_of_a_separate_response() {
        let mut h = Harness::new();
        let start = h.now;
        let mid = separate(&mut h);
        h.advance(secs(3));
        assert_eq!(h.out().len(), 1, "first retransmission");
        h.send_bytes(&ack(mid));
        assert!(h.run_until(start + secs(200)).is_empty());
        assert_eq!(h.ep.stats().transmit_timeouts, 0);
    }

    #[test]
    fn rst_stops_retransmission_of_a_separate_response() {
        let mut h = Harness::new();
        let start = h.now;
        let mid = separate(&mut h);
        h.send_bytes(&rst(mid));
        assert!(h.run_until(start + secs(200)).is_empty());
        assert_eq!(h.ep.stats().resets_received, 1);
    }

    #[test]
    fn no_response_suppresses_the_answers_it_names() {
        let mut h = Harness::new();
        // NON POST with No-Response 2 (not interested in 2.xx): no answer at all.
        let mut post = request(MessageType::NonConfirmable, 0x02, 1, &[], "p");
        message::add_uint(&mut post, 258, 2);
        h.send(&post);
        let r = h.request();
        h.ep.respond(r.id, Response { code: 0x44, ..Default::default() }, h.now);
        assert!(h.transmits().is_empty());
        // A 4.xx still goes out.
        h.send(&{
            let mut p = post.clone();
            p.header.message_id = 2;
            p
        });
        let r = h.request();
        h.ep.respond(r.id, Response { code: 0x83, ..Default::default() }, h.now);
        assert_eq!(u8::from(h.one().header.code), 0x83);
        // A CON still gets its (empty) ACK.
        let mut con = request(MessageType::Confirmable, 0x02, 3, &[], "p");
        message::add_uint(&mut con, 258, 2);
        h.send(&con);
        let r = h.request();
        h.ep.respond(r.id, Response { code: 0x44, ..Default::default() }, h.now);
        assert_eq!(h.transmits()[0].bytes, ack(3));
    }

    #[test]
    fn busy_answer_is_5_03_with_max_age_1() {
        let mut h = Harness::new();
        h.send(&con_get(1, &[], "x"));
        let request = h.request();
        h.ep.respond_busy(request.id, h.now);
        let reply = h.one();
        assert_eq!(u8::from(reply.header.code), 0xa3);
        assert_eq!(uint(&reply, opt::MAX_AGE), Some(1));
        assert_eq!(h.ep.stats().busy_rejections, 1);
    }
}
