//! `latzero stop`: ask the server to shut down gracefully and wait until it has closed us.

use std::time::Duration;

use anyhow::Result;

use crate::cli::TargetArgs;

pub async fn run(t: TargetArgs) -> Result<()> {
    let ep = super::target(&t)?;
    latzero_client::admin::shutdown(&ep, Duration::from_secs(30))
        .await
        .map_err(|e| super::request_failed(e, || format!("cannot stop the server at {ep}")))?;
    outln!("server at {ep} stopped");
    Ok(())
}
