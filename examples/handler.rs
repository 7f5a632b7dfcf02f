//! A handler app: joins pool "demo" and serves the trigger "double".
//!
//! ```sh
//! cargo run -p latzero-cli --release -- start          # terminal 1: the server
//! cargo run -p latzero-examples --bin handler          # terminal 2: this program
//! cargo run -p latzero-examples --bin caller           # terminal 3: the caller
//! ```
//!
//! Set LATZERO_URL to connect elsewhere (default `latzero://doubler?pools=demo`, which uses the
//! Unix socket of ~/.latzero when the server runs there, else TCP 127.0.0.1:45227).

use latzero_client::{Client, ClientEvent, HandlerError, Request};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("LATZERO_URL").unwrap_or_else(|_| "latzero://doubler?pools=demo".into());
    let client = Client::connect(&url).await?;
    client
        .handle("double", |req: Request| async move {
            let x = req.data["x"]
                .as_i64()
                .ok_or_else(|| HandlerError::msg("expected {\"x\": <integer>}"))?;
            println!("double({x}) called by {}", req.origin.as_deref().unwrap_or("?"));
            Ok(json!({ "result": x * 2 }))
        })
        .await?;
    println!("serving 'double' in pool 'demo' as {}; Ctrl-C to stop", client.app_id());
    let mut events = client.events();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            ev = events.recv() => match ev {
                Ok(ClientEvent::Disconnected { reason, reconnecting: true }) => println!("disconnected: {reason}; reconnecting"),
                Ok(ClientEvent::Disconnected { reason, reconnecting: false }) => anyhow::bail!("disconnected: {reason}"),
                Ok(ClientEvent::Reconnected) => println!("reconnected"),
                _ => {}
            },
        }
    }
}
