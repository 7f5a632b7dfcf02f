//! `latzero apps`, `latzero pools`, `latzero blocks`: what the server remembers and holds.

use anyhow::{Context, Result, bail};
use latzero_client::{ClientOptions, PoolSpec};
use serde_json::{Value, json};

use super::view::{self, cell as s};
use crate::cli::{AppsArgs, AppsCmd, BlocksArgs, PoolsArgs, PoolsCmd, RestoreArgs, TargetArgs};

fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut all = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    all.extend(rows);
    out!("{}", view::table("", &all));
}

/// An admin query; a refusal says what was asked (`cannot show pool 'x' at ...`).
async fn query(t: &TargetArgs, action: &str, fields: Value, what: impl FnOnce() -> String) -> Result<Value> {
    let ep = super::target(t)?;
    latzero_client::admin::query(&ep, action, fields)
        .await
        .map_err(|e| super::request_failed(e, || format!("cannot {} at {ep}", what())))
}

/// How many items a listing asks for at once: a page stays far below a frame's limit however
/// many there are in all.
const PAGE: usize = 1000;

/// Every item of a paged listing (`pool_list`, `app_list`): page after page until `next` is
/// null.
async fn list_all(t: &TargetArgs, action: &str, key: &str, what: &str) -> Result<Vec<Value>> {
    let mut all = vec![];
    let mut after = Value::Null;
    loop {
        let mut fields = json!({ "limit": PAGE });
        if !after.is_null() {
            fields["after"] = after;
        }
        let mut r = query(t, action, fields, || what.to_owned()).await?;
        if let Value::Array(items) = r[key].take() {
            all.extend(items);
        }
        after = r["next"].take();
        if after.is_null() {
            return Ok(all);
        }
    }
}

/// Every pool, stored and live.
async fn pool_list(t: &TargetArgs) -> Result<Vec<Value>> {
    list_all(t, "pool_list", "pools", "list the pools").await
}

/// One pool's description, its memory blocks in `blocks`.
pub(crate) async fn pool_show(t: &TargetArgs, pool: &str) -> Result<Value> {
    let mut r = query(t, "pool_show", json!({ "pool": pool }), || {
        format!("show pool '{pool}'")
    })
    .await?;
    Ok(r["info"].take())
}

pub async fn apps(a: AppsArgs) -> Result<()> {
    if let Some(AppsCmd::Remove { app }) = &a.cmd {
        let r = query(&a.target, "app_remove", json!({ "app_id": app }), || {
            format!("remove app '{app}'")
        })
        .await?;
        if a.json {
            outln!("{}", json!({ "app_id": r["app_id"] }));
        } else {
            outln!("removed the stored registration of app {app}");
        }
        return Ok(());
    }
    let apps = list_all(&a.target, "app_list", "apps", "list the apps").await?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&apps)?);
        return Ok(());
    }
    print_table(
        &["APP", "CONNECTED", "POOLS", "TRIGGERS", "LAST SEEN (UTC)"],
        apps.iter()
            .map(|x| {
                vec![
                    s(&x["app_id"]),
                    s(&x["connected"]),
                    s(&x["pools"]),
                    s(&x["triggers"]),
                    view::time(&x["last_seen"]),
                ]
            })
            .collect(),
    );
    Ok(())
}

pub async fn pools(a: PoolsArgs) -> Result<()> {
    match a.cmd.unwrap_or(PoolsCmd::List) {
        PoolsCmd::List => {
            let pools = pool_list(&a.target).await?;
            if a.json {
                outln!("{}", serde_json::to_string_pretty(&pools)?);
                return Ok(());
            }
            print_table(
                &["POOL", "TYPE", "STORED", "MEMBERS", "OWNERS", "DESCRIPTION"],
                pools
                    .iter()
                    .map(|p| {
                        vec![
                            s(&p["name"]),
                            s(&p["type"]),
                            s(&p["stored"]),
                            s(&p["members"]),
                            s(&p["owners"]),
                            s(&p["description"]),
                        ]
                    })
                    .collect(),
            );
        }
        PoolsCmd::Show { pool } => print_pool(&pool_show(&a.target, &pool).await?, a.json)?,
        PoolsCmd::Create {
            pool,
            description,
            owners,
            app,
            kind,
            policies,
        } => {
            if owners.is_empty() && app.is_none() {
                bail!("name the pool's owners with --owners a,b (or connect as the owner with --app)");
            }
            let policies = policies
                .map(|p| serde_json::from_str(&p).context("--policies is not valid JSON"))
                .transpose()?;
            let c = connect(&a.target, app.as_deref()).await?;
            let spec = PoolSpec {
                kind,
                description,
                owners: (!owners.is_empty()).then_some(owners),
                policies,
                keys: None,
            };
            print_pool(&c.create_pool(&pool, spec).await?, a.json)?;
        }
        PoolsCmd::Update {
            pool,
            app,
            description,
            owners,
            policies,
        } => {
            if description.is_none() && owners.is_none() && policies.is_none() {
                bail!("nothing to change: give --description, --owners or --policies");
            }
            let mut changes = json!({});
            if let Some(d) = description {
                changes["description"] = json!(d);
            }
            if let Some(o) = owners {
                changes["owners"] = json!(o);
            }
            if let Some(p) = policies {
                changes["policies"] = serde_json::from_str(&p).context("--policies is not valid JSON")?;
            }
            let c = connect(&a.target, Some(&app)).await?;
            print_pool(&c.update_pool(&pool, changes).await?, a.json)?;
        }
        PoolsCmd::Remove { pool, app, force } => {
            let c = connect(&a.target, Some(&app)).await?;
            let removed = c.remove_pool(&pool, force).await?;
            if a.json {
                outln!("{}", serde_json::to_string_pretty(&removed)?);
            } else {
                let members = match view::list(&removed["members_removed"]) {
                    none if none == "-" => "none".to_owned(),
                    members => members,
                };
                outln!(
                    "removed pool {pool}; members removed: {members}; memory blocks deleted: {}",
                    removed["blocks_removed"]
                );
            }
        }
    }
    Ok(())
}

/// A pool's description: in words, or as JSON with `--json`.
fn print_pool(info: &Value, json: bool) -> Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(info)?);
    } else {
        out!("{}", view::pool(info));
    }
    Ok(())
}

async fn connect(t: &TargetArgs, app: Option<&str>) -> Result<latzero_client::Client> {
    super::connect(t, app, &[], ClientOptions::new().reconnect(false)).await
}

pub async fn blocks(a: BlocksArgs) -> Result<()> {
    let pools: Vec<String> = match &a.pool {
        Some(p) => vec![p.clone()],
        None => pool_list(&a.target)
            .await?
            .iter()
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect(),
    };
    let mut blocks = vec![];
    for p in pools {
        let mut info = pool_show(&a.target, &p).await?;
        if let Value::Array(b) = info["blocks"].take() {
            blocks.extend(b);
        }
    }
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&blocks)?);
        return Ok(());
    }
    print_table(
        &["POOL", "BLOCK", "TYPE", "SIZE", "VERSION", "PERSISTENT", "OWNER"],
        blocks
            .iter()
            .map(|b| {
                vec![
                    s(&b["pool"]),
                    s(&b["block_id"]),
                    s(&b["type"]),
                    s(&b["size"]),
                    s(&b["version"]),
                    s(&b["persistent"]),
                    s(&b["owner"]),
                ]
            })
            .collect(),
    );
    Ok(())
}

/// `latzero backup`: a progress bar on stderr, the backup's path and size on stdout.
pub async fn backup(t: TargetArgs) -> Result<()> {
    use std::io::Write as _;
    let ep = super::target(&t)?;
    let mut err = std::io::stderr();
    let done = latzero_client::admin::backup(&ep, |pct| {
        let filled = (pct.min(100) / 5) as usize;
        let _ = write!(
            err,
            "\rbacking up [{}{}] {pct:>3}%",
            "#".repeat(filled),
            " ".repeat(20 - filled)
        );
        let _ = err.flush();
    })
    .await
    .map_err(|e| super::request_failed(e, || format!("cannot back up the server at {ep}")))?;
    eprintln!();
    outln!("{}", json!({ "path": done["path"], "bytes": done["bytes"] }));
    Ok(())
}

/// `latzero restore FILE`: offline; refuses while a server runs on the data dir.
pub fn restore(a: RestoreArgs) -> Result<()> {
    let dir = a.data_dir.unwrap_or_else(crate::config::default_data_dir);
    let r = latzero_server::restore(&dir, &a.file)?;
    outln!(
        "{}",
        json!({ "restored": a.file, "database": r.database, "replaced_kept_at": r.replaced })
    );
    Ok(())
}

/// `latzero auth token`: 32 random bytes, hex; the token is shown once and never stored.
pub fn auth_token() -> Result<()> {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let hash = latzero_server::token_sha256(&token);
    outln!("{}", json!({ "token": token, "sha256": hash }));
    eprintln!(
        "give clients the token (LATZERO_TOKEN, or ClientOptions::token); start the server with \
         --require-auth --auth-token-sha256 {hash} (or [auth] token_sha256 = [\"{hash}\"] in config/latzero.toml)"
    );
    Ok(())
}
