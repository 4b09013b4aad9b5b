//! CoAP message layer (sans-IO).
