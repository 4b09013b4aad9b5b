//! Datagram transports: drivers that own a socket and a [`crate::coap::Endpoint`], feed it
//! datagrams and time, and send what it produces.

pub mod udp;
