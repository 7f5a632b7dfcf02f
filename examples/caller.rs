//! A caller app: calls "double" in pool "demo" a few times and prints the results.
//! Start the server and the `handler` example first (see handler.rs).

use std::time::Duration;

use latzero_client::{Client, ClientError, ErrorCode};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("LATZERO_URL").unwrap_or_else(|_| "latzero://caller?pools=demo".into());
    let client = Client::connect(&url).await?;
    for x in 1..=5 {
        let started = std::time::Instant::now();
        match client
            .request("demo", "double")
            .data(&json!({ "x": x }))
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(v) => println!("double({x}) = {} in {:?}", v["result"], started.elapsed()),
            Err(e) if e.code() == Some(ErrorCode::NoHandler) => {
                println!("nobody serves 'double' in pool 'demo' yet: start the handler example");
                return Ok(());
            }
            Err(ClientError::Handler(v)) => println!("handler refused: {v}"),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
