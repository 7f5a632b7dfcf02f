//! The Rust SDK side of the cross-language encrypted-pool tests (`python.rs`, `js.rs`): a pool
//! made by `latzero keys generate vault`, and a Rust app (`rs-worker`) in it that serves
//! `rs_upper` (sealed answers, and a sealed error for `{"fail": true}`), has sealed a document
//! into block `rs-doc` and two records into stream `rs-log`, and, when the other client says
//! `ready`, opens what that client sealed: its `peer_sum` handler's answer and sealed error, its
//! document in `peer-doc`, its record after Rust's in `rs-log`; then emits `peer_note` and calls
//! `peer_done` with how many checks passed (the clients' scripts: `clients/python/
//! test_encrypted.py`, `clients/js/test/sealed.mjs`).

use anyhow::{Result, bail};
use latzero_client::{
    BlockOptions, Client, ClientError, ClientOptions, EncryptedPool, HandlerError, PoolKeys, Request,
};
use latzero_testkit::{Proc, ServerProc};
use serde_json::{Value, json};

pub struct RustApp {
    /// The key texts `latzero keys generate` printed.
    pub keys: Vec<String>,
    /// What it printed, as a keys file holds it.
    pub printed: String,
    rt: tokio::runtime::Runtime,
    client: Client,
    vault: EncryptedPool,
}

impl RustApp {
    pub fn start(s: &ServerProc) -> Result<RustApp> {
        let (ok, out, err) = s.run(&["keys", "generate", "vault", "--app", "owner"])?;
        assert!(ok, "{err}");
        let keys = latzero_testkit::printed_keys(&out);
        assert_eq!(keys.len(), 3, "{out}");
        let rt = tokio::runtime::Runtime::new()?;
        let url = s.url("rs-worker");
        let (client, vault) = rt.block_on(async {
            let client = ClientOptions::new().connect(&url).await?;
            let vault = client.encrypted_pool("vault", PoolKeys::parse("vault", &keys)?).await?;
            vault
                .handle("rs_upper", |r: Request| async move {
                    if r.data["fail"] == json!(true) {
                        return Err(HandlerError(json!({"message": "account 7 is short by 1200"})));
                    }
                    let text = r.data["text"].as_str().unwrap_or_default().to_uppercase();
                    Ok(json!({"upper": text, "by": "rust"}))
                })
                .await?;
            let doc = client
                .create_block("vault", "rs-doc", BlockOptions::binary(1024).persistent())
                .await?;
            vault.write_json(&doc, &json!({"from": "rust", "n": 1})).await?;
            let log = client
                .create_block("vault", "rs-log", BlockOptions::stream(65536))
                .await?;
            for i in 0..2 {
                vault.append(&log, format!("rust {i}").as_bytes()).await?;
            }
            anyhow::Ok((client, vault))
        })?;
        Ok(RustApp {
            keys,
            printed: out,
            rt,
            client,
            vault,
        })
    }

    /// Opens what the other client (`by`: "python", "javascript") sealed, then lets it go on.
    pub fn check_peer(&self, by: &str) -> Result<()> {
        let (vault, client) = (&self.vault, &self.client);
        self.rt.block_on(async {
            let mut checked = 0;
            let sum = vault.call("peer_sum", &json!({"xs": [1, 2, 3]})).await?;
            assert_eq!(sum, json!({"sum": 6, "by": by, "from": "rs-worker"}));
            checked += 1;
            match vault.call("peer_sum", &json!({"xs": []})).await {
                Err(ClientError::Handler(e)) => assert_eq!(e, json!({"message": "nothing to add", "code": 42})),
                other => bail!("the {by} handler's sealed error: {other:?}"),
            }
            checked += 1;
            let doc = client.attach_block("vault", "peer-doc").await?;
            let (got, _) = vault.read_json::<Value>(&doc).await?;
            assert_eq!(got, json!({"from": by, "list": [1, 2]}));
            checked += 1;
            let log = client.attach_block("vault", "rs-log").await?;
            let r = vault.consume(&log, "rs", 10).await?;
            let records: Vec<Vec<u8>> = r.records.into_iter().collect::<Result<_, _>>()?;
            assert_eq!(
                records,
                [b"rust 0".to_vec(), b"rust 1".to_vec(), format!("{by} 0").into_bytes()]
            );
            checked += 1;
            vault.emit("peer_note", &json!({"note": "from rust"})).await?;
            checked += 1;
            vault.call("peer_done", &json!({"checked": checked})).await?;
            anyhow::Ok(())
        })
    }
}

/// Runs a client's encrypted-pool script (`script`, given `LATZERO_SOCKET`, `LATZERO_KEYS` and
/// the keys as printed, `LATZERO_KEYS_TEXT`)
/// against a server of its own and the Rust app, which checks what the script sealed when it
/// says `ready` (`by`: its language); restarts the server when it says `restart`, and asserts
/// that its handle re-joined after that.
#[allow(dead_code, reason = "browser.rs drives its page itself and uses only RustApp")]
pub fn run_script(bin: &std::path::Path, mut script: std::process::Command, by: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut s = ServerProc::start_in(bin, dir.path(), &[])?;
    let rust = RustApp::start(&s)?;
    script
        .env(
            "LATZERO_SOCKET",
            s.unix.clone().expect("the server serves its Unix socket"),
        )
        .env("LATZERO_KEYS", rust.keys.join(" "))
        .env("LATZERO_KEYS_TEXT", &rust.printed);
    let mut p = Proc::spawn(script)?;
    p.follow_script(|line| match line {
        "ready" => rust.check_peer(by),
        // Stopped and started again: the client's handle must prove its key again by itself.
        "restart" => s.restart(&[]),
        _ => bail!("unexpected line: {line}"),
    })?;
    assert!(
        p.seen.iter().any(|l| l == "ok re-joined after the server restarted"),
        "{by}: {:?}",
        p.seen
    );
    Ok(())
}
