//! MQTT v5 client and the embedded broker.
