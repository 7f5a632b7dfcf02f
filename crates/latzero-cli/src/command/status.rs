//! `latzero status`: a human summary of the running server, or `--json`.

use std::fmt::Write as _;

use anyhow::Result;
use serde_json::Value;

use super::view::{list, table};
use crate::cli::StatusArgs;

pub async fn run(args: StatusArgs) -> Result<()> {
    let ep = super::target(&args.target)?;
    let st = match args.limit {
        0 => latzero_client::admin::status(&ep).await,
        n => latzero_client::admin::status_limited(&ep, n).await,
    }
    .map_err(|e| super::request_failed(e, || format!("cannot get the status of the server at {ep}")))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        out!("{}", render(&st));
    }
    Ok(())
}

fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

/// Renders the status as text.
pub fn render(st: &Value) -> String {
    let srv = &st["server"];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "LatZero {} (protocol {}), pid {}, up {}",
        srv["version"].as_str().unwrap_or("?"),
        srv["protocol_version"].as_str().unwrap_or("?"),
        srv["pid"],
        uptime(srv["uptime_ms"].as_u64().unwrap_or(0))
    );
    let _ = writeln!(
        out,
        "listening: tcp {}, unix {}{}{}\ndata dir:  {}",
        srv["tcp"].as_str().unwrap_or("?"),
        srv["unix"].as_str().unwrap_or("off"),
        srv["ws"]
            .as_str()
            .map(|a| format!(", websocket {a}"))
            .unwrap_or_default(),
        srv["metrics"]
            .as_str()
            .map(|a| format!(", metrics http://{a}/metrics"))
            .unwrap_or_default(),
        srv["data_dir"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        out,
        "connections: {}   calls in flight: {}\n",
        st["connections"], st["calls_in_flight"]
    );

    let mut rows = vec![vec![
        "POOL".into(),
        "TYPE".into(),
        "MEMBERS".into(),
        "TRIGGERS (handlers)".into(),
    ]];
    for p in st["pools"].as_array().into_iter().flatten() {
        let triggers = p["triggers"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(t, h)| format!("{t}({})", list(h)))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "-".into());
        rows.push(vec![
            p["name"].as_str().unwrap_or("?").into(),
            p["type"].as_str().unwrap_or("?").into(),
            list(&p["members"]),
            triggers,
        ]);
    }
    if rows.len() == 1 {
        out.push_str("pools: none\n");
    } else {
        out.push_str(&table("  ", &rows));
    }
    more(&mut out, st, "pools", "pools", "latzero pools");
    out.push('\n');
    let mut rows = vec![vec![
        "APP".into(),
        "POOLS".into(),
        "TRIGGERS".into(),
        "IN FLIGHT".into(),
        "HANDLING".into(),
        "PEER".into(),
    ]];
    for a in st["apps"].as_array().into_iter().flatten() {
        rows.push(vec![
            a["app_id"].as_str().unwrap_or("?").into(),
            list(&a["pools"]),
            list(&a["triggers"]),
            a["calls_in_flight"].to_string(),
            a["calls_handling"].as_u64().map_or("-".into(), |n| n.to_string()),
            a["peer"].as_str().unwrap_or("?").into(),
        ]);
    }
    if rows.len() == 1 {
        out.push_str("apps: none\n");
    } else {
        out.push_str(&table("  ", &rows));
    }
    more(&mut out, st, "apps", "connected apps", "latzero apps");
    out.push_str("\ncounters:\n");
    if let Some(c) = st["counters"].as_object() {
        let rows: Vec<Vec<String>> = c.iter().map(|(k, v)| vec![k.clone(), v.to_string()]).collect();
        out.push_str(&table("  ", &rows));
    }
    out
}

/// A line saying how many of `key` the status left out (it lists the first `--limit`), and
/// which command lists them all.
fn more(out: &mut String, st: &Value, key: &str, what: &str, command: &str) {
    let shown = st[key].as_array().map_or(0, Vec::len) as u64;
    if let Some(total) = st[format!("{key}_total")].as_u64().filter(|&t| t > shown) {
        let _ = writeln!(out, "  … and {} more {what} (of {total}): {command}", total - shown);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn renders_pools_apps_and_counters() {
        let st = json!({
            "server": {"version": "0.1.0", "protocol_version": "1.0", "pid": 7, "uptime_ms": 61000,
                       "tcp": "127.0.0.1:45227", "unix": "/d/latzero.sock", "data_dir": "/d"},
            "connections": 2, "calls_in_flight": 0,
            "pools": [{"name": "alpha", "type": "local", "members": ["a", "b"], "triggers": {"foo": ["b"]}}],
            "apps": [{"app_id": "a", "pools": ["alpha"], "triggers": [], "calls_in_flight": 0, "peer": "unix"}],
            "counters": {"calls_total": 3}
        });
        let text = super::render(&st);
        assert!(text.contains("up 1m 1s"), "{text}");
        assert!(
            text.contains("listening: tcp 127.0.0.1:45227, unix /d/latzero.sock\n"),
            "{text}"
        );
        let mut with_ws = st.clone();
        with_ws["server"]["ws"] = json!("127.0.0.1:45228");
        let text_ws = super::render(&with_ws);
        assert!(
            text_ws.contains(", unix /d/latzero.sock, websocket 127.0.0.1:45228\n"),
            "{text_ws}"
        );
        with_ws["server"]["metrics"] = json!("127.0.0.1:9100");
        let text_m = super::render(&with_ws);
        assert!(
            text_m.contains(", websocket 127.0.0.1:45228, metrics http://127.0.0.1:9100/metrics\n"),
            "{text_m}"
        );
        assert!(text.contains("alpha  local  a, b     foo(b)"), "{text}");
        assert!(text.contains("calls_total  3"), "{text}");
        assert!(!text.contains("more"), "{text}");
    }

    #[test]
    fn says_what_a_limited_status_left_out() {
        let st = json!({
            "server": {}, "pools_total": 3, "apps_total": 1,
            "pools": [{"name": "alpha", "type": "local", "members": [], "triggers": {}}],
            "apps": [{"app_id": "a", "pools": [], "triggers": [], "calls_in_flight": 0, "peer": "unix"}],
        });
        let text = super::render(&st);
        assert!(text.contains("… and 2 more pools (of 3): latzero pools"), "{text}");
        assert!(!text.contains("more connected apps"), "{text}");
    }
}
