//! `latzero keys generate|rotate`: an encrypted pool's triple key. The keys are made here,
//! printed once to stdout, and never sent anywhere; the server is given only their verifiers.

use anyhow::{Context, Result, bail};
use latzero_client::{ClientOptions, PoolSpec, generate_pool_keys};

use crate::cli::{KeysArgs, KeysCmd};

/// Where the keys go: stdout, or a file made for them before anything changes on the server
/// (removed again if the keys never reach it: the pool was refused, say).
enum Out {
    Stdout,
    File(KeysFile),
}

struct KeysFile {
    path: std::path::PathBuf,
    file: std::fs::File,
    written: bool,
}

impl Drop for KeysFile {
    fn drop(&mut self) {
        if !self.written {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Out {
    /// The file `--out` names, made now, new and readable by its owner only: an existing file
    /// (the keys of another generation, say) is not overwritten, and a directory that cannot take
    /// it fails before the server is asked for anything.
    fn open(path: Option<std::path::PathBuf>) -> Result<Out> {
        use std::os::unix::fs::OpenOptionsExt;
        let Some(path) = path else { return Ok(Out::Stdout) };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot make the keys file {}", path.display()))?;
        Ok(Out::File(KeysFile {
            path,
            file,
            written: false,
        }))
    }
}

/// Prints the keys (or writes them into `--out`'s file) in one write. They exist nowhere else,
/// so a failure to print them is an error that says how to get a new set, not the quiet end of
/// a closed pipe.
fn print_keys(out: Out, pool: &str, owner: &str, generation: u32, texts: &[String; 3]) -> Result<()> {
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
    let failed = match &out {
        Out::Stdout => "could not be printed".to_owned(),
        Out::File(k) => format!("could not be written to {}", k.path.display()),
    };
    let written = match out {
        Out::Stdout => {
            let mut o = std::io::stdout().lock();
            o.write_all(text.as_bytes()).and_then(|()| o.flush())
        }
        Out::File(mut k) => k
            .file
            .write_all(text.as_bytes())
            .and_then(|()| k.file.sync_all())
            .map(|()| {
                k.written = true;
                eprintln!(
                    "pool {pool}, key generation {generation}: keys written to {} (mode 600)",
                    k.path.display()
                );
            }),
    };
    written.with_context(|| {
            format!(
                "pool '{pool}' has key generation {generation}, but its keys {failed} and are kept nowhere; `latzero keys rotate {pool} --app {owner}` makes a new set"
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
            out,
        } => {
            let out = Out::open(out)?;
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
            print_keys(out, &pool, &owner, 1, &texts)?;
        }
        KeysCmd::Rotate { pool, app, out } => {
            let out = Out::open(out)?;
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
            print_keys(out, &pool, &app, generation, &texts)?;
            eprintln!(
                "records sealed under generations 1..={latest} stay readable with the old keys; apps need the new SigilKey to join"
            );
        }
    }
    Ok(())
}
