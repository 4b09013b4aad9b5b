//! Block-wise transfers (RFC 7959): Block1 reassembly of request bodies, and Block2 slicing of
//! large responses and notifications with a per-peer cache that serves the later blocks.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use coap_lite::{MessageType, Packet};
use tracing::debug;

use super::Endpoint;
use super::message::{self, Block, RequestOptions, code, opt};

/// Block-wise state is kept per peer and URI (libcoap may change the token on every block).
pub(crate) type BlockKey = (SocketAddr, String);

/// A representation about to be sent, maybe block-wise.
#[derive(Clone, Debug, Default)]
pub(crate) struct Body {
    pub content_format: Option<u16>,
    pub max_age: Option<u32>,
    pub payload: Vec<u8>,
}

/// A body sent block-wise whose later blocks are served from here.
#[derive(Debug)]
struct Download {
    code: u8,
    etag: Vec<u8>,
    body: Body,
    generation: u64,
}

#[derive(Debug)]
struct Upload {
    body: Vec<u8>,
    generation: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Upload,
    Download,
}

/// Uploads being reassembled and downloads being served, bounded together and expired
/// `lifetime` after their last use (a FIFO of touches; stale touches are skipped).
#[derive(Debug)]
pub(crate) struct Blocks {
    uploads: HashMap<BlockKey, Upload>,
    downloads: HashMap<BlockKey, Download>,
    touches: VecDeque<(Instant, Kind, BlockKey, u64)>,
    lifetime: Duration,
    max: usize,
    /// Bytes of bodies held (uploads and downloads), and the most allowed.
    bytes: usize,
    max_bytes: usize,
    next_generation: u64,
}

impl Blocks {
    pub(crate) fn new(lifetime: Duration, max: usize, max_bytes: usize) -> Self {
        Blocks {
            uploads: HashMap::new(),
            downloads: HashMap::new(),
            touches: VecDeque::new(),
            lifetime,
            max: max.max(1),
            bytes: 0,
            max_bytes,
            next_generation: 0,
        }
    }

    /// Bytes of bodies held now.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    fn remove_upload(&mut self, key: &BlockKey) -> Option<Upload> {
        let upload = self.uploads.remove(key)?;
        self.bytes -= upload.body.len();
        Some(upload)
    }

    fn remove_download(&mut self, key: &BlockKey) -> Option<Download> {
        let download = self.downloads.remove(key)?;
        self.bytes -= download.body.payload.len();
        Some(download)
    }

    /// Evicts the least recently used bodies until the bytes held fit `max_bytes`; returns
    /// how many were evicted.
    fn fit_bytes(&mut self) -> u64 {
        let mut evicted = 0;
        while self.bytes > self.max_bytes {
            let Some((_, kind, key, generation)) = self.touches.pop_front() else { break };
            if self.remove_touched(kind, &key, generation) {
                evicted += 1;
            }
        }
        evicted
    }

    /// Uploads and downloads held.
    pub(crate) fn len(&self) -> usize {
        self.uploads.len() + self.downloads.len()
    }

    /// What the state costs: (the largest body held in bytes, touches queued). The fuzz
    /// targets check both against the limits.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn footprint(&self) -> (usize, usize) {
        let uploads = self.uploads.values().map(|u| u.body.len());
        let downloads = self.downloads.values().map(|d| d.body.payload.len());
        (uploads.chain(downloads).max().unwrap_or(0), self.touches.len())
    }

    fn touch(&mut self, kind: Kind, key: &BlockKey, now: Instant) -> u64 {
        self.next_generation += 1;
        self.touches.push_back((now, kind, key.clone(), self.next_generation));
        if self.touches.len() > 2 * self.len() + 1024 {
            let (uploads, downloads) = (&self.uploads, &self.downloads);
            let current = |&(_, kind, ref key, generation): &(Instant, Kind, BlockKey, u64)| match kind {
                Kind::Upload => uploads.get(key).is_some_and(|u| u.generation == generation),
                Kind::Download => downloads.get(key).is_some_and(|d| d.generation == generation),
            };
            let generation = self.next_generation;
            self.touches.retain(|t| t.3 == generation || current(t));
        }
        self.next_generation
    }

    /// Removes the entry a touch names if the touch is its latest one.
    fn remove_touched(&mut self, kind: Kind, key: &BlockKey, generation: u64) -> bool {
        match kind {
            Kind::Upload => match self.uploads.get(key) {
                Some(u) if u.generation == generation => self.remove_upload(key).is_some(),
                _ => false,
            },
            Kind::Download => match self.downloads.get(key) {
                Some(d) if d.generation == generation => self.remove_download(key).is_some(),
                _ => false,
            },
        }
    }

    /// Makes room for one more entry; returns how many were evicted.
    fn make_room(&mut self) -> u64 {
        let mut evicted = 0;
        while self.len() >= self.max {
            let Some((_, kind, key, generation)) = self.touches.pop_front() else { break };
            if self.remove_touched(kind, &key, generation) {
                evicted += 1;
            }
        }
        evicted
    }

    /// Forgets entries unused for `lifetime`.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some((at, ..)) = self.touches.front() {
            if *at + self.lifetime > now {
                break;
            }
            if let Some((_, kind, key, generation)) = self.touches.pop_front() {
                self.remove_touched(kind, &key, generation);
            }
        }
    }

    /// When the oldest entry expires (maybe earlier, for an entry touched since).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.touches.front().map(|(at, ..)| *at + self.lifetime)
    }

    /// Starts (or restarts) an upload; returns how many entries were evicted for it.
    fn start_upload(&mut self, key: &BlockKey, now: Instant) -> u64 {
        self.remove_upload(key);
        let evicted = self.make_room();
        let generation = self.touch(Kind::Upload, key, now);
        self.uploads.insert(key.clone(), Upload { body: Vec::new(), generation });
        evicted
    }

    fn put_download(&mut self, key: &BlockKey, code: u8, etag: Vec<u8>, body: Body, now: Instant) -> u64 {
        self.remove_download(key);
        let evicted = self.make_room();
        let generation = self.touch(Kind::Download, key, now);
        self.bytes += body.payload.len();
        self.downloads.insert(key.clone(), Download { code, etag, body, generation });
        evicted + self.fit_bytes()
    }
}

impl Endpoint {
    /// Takes the Block1 block of a request, if any. The whole body when this was the last
    /// block (or the payload when there is no Block1), else the reply to send: 2.31 Continue,
    /// 4.08 Request Entity Incomplete or 4.13 with Size1.
    pub(super) fn receive_block1(
        &mut self,
        peer: SocketAddr,
        method: u8,
        options: &RequestOptions,
        payload: Vec<u8>,
        token: &[u8],
        now: Instant,
    ) -> Result<Vec<u8>, Packet> {
        let max = self.config.max_body_size;
        let too_large = |p: &mut Packet| message::add_uint(p, opt::SIZE1, u32::try_from(max).unwrap_or(u32::MAX));
        let reply = |code| message::packet(MessageType::Acknowledgement, code, 0, token);
        let Some(block) = options.block1 else {
            // A body in one datagram (up to 64 KiB over UDP) is held to the same limit.
            if payload.len() > max {
                let mut p = reply(code::REQUEST_ENTITY_TOO_LARGE);
                too_large(&mut p);
                return Err(p);
            }
            return Ok(payload);
        };
        let mut uri = format!("{method} {}", options.uri_key());
        if let Some(tag) = &options.request_tag {
            uri.extend(tag.iter().map(|b| format!("#{b:02x}")));
        }
        let key = (peer, uri);
        if options.size1.is_some_and(|s| s as usize > max) {
            self.blocks.remove_upload(&key);
            let mut p = reply(code::REQUEST_ENTITY_TOO_LARGE);
            too_large(&mut p);
            return Err(p);
        }
        if block.num == 0 {
            self.stats.block_evictions += self.blocks.start_upload(&key, now);
        }
        let offset = block.offset();
        let Some(upload) = self.blocks.uploads.get_mut(&key).filter(|u| u.body.len() == offset) else {
            debug!(%peer, num = block.num, "Block1 out of order.");
            self.blocks.remove_upload(&key);
            let mut p = reply(code::REQUEST_ENTITY_INCOMPLETE);
            p.payload = b"Block1 out of order".to_vec();
            return Err(p);
        };
        if upload.body.len() + payload.len() > max {
            self.blocks.remove_upload(&key);
            let mut p = reply(code::REQUEST_ENTITY_TOO_LARGE);
            too_large(&mut p);
            return Err(p);
        }
        upload.body.extend_from_slice(&payload);
        self.blocks.bytes += payload.len();
        if !block.more {
            return Ok(self.blocks.remove_upload(&key).map(|u| u.body).unwrap_or_default());
        }
        let generation = self.blocks.touch(Kind::Upload, &key, now);
        if let Some(upload) = self.blocks.uploads.get_mut(&key) {
            upload.generation = generation;
        }
        self.stats.block_evictions += self.blocks.fit_bytes();
        // Offsets are in bytes: a client that sent a bigger block than ours continues at
        // the matching block number of our size (RFC 7959 §2.5).
        let size = block.size().min(self.config.block_size);
        let ours =
            Block { num: u32::try_from(offset / size).unwrap_or(u32::MAX), more: true, szx: message::szx_of(size) };
        let mut p = reply(code::CONTINUE);
        message::add(&mut p, opt::BLOCK1, ours.encode());
        Err(p)
    }

    /// The reply to a Block2 request for a later block of a body sent before, if cached.
    pub(super) fn cached_block2(
        &mut self,
        peer: SocketAddr,
        uri: &str,
        block: Block,
        token: &[u8],
        now: Instant,
    ) -> Option<Packet> {
        let key = (peer, uri.to_owned());
        if !self.blocks.downloads.contains_key(&key) {
            return None;
        }
        let generation = self.blocks.touch(Kind::Download, &key, now);
        let download = self.blocks.downloads.get_mut(&key)?;
        download.generation = generation;
        let mut packet = message::packet(MessageType::Acknowledgement, download.code, 0, token);
        let size = block.size().min(self.config.block_size);
        put_slice(&mut packet, &download.body, block.offset(), size, &download.etag);
        Some(packet)
    }

    /// Puts `body` into `packet`: whole when it fits, else the block `requested` asks for
    /// (block 0 by default) with Block2, ETag and Size2, caching the body for the later blocks.
    pub(super) fn attach_body(
        &mut self,
        packet: &mut Packet,
        peer: SocketAddr,
        uri: &str,
        requested: Option<Block>,
        body: Body,
        now: Instant,
    ) {
        let ours = self.config.block_size;
        let size = requested.map_or(ours, |b| b.size().min(ours));
        let offset = requested.map_or(0, Block::offset);
        let code = u8::from(packet.header.code);
        if offset == 0 && body.payload.len() <= size {
            put_options(packet, &body);
            packet.payload = body.payload;
            return;
        }
        if code >> 5 != 2 {
            // Errors are not sent block-wise; their diagnostic payload is cut to one block.
            put_options(packet, &body);
            packet.payload = body.payload.into_iter().take(size).collect();
            return;
        }
        self.next_etag = self.next_etag.wrapping_add(1);
        let etag = self.next_etag.to_be_bytes().to_vec();
        put_slice(packet, &body, offset, size, &etag);
        let key = (peer, uri.to_owned());
        self.stats.block_evictions += self.blocks.put_download(&key, code, etag, body, now);
    }
}

/// Puts block `offset / size` of `body` into `packet` with Block2, ETag and (for block 0)
/// Size2; a block past the end becomes 4.02 Bad Option.
fn put_slice(packet: &mut Packet, body: &Body, offset: usize, size: usize, etag: &[u8]) {
    let total = body.payload.len();
    let end = offset.saturating_add(size).min(total);
    match body.payload.get(offset..end).filter(|s| !s.is_empty()) {
        Some(slice) => {
            put_options(packet, body);
            let block = Block {
                num: u32::try_from(offset / size).unwrap_or(u32::MAX),
                more: end < total,
                szx: message::szx_of(size),
            };
            message::add(packet, opt::ETAG, etag.to_vec());
            message::add(packet, opt::BLOCK2, block.encode());
            if block.num == 0 {
                message::add_uint(packet, opt::SIZE2, u32::try_from(total).unwrap_or(u32::MAX));
            }
            packet.payload = slice.to_vec();
        }
        None => {
            let token = packet.get_token().to_vec();
            *packet = message::packet(packet.header.get_type(), code::BAD_OPTION, 0, &token);
            packet.payload = b"Block2 out of range".to_vec();
        }
    }
}

fn put_options(packet: &mut Packet, body: &Body) {
    if let Some(format) = body.content_format {
        message::add_uint(packet, opt::CONTENT_FORMAT, u32::from(format));
    }
    if let Some(age) = body.max_age {
        message::add_uint(packet, opt::MAX_AGE, age);
    }
}

#[cfg(test)]
mod tests {
    use coap_lite::MessageType;

    use super::*;
    use crate::coap::testing::*;
    use crate::coap::{EndpointConfig, Event, Notification, Response};

    fn body(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn put_block(mid: u16, num: u32, more: bool, szx: u8, chunk: &[u8]) -> Packet {
        let mut put = request(MessageType::Confirmable, 0x03, mid, &[mid as u8], "up");
        message::add(&mut put, opt::BLOCK1, Block { num, more, szx }.encode());
        put.payload = chunk.to_vec();
        put
    }

    fn code_of(p: &Packet) -> u8 {
        u8::from(p.header.code)
    }

    #[test]
    fn block1_upload_of_10_kb_is_acknowledged_with_continue_and_delivered_whole() {
        let mut h = Harness::new();
        let data = body(10_000);
        let chunks: Vec<_> = data.chunks(1024).collect();
        for (num, chunk) in chunks.iter().enumerate() {
            let more = num + 1 < chunks.len();
            h.send(&put_block(100 + num as u16, num as u32, more, 6, chunk));
            if more {
                let reply = h.one();
                assert_eq!(code_of(&reply), code::CONTINUE);
                assert_eq!(reply.header.message_id, 100 + num as u16);
                assert_eq!(block(&reply, opt::BLOCK1), Some(Block { num: num as u32, more: true, szx: 6 }));
                assert!(h.events().is_empty());
            }
        }
        let request = h.request();
        assert_eq!(request.payload, data);
        assert_eq!(request.method, 3);
        h.ep.respond(request.id, Response { code: 0x44, ..Default::default() }, h.now);
        let reply = h.one();
        assert_eq!(code_of(&reply), 0x44);
        assert_eq!(block(&reply, opt::BLOCK1), Some(Block { num: 9, more: false, szx: 6 }));
        assert_eq!(h.ep.blocks.len(), 0);
    }

    #[test]
    fn block1_out_of_order_gets_4_08_and_is_forgotten() {
        let mut h = Harness::new();
        h.send(&put_block(1, 0, true, 6, &body(1024)));
        h.transmits();
        h.send(&put_block(2, 2, true, 6, &body(1024)));
        assert_eq!(code_of(&h.one()), code::REQUEST_ENTITY_INCOMPLETE);
        h.send(&put_block(3, 1, false, 6, &body(10)));
        assert_eq!(code_of(&h.one()), code::REQUEST_ENTITY_INCOMPLETE);
        assert!(h.events().is_empty());
    }

    #[test]
    fn block1_body_over_the_limit_gets_4_13_with_size1() {
        let mut h = Harness::with(EndpointConfig { max_body_size: 2048, ..unguarded() });
        h.send(&put_block(1, 0, true, 6, &body(1024)));
        h.send(&put_block(2, 1, true, 6, &body(1024)));
        assert_eq!(h.out().len(), 2);
        h.send(&put_block(3, 2, false, 6, &body(1)));
        let reply = h.one();
        assert_eq!(code_of(&reply), code::REQUEST_ENTITY_TOO_LARGE);
        assert_eq!(uint(&reply, opt::SIZE1), Some(2048));
        assert_eq!(h.ep.blocks.len(), 0);
    }

    #[test]
    fn body_in_one_datagram_over_the_limit_gets_4_13_with_size1() {
        // Found by the `endpoint` fuzz target: without Block1 a body skipped max_body_size.
        let mut h = Harness::with(EndpointConfig { max_body_size: 256, ..unguarded() });
        let mut put = request(MessageType::Confirmable, 0x03, 1, &[1], "up");
        put.payload = body(2000);
        h.send(&put);
        let reply = h.one();
        assert_eq!(code_of(&reply), code::REQUEST_ENTITY_TOO_LARGE);
        assert_eq!(uint(&reply, opt::SIZE1), Some(256));
        assert!(h.events().is_empty());
        put.header.message_id = 2;
        put.payload = body(256);
        h.send(&put);
        assert_eq!(h.request().payload, body(256), "a body at the limit is delivered");
    }

    #[test]
    fn block1_announcing_an_oversize_body_in_size1_gets_4_13_at_once() {
        let mut h = Harness::with(EndpointConfig { max_body_size: 2048, ..unguarded() });
        let mut put = put_block(1, 0, true, 6, &body(1024));
        message::add_uint(&mut put, opt::SIZE1, 4096);
        h.send(&put);
        let reply = h.one();
        assert_eq!(code_of(&reply), code::REQUEST_ENTITY_TOO_LARGE);
        assert_eq!(uint(&reply, opt::SIZE1), Some(2048));
    }

    #[test]
    fn block1_bigger_than_ours_is_taken_and_our_size_is_asked_for() {
        let mut h = Harness::with(EndpointConfig { block_size: 256, ..unguarded() });
        let data = body(1500);
        h.send(&put_block(1, 0, true, 6, &data[..1024]));
        assert_eq!(block(&h.one(), opt::BLOCK1), Some(Block { num: 0, more: true, szx: 4 }));
        // The client continues at byte 1024 in 256-byte blocks: block 4.
        h.send(&put_block(2, 4, true, 4, &data[1024..1280]));
        assert_eq!(block(&h.one(), opt::BLOCK1), Some(Block { num: 4, more: true, szx: 4 }));
        h.send(&put_block(3, 5, false, 4, &data[1280..]));
        assert_eq!(h.request().payload, data);
    }

    #[test]
    fn stale_block1_transfer_expires_after_exchange_lifetime() {
        let mut h = Harness::new();
        h.send(&put_block(1, 0, true, 6, &body(1024)));
        h.transmits();
        h.advance(secs(248));
        assert_eq!(h.ep.blocks.len(), 0);
        h.send(&put_block(2, 1, false, 6, &body(1)));
        assert_eq!(code_of(&h.one()), code::REQUEST_ENTITY_INCOMPLETE);
    }

    fn get_block(mid: u16, num: u32, szx: u8) -> Packet {
        let mut get = con_get(mid, &[mid as u8], "big");
        message::add(&mut get, opt::BLOCK2, Block { num, more: false, szx }.encode());
        get
    }

    #[test]
    fn block2_response_of_10_kb_is_fetched_block_by_block_with_a_constant_etag() {
        let mut h = Harness::new();
        let data = body(10_000);
        h.send(&con_get(1, &[1], "big"));
        let request = h.request();
        let response = Response { content_format: Some(42), payload: data.clone(), ..Default::default() };
        h.ep.respond(request.id, response, h.now);
        let first = h.one();
        assert_eq!(block(&first, opt::BLOCK2), Some(Block { num: 0, more: true, szx: 6 }));
        assert_eq!(uint(&first, opt::SIZE2), Some(10_000));
        let etag = first.get_first_option(opt::ETAG.into()).cloned().unwrap();
        let mut received = first.payload.clone();
        for num in 1..10 {
            h.send(&get_block(1 + num as u16, num, 6));
            let reply = h.one();
            assert_eq!(block(&reply, opt::BLOCK2), Some(Block { num, more: num < 9, szx: 6 }));
            assert_eq!(reply.get_first_option(opt::ETAG.into()), Some(&etag));
            assert_eq!(uint(&reply, opt::CONTENT_FORMAT), Some(42));
            received.extend_from_slice(&reply.payload);
        }
        assert!(h.events().is_empty(), "later blocks come from the cache");
        assert_eq!(received, data);
    }

    #[test]
    fn block2_size_asked_for_up_front_is_used() {
        let mut h = Harness::new();
        h.send(&get_block(1, 0, 2));
        let request = h.request();
        h.ep.respond(request.id, Response { payload: body(200), ..Default::default() }, h.now);
        let reply = h.one();
        assert_eq!(block(&reply, opt::BLOCK2), Some(Block { num: 0, more: true, szx: 2 }));
        assert_eq!(reply.payload.len(), 64);
    }

    #[test]
    fn block2_request_without_a_cached_body_is_answered_by_the_app_and_sliced() {
        let mut h = Harness::new();
        h.send(&get_block(1, 3, 6));
        let request = h.request();
        h.ep.respond(request.id, Response { payload: body(10_000), ..Default::default() }, h.now);
        let reply = h.one();
        assert_eq!(block(&reply, opt::BLOCK2), Some(Block { num: 3, more: true, szx: 6 }));
        assert_eq!(reply.payload, body(10_000)[3072..4096]);
    }

    #[test]
    fn block2_past_the_end_gets_4_02() {
        let mut h = Harness::new();
        h.send(&con_get(1, &[1], "big"));
        let request = h.request();
        h.ep.respond(request.id, Response { payload: body(2000), ..Default::default() }, h.now);
        h.transmits();
        h.send(&get_block(2, 5, 6));
        assert_eq!(code_of(&h.one()), code::BAD_OPTION);
    }

    #[test]
    fn notification_larger_than_a_block_sends_block_0_and_the_rest_on_request() {
        let mut h = Harness::new();
        let id = h.register(1, &[1], "big");
        let data = body(3000);
        let n = Notification { payload: data.clone(), ..Default::default() };
        h.ep.notify(id, n, h.now);
        let first = h.one();
        assert_eq!(uint(&first, opt::OBSERVE), Some(1));
        assert_eq!(block(&first, opt::BLOCK2), Some(Block { num: 0, more: true, szx: 6 }));
        assert_eq!(uint(&first, opt::SIZE2), Some(3000));
        let mut received = first.payload.clone();
        for num in 1..3 {
            h.send(&get_block(10 + num as u16, num, 6));
            let reply = h.one();
            assert_eq!(uint(&reply, opt::OBSERVE), None);
            received.extend_from_slice(&reply.payload);
        }
        assert_eq!(received, data);
        assert!(h.events().is_empty());
    }

    #[test]
    fn cached_bodies_are_bounded_by_max_block_transfers() {
        let mut h = Harness::with(EndpointConfig { max_block_transfers: 1, ..unguarded() });
        for (mid, path) in [(1, "a"), (2, "b")] {
            h.send(&con_get(mid, &[], path));
            let request = h.request();
            h.ep.respond(request.id, Response { payload: body(2000), ..Default::default() }, h.now);
        }
        h.transmits();
        assert_eq!(h.ep.blocks.len(), 1);
        assert_eq!(h.ep.stats().block_evictions, 1);
        let mut get = con_get(3, &[], "a");
        message::add(&mut get, opt::BLOCK2, Block { num: 1, more: false, szx: 6 }.encode());
        h.send(&get);
        assert!(matches!(h.events().as_slice(), [Event::Request(_)]), "evicted: goes to the app");
    }

    #[test]
    fn bodies_held_are_bounded_by_max_block_memory() {
        let config = EndpointConfig { max_block_memory: 3000, block_size: 64, ..unguarded() };
        let mut h = Harness::with(config);
        // Two downloads of 2000 bytes: the older is forgotten for the newer.
        for (mid, path) in [(1, "a"), (2, "b")] {
            h.send(&con_get(mid, &[], path));
            let request = h.request();
            h.ep.respond(request.id, Response { payload: body(2000), ..Default::default() }, h.now);
        }
        h.transmits();
        assert_eq!((h.ep.blocks.len(), h.ep.blocks.bytes()), (1, 2000));
        // An upload that grows past the budget evicts the download, then itself.
        for num in 0..50u32 {
            h.send(&put_block(10 + num as u16, num, true, 2, &body(64)));
            h.transmits();
            assert!(h.ep.blocks.bytes() <= 3000, "{} bytes held", h.ep.blocks.bytes());
        }
        assert_eq!(h.ep.stats().block_evictions, 3);
        // Finished transfers give their bytes back.
        h.send(&put_block(60, 0, true, 2, &body(64)));
        h.send(&put_block(61, 1, false, 2, &body(64)));
        assert!(matches!(h.events().as_slice(), [Event::Request(r)] if r.payload.len() == 128));
        assert_eq!(h.ep.blocks.bytes(), 0);
    }
}
