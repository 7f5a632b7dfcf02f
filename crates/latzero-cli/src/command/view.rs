//! How the commands show what the server answers, when `--json` is not asked for: tables whose
//! columns line up whatever their cells hold, and values in words (times in UTC, policies as
//! who may do what).

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

/// `rows` (the first one the header) padded to their columns' widths, two spaces apart, each
/// line starting with `indent`.
pub fn table(indent: &str, rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(s, w)| format!("{s:<w$}")).collect();
        let _ = writeln!(out, "{indent}{}", line.join("  ").trim_end());
    }
    out
}

/// A value as a table cell: a string as it is, a list comma-separated, nothing as `-`.
pub fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// A list of names, `, `-separated; `-` for none.
pub fn list(v: &Value) -> String {
    match v.as_array() {
        Some(a) if !a.is_empty() => a.iter().map(cell).collect::<Vec<_>>().join(", "),
        _ => "-".into(),
    }
}

/// Milliseconds since the Unix epoch as a UTC time to the second; `-` for none.
pub fn time(ms: &Value) -> String {
    match ms.as_u64() {
        Some(ms) => humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string(),
        None => "-".into(),
    }
}

/// The operations a pool's policies govern, in PROTOCOL §4.4's order.
const OPERATIONS: [&str; 5] = ["join", "call", "emit", "read", "write"];

/// Who may do what in a pool, one operation to a line: an absent policy, or `"*"`, leaves the
/// operation open to every member (to any app, for `join`), and `[]` to the owners alone.
fn policies(p: &Value) -> Vec<String> {
    OPERATIONS
        .iter()
        .map(|op| {
            let anyone = if *op == "join" { "any app" } else { "every member" };
            let who = match p.get(op).and_then(Value::as_array) {
                None => format!("{anyone} (no policy)"),
                Some(apps) if apps.iter().any(|a| a == "*") => anyone.to_owned(),
                Some(apps) if apps.is_empty() => "the owners only".to_owned(),
                Some(apps) => format!("the owners and {}", list(&Value::Array(apps.clone()))),
            };
            format!("{op:<6} {who}")
        })
        .collect()
}

/// Who a block's `read` or `write` list names: `"*"` is every member of its pool.
fn who(apps: &Value) -> String {
    match apps.as_array() {
        Some(a) if a.iter().any(|x| x == "*") => "every member".into(),
        Some(a) if a.is_empty() => "no one".into(),
        _ => list(apps),
    }
}

/// One memory block, as `block_stat` (and `mem create`) describe it: a line per field, its
/// stream's records and consumers for a stream block.
pub fn block(info: &Value) -> String {
    let mut fields: Vec<(&str, Vec<String>)> = vec![];
    fields.push((
        "type",
        vec![format!(
            "{}, {} bytes, {}",
            info["type"].as_str().unwrap_or("?"),
            info["size"],
            if info["persistent"] == true {
                "persistent (kept across restarts)"
            } else {
                "not persistent"
            }
        )],
    ));
    fields.push(("version", vec![info["version"].to_string()]));
    fields.push(("owner", vec![cell(&info["owner"])]));
    let (read, write) = (&info["permissions"]["read"], &info["permissions"]["write"]);
    // Writers may also read.
    let readers = match (who(read), who(write)) {
        (r, _) if r == "every member" => r,
        (_, w) if w == "every member" => w,
        (r, w) if w == "no one" => r,
        (r, _) if r == "no one" => "the writers".into(),
        (r, _) => format!("{r}, and the writers"),
    };
    fields.push(("readers", vec![readers]));
    fields.push(("writers", vec![who(write)]));
    let locks = &info["locks"];
    let held: Vec<String> = locks["held"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|l| {
                    format!(
                        "{} ({}, {} ms left)",
                        cell(&l["app_id"]),
                        cell(&l["mode"]),
                        l["expires_in_ms"]
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut lock_line = if held.is_empty() {
        "none held".to_owned()
    } else {
        format!("held by {}", held.join(", "))
    };
    if let Some(n) = locks["waiting"].as_u64().filter(|n| *n > 0) {
        let _ = write!(lock_line, "; {n} waiting");
    }
    fields.push(("locks", vec![lock_line]));
    fields.push(("watchers", vec![info["watchers"].to_string()]));
    if let Some(st) = info.get("stream") {
        let (oldest, next) = (
            st["oldest_index"].as_u64().unwrap_or(0),
            st["next_index"].as_u64().unwrap_or(0),
        );
        fields.push((
            "records",
            vec![if next > oldest {
                format!(
                    "{} held, {oldest} to {} ({} bytes)",
                    next - oldest,
                    next - 1,
                    st["bytes_held"]
                )
            } else {
                format!("none held (the next is {next})")
            }],
        ));
        let consumers: Vec<String> = st["consumers"]
            .as_array()
            .map(|c| {
                c.iter()
                    .map(|c| format!("{} (next record {})", cell(&c["name"]), c["next_index"]))
                    .collect()
            })
            .unwrap_or_default();
        fields.push((
            "consumers",
            if consumers.is_empty() {
                vec!["-".into()]
            } else {
                consumers
            },
        ));
    }
    fields.push(("created", vec![time(&info["created_at"])]));
    let title = format!(
        "block {} in pool {}\n",
        info["block_id"].as_str().unwrap_or("?"),
        info["pool"].as_str().unwrap_or("?")
    );
    fields_text(title, &fields)
}

/// One pool, as `pool_show` (and `pool_created`, `pool_updated`) describe it: a line per
/// field, its memory blocks if the description has them.
pub fn pool(info: &Value) -> String {
    let mut fields: Vec<(&str, Vec<String>)> = vec![];
    let stored = info["stored"].as_bool() == Some(true);
    let kind = format!(
        "{}, {}",
        info["type"].as_str().unwrap_or("?"),
        if stored { "stored" } else { "live only (not stored)" }
    );
    fields.push(("type", vec![kind]));
    if stored {
        let description = info["description"].as_str().unwrap_or_default();
        fields.push((
            "description",
            vec![if description.is_empty() {
                "-".into()
            } else {
                description.into()
            }],
        ));
        fields.push(("owners", vec![list(&info["owners"])]));
        fields.push(("policies", policies(&info["policies"])));
    }
    if let Some(generations) = info.get("key_generations") {
        fields.push(("key generations", vec![list(generations)]));
    }
    fields.push(("members", vec![list(&info["members"])]));
    if info["members_removed"].as_array().is_some_and(|m| !m.is_empty()) {
        // After an update: the members its new policies took out of the pool.
        fields.push(("members removed", vec![list(&info["members_removed"])]));
    }
    let triggers: Vec<String> = info["triggers"]
        .as_object()
        .map(|m| m.iter().map(|(t, h)| format!("{t} ({})", list(h))).collect())
        .unwrap_or_default();
    fields.push((
        "triggers",
        if triggers.is_empty() {
            vec!["-".into()]
        } else {
            triggers
        },
    ));
    if let Some(blocks) = info["blocks"].as_array() {
        let blocks: Vec<String> = blocks
            .iter()
            .map(|b| {
                format!(
                    "{} ({}, {} bytes, version {}{})",
                    cell(&b["block_id"]),
                    cell(&b["type"]),
                    b["size"],
                    b["version"],
                    if b["persistent"] == true { ", persistent" } else { "" }
                )
            })
            .collect();
        fields.push(("blocks", if blocks.is_empty() { vec!["-".into()] } else { blocks }));
    }
    fields.push(("created", vec![time(&info["created_at"])]));
    if stored {
        fields.push(("updated", vec![time(&info["updated_at"])]));
    }
    fields_text(format!("pool {}\n", info["name"].as_str().unwrap_or("?")), &fields)
}

/// `title`, then a line per field value, keys lined up; a field's further values go under its
/// first.
fn fields_text(title: String, fields: &[(&str, Vec<String>)]) -> String {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = title;
    for (key, lines) in fields {
        for (i, l) in lines.iter().enumerate() {
            let key = if i == 0 { key } else { "" };
            let _ = writeln!(out, "  {key:<width$}  {l}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_table_lines_up_whatever_its_cells_hold() {
        let rows = vec![
            vec!["BLOCK".into(), "SIZE".into(), "OWNER".into()],
            vec!["a-rather-long-block-name".into(), cell(&json!(64)), cell(&json!("me"))],
            vec!["b".into(), cell(&json!(1048576)), cell(&json!(null))],
        ];
        assert_eq!(
            table("", &rows),
            "BLOCK                     SIZE     OWNER\n\
             a-rather-long-block-name  64       me\n\
             b                         1048576  -\n"
        );
        assert_eq!(table("  ", &rows[..1]), "  BLOCK  SIZE  OWNER\n");
    }

    #[test]
    fn times_are_utc_to_the_second() {
        assert_eq!(time(&json!(1_763_776_800_123u64)), "2025-11-22T02:00:00Z");
        assert_eq!(time(&json!(null)), "-");
    }

    #[test]
    fn a_stored_pool_says_who_may_do_what() {
        let info = json!({
            "name": "alpha", "type": "local", "stored": true, "created_at": 1_763_776_800_000u64,
            "updated_at": 1_763_776_860_000u64, "description": "dev pool", "owners": ["ops"],
            "policies": {"call": ["api", "web"], "write": [], "read": ["*"]},
            "members": ["api", "worker"], "triggers": {"echo": ["worker"]},
            "blocks": [{"block_id": "frame", "type": "binary", "size": 64, "version": 3, "persistent": true}]
        });
        assert_eq!(
            pool(&info),
            "pool alpha\n\
             \x20 type         local, stored\n\
             \x20 description  dev pool\n\
             \x20 owners       ops\n\
             \x20 policies     join   any app (no policy)\n\
             \x20              call   the owners and api, web\n\
             \x20              emit   every member (no policy)\n\
             \x20              read   every member\n\
             \x20              write  the owners only\n\
             \x20 members      api, worker\n\
             \x20 triggers     echo (worker)\n\
             \x20 blocks       frame (binary, 64 bytes, version 3, persistent)\n\
             \x20 created      2025-11-22T02:00:00Z\n\
             \x20 updated      2025-11-22T02:01:00Z\n"
        );
    }

    #[test]
    fn an_update_names_the_members_it_took_out() {
        let mut info = json!({"name": "p", "type": "local", "stored": true, "created_at": 0,
                              "members": ["a"], "triggers": {}, "members_removed": ["b", "c"]});
        assert!(pool(&info).contains("members removed  b, c\n"), "{}", pool(&info));
        info["members_removed"] = json!([]);
        assert!(!pool(&info).contains("removed"), "{}", pool(&info));
    }

    #[test]
    fn a_block_says_who_may_use_it_and_who_holds_it() {
        let info = json!({
            "pool": "p", "block_id": "frame", "type": "binary", "size": 64, "persistent": false,
            "version": 3, "owner": "cam", "created_at": 1_763_776_800_000u64, "watchers": 2,
            "permissions": {"read": ["ui"], "write": ["cam"]},
            "locks": {"held": [{"app_id": "cam", "mode": "exclusive", "expires_in_ms": 2500}], "waiting": 1}
        });
        assert_eq!(
            block(&info),
            "block frame in pool p\n\
             \x20 type      binary, 64 bytes, not persistent\n\
             \x20 version   3\n\
             \x20 owner     cam\n\
             \x20 readers   ui, and the writers\n\
             \x20 writers   cam\n\
             \x20 locks     held by cam (exclusive, 2500 ms left); 1 waiting\n\
             \x20 watchers  2\n\
             \x20 created   2025-11-22T02:00:00Z\n"
        );
        let stream = json!({
            "pool": "p", "block_id": "log", "type": "stream", "size": 4096, "persistent": true,
            "version": 9, "owner": "w", "created_at": 0, "watchers": 0,
            "permissions": {"read": ["*"], "write": []},
            "locks": {"held": [], "waiting": 0},
            "stream": {"oldest_index": 4, "next_index": 9, "bytes_held": 120,
                       "consumers": [{"name": "c1", "next_index": 6}]}
        });
        let text = block(&stream);
        for line in [
            "type       stream, 4096 bytes, persistent (kept across restarts)",
            "readers    every member\n",
            "writers    no one\n",
            "locks      none held\n",
            "records    5 held, 4 to 8 (120 bytes)",
            "consumers  c1 (next record 6)",
        ] {
            assert!(text.contains(line), "{line:?} in:\n{text}");
        }
    }

    #[test]
    fn a_live_pool_has_no_stored_fields() {
        let info = json!({"name": "p", "type": "local", "stored": false, "created_at": 0,
                          "members": [], "triggers": {}});
        let text = pool(&info);
        assert!(text.contains("type      local, live only (not stored)"), "{text}");
        assert!(text.contains("members   -") && text.contains("triggers  -"), "{text}");
        assert!(!text.contains("owners") && !text.contains("blocks"), "{text}");
    }
}
