//! `latzero keys generate|rotate`: an encrypted pool's triple key. The keys are made here,
//! printed once to stdout, and never sent anywhere; the server is given only their verifiers.

use anyhow::{Context, Result, bail};
use latzero_client::{ClientOptions, PoolSpec, generate_pool_keys};

use crate::cli::{KeysArgs, KeysCmd};

/// Prints the keys in one write. They exist nowhere else, so a failure to print them is an
/// error that says how to get a new set, not the quiet end of a closed pipe.
fn print_keys(pool: &str, owner: &str, generation: u32, texts: &[String; 3]) -> Result<()> {
    use std::io::Write;
    let mut text = format!(
        "# pool {pool}, key generation {generation}. Shown once: the server keeps only verifiers.\n\
         # Give each app only what it needs: joining takes the SigilKey, reading the CipherShard,\n\
         # writing the CipherShard and the OblivionSeal (PoolKeys::parse takes any of these lines).\n"
    );
    for (name, key) in ["SigilKey     (join) ", "CipherShard  (read) ", "OblivionSeal (write)"]
        .iter()
        .zip(texts)
    {
        text.push_str(&format!("{name}  {key}\n"));
    }
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .with_context(|| {
            format!(
                "pool '{pool}' has key generation {generation}, but its keys could not be printed and are kept nowhere; `latzero keys rotate {pool} --app {owner}` makes a new set"
            )
        })
}

pub async fn run(a: KeysArgs) -> Result<()> {
    match a.cmd {
        KeysCmd::Generate {
            pool,
            app,
            owners,
            description,
            policies,
        } => {
            let policies = policies
                .map(|p| serde_json::from_str(&p).context("--policies is not valid JSON"))
                .transpose()?;
            let (texts, v) = generate_pool_keys(&pool, 1);
            // Who may rotate them: the owners named, else the app that creates the pool.
            let owner = owners.first().unwrap_or(&app).clone();
            let c = super::connect(&a.target, Some(&app), &[], ClientOptions::new().reconnect(false)).await?;
            let spec = PoolSpec {
                kind: "encrypted".into(),
                description,
                owners: (!owners.is_empty()).then_some(owners),
                policies,
                keys: Some(v),
            };
            c.create_pool(&pool, spec)
                .await
                .with_context(|| format!("cannot create encrypted pool '{pool}'"))?;
            print_keys(&pool, &owner, 1, &texts)?;
        }
        KeysCmd::Rotate { pool, app } => {
            let info = super::inventory::pool_show(&a.target, &pool).await?;
            let Some(latest) = info["key_generations"]
                .as_array()
                .and_then(|g| g.iter().filter_map(serde_json::Value::as_u64).max())
            else {
                bail!("pool '{pool}' is not an encrypted pool (create one with `latzero keys generate`)");
            };
            let generation = u32::try_from(latest + 1).context("key generation overflow")?;
            let (texts, v) = generate_pool_keys(&pool, generation);
            let c = super::connect(&a.target, Some(&app), &[], ClientOptions::new().reconnect(false)).await?;
            c.rotate_pool_keys(&pool, v)
                .await
                .with_context(|| format!("cannot rotate the keys of pool '{pool}'"))?;
            print_keys(&pool, &app, generation, &texts)?;
            eprintln!(
                "records sealed under generations 1..={latest} stay readable with the old keys; apps need the new SigilKey to join"
            );
        }
    }
    Ok(())
}
