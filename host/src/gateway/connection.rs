//! Connection mode (EMQX's `/mqtt/connection`): `Connect` opens a session and answers its
//! token, requests that carry the token are authenticated by it, `Heartbeat` keeps it alive
//! and `Disconnect` ends it. The sessions themselves are in [`super::sessions`].

use std::time::Instant;

use sluice_sdk::{Code, Principal, content_format};

use super::{Call, Failure, Gateway, reply};
use crate::coap::Response;

impl Call<'_> {
    /// Opens a session for the authenticated device; answers 2.01 with its token.
    pub(super) fn connect(&self) -> Result<Response, Failure> {
        let token = self.gateway.state().sessions.open(self.who.clone(), Instant::now()).map_err(Failure::Session)?;
        Ok(Response {
            code: Code::CREATED.0,
            payload: token.into_bytes(),
            content_format: Some(content_format::TEXT_PLAIN),
            secret: true,
            ..Response::default()
        })
    }

    /// Ends the device's session; answers 2.02.
    pub(super) fn disconnect(&self) -> Response {
        self.gateway.state().sessions.close(&self.who.client_id);
        reply(Code::DELETED)
    }
}

impl Gateway {
    /// The device a session token stands for (and the session is kept alive).
    pub(super) fn check_session(&self, client_id: &str, token: &str) -> Result<Principal, Failure> {
        self.state().sessions.check(client_id, token, Instant::now()).map_err(Failure::Session)
    }

    /// Ends the sessions whose devices went quiet for longer than `sessions.timeout`.
    pub(super) fn expire_sessions(&self) {
        self.state().sessions.expire(Instant::now());
    }
}
