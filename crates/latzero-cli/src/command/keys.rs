//! `latzero keys generate|rotate`: an encrypted pool's triple key. The keys are made here,
//! printed once to stdout, and never sent anywhere; the server is given only their verifiers.

use anyhow::{Context, Result, bail};
use latzero_client::{ClientOptions, PoolSpec, generate_pool_keys};

use crate::cli::{KeysArgs, KeysCmd};

fn print_keys(pool: &str, generation: u32, texts: &[String; 3]) {
    println!("# pool {pool}, key generation {generation}. Shown once: the server keeps only verifiers.");
    println!("# Give each app only what it needs: joining takes the SigilKey, reading the CipherShard,");
    println!("# writing the CipherShard and the OblivionSeal (PoolKeys::parse takes any of these lines).");
    for (name, text) in ["SigilKey     (join) ", "CipherShard  (read) ", "OblivionSeal (write)"]
        .iter()
        .zip(texts)
    {
        println!("{name}  {text}");
    }
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
            print_keys(&pool, 1, &texts);
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
            print_keys(&pool, generation, &texts);
            eprintln!(
                "records sealed under generations 1..={latest} stay readable with the old keys; apps need the new SigilKey to join"
            );
        }
    }
    Ok(())
}
