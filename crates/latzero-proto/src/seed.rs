//! The protocol examples of the original design (seeds/server-readme.md, "Protocol"), verbatim.
//! They must keep working byte for byte; the tests of every crate use these constants.

/// The seed's handshake.
pub const HANDSHAKE: &str = r#"{
  "action": "handshake",
  "app_id": "myApp",
  "pools": ["alpha"],
  "triggers": ["foo", "bar"],
  "meta": { "version": "1.0.0" }
}"#;

/// The seed's trigger (a call from `myApp` to `targetApp`).
pub const TRIGGER: &str = r#"{
  "action": "trigger",
  "id": "uuid-v4",
  "process": "foo",
  "data": { "x": 42 },
  "pool": "alpha",
  "origin": { "app_id": "clientApp" },
  "destination": "targetApp"
}"#;

/// The seed's response, as the caller receives it.
pub const RESPONSE: &str = r#"{
  "action": "response",
  "in_reply_to": "uuid-v4",
  "status": "ok",
  "response": { "result": 84 }
}"#;
