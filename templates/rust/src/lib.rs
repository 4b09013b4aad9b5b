//! {{name}}: a Sluice rule.
//!
//! Publishes a request to `/hello/{rest…}` to the MQTT topic `hello/{rest…}` (QoS from the
//! gateway's `publish_qos`, not retained); everything else is left to the next rule in the chain.
//!
//! The same source runs natively (`cargo test`) and as WebAssembly (`sluice rule build .`).
//! The guide to the API, the hooks and the limits is the Sluice SDK's README (sdk/rust/README.md).

use sluice_sdk::{Config, Principal, Publish, Request, Route, Rule};

/// The rule. Keep settings read from the config here.
struct Hello;

impl Rule for Hello {
    fn route(&self, req: &Request, _who: &Principal) -> Route {
        match req.path.split_first() {
            Some((first, rest)) if first == "hello" => Route::Publish(Publish::to(format!("hello/{}", rest.join("/")))),
            _ => Route::Continue,
        }
    }
}

/// Builds the rule from its config (`config:` in the gateway's rules list, over the `defaults`
/// of rule.yaml), or refuses to load with a reason that names the key and the fix.
pub fn init(_config: &Config) -> Result<Box<dyn Rule>, String> {
    Ok(Box::new(Hello))
}

// The Wasm exports: `init`, then the hooks this rule implements.
sluice_sdk::export_rule!(init, [route]);

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &[&str]) -> Route {
        let req = Request { path: path.iter().map(|s| s.to_string()).collect(), ..Request::default() };
        Hello.route(&req, &Principal::new("dev1"))
    }

    #[test]
    fn hello_is_published() {
        assert_eq!(route(&["hello", "a", "b"]), Route::Publish(Publish::to("hello/a/b")));
    }

    #[test]
    fn other_paths_continue() {
        assert_eq!(route(&["other"]), Route::Continue);
        assert_eq!(route(&[]), Route::Continue);
    }
}
