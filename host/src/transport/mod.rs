//! Datagram transports.
