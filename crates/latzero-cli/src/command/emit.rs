//! `latzero emit`: fire-and-forget, waiting only for the server's receipt.

use anyhow::Result;
use latzero_client::ClientOptions;

use crate::cli::EmitArgs;

pub async fn run(args: EmitArgs) -> Result<()> {
    let data = super::payload_arg(args.data.as_deref(), args.file.as_deref())?;
    let opts = ClientOptions::new().reconnect(false);
    if let Some(keys) = &args.keys {
        let (_client, vault) = super::connect_sealed(&args.target, args.app.as_deref(), &args.pool, keys, opts).await?;
        let delivered = vault.emit_confirmed(&args.trigger, &data).await?;
        outln!("{}", serde_json::json!({"delivered": delivered}));
        return Ok(());
    }
    let client = super::connect(
        &args.target,
        args.app.as_deref(),
        std::slice::from_ref(&args.pool),
        opts,
    )
    .await?;
    let delivered = client.emit_confirmed(&args.pool, &args.trigger, &data).await?;
    outln!("{}", serde_json::json!({"delivered": delivered}));
    Ok(())
}
