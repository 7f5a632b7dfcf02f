//! An encrypted pool: the server routes calls between its members, and keeps a stream of their
//! records, but sees only ciphertext. The owner creates the pool with the public verifiers of a
//! new key set; a handler and a caller join it with the keys (the SigilKey proves the right to
//! join; the CipherShard opens payloads; the OblivionSeal signs them), and an auditor that holds
//! no OblivionSeal reads the stream but could not write to it.
//!
//! ```sh
//! cargo run -p latzero-cli --release -- start          # terminal 1: the server
//! cargo run -p latzero-examples --bin encrypted        # terminal 2: this program
//! ```
//!
//! Outside an example the owner runs `latzero keys generate POOL --app OWNER`, which creates the
//! pool and prints the three keys once, and hands them to the apps that need them.

use latzero_client::{BlockOptions, Client, PoolKeys, PoolSpec, Request, generate_pool_keys};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // A pool of its own per run: a stored pool outlives the program.
    let pool = format!("vault-{}", std::process::id());
    let owner = Client::connect("latzero://vault-owner").await?;
    let (keys, verifiers) = generate_pool_keys(&pool, 1);
    let spec = PoolSpec {
        kind: "encrypted".into(),
        keys: Some(verifiers),
        ..PoolSpec::default()
    };
    owner.create_pool(&pool, spec).await?;
    println!("created encrypted pool {pool}; the server holds only the public verifiers");

    let teller = Client::connect("latzero://teller").await?;
    let vault = teller.encrypted_pool(&pool, PoolKeys::parse(&pool, &keys)?).await?;
    vault
        .handle("balance", |req: Request| async move {
            let account = req.data["account"].as_str().unwrap_or("?").to_owned();
            Ok(json!({ "account": account, "balance": 1200 }))
        })
        .await?;

    let customer = Client::connect("latzero://customer").await?;
    let mine = customer.encrypted_pool(&pool, PoolKeys::parse(&pool, &keys)?).await?;
    let answer = mine.call("balance", &json!({ "account": "7" })).await?;
    println!("balance of account 7, opened by the caller: {answer}");

    // A stream whose every record is sealed: the teller logs what it did; an auditor with the
    // SigilKey and the CipherShard only reads the log in order.
    let log = teller
        .create_block(&pool, "ledger", BlockOptions::stream(64 * 1024))
        .await?;
    let auditor = Client::connect("latzero://auditor").await?;
    let audit = auditor
        .encrypted_pool(&pool, PoolKeys::parse(&pool, [&keys[0], &keys[1]])?)
        .await?;
    let ledger = auditor.attach_block(&pool, "ledger").await?;
    audit.consume(&ledger, "audit", 10).await?; // registers the consumer: it sees what follows
    for entry in ["account 7 read", "account 7 debited 200"] {
        vault.append(&log, entry.as_bytes()).await?;
    }
    for record in audit.consume(&ledger, "audit", 10).await?.records {
        println!("ledger, opened by the auditor: {}", String::from_utf8_lossy(&record?));
    }

    owner.remove_pool(&pool, true).await?;
    println!("removed {pool}");
    Ok(())
}
