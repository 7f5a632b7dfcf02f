//! `latzero health`: the server's health checks, a line each, for people and for probes — the
//! exit status is 0 only when every check passed.

use anyhow::{Result, bail};
use serde_json::Value;

use crate::cli::HealthArgs;

pub async fn run(args: HealthArgs) -> Result<()> {
    let ep = super::target(&args.target)?;
    let h = latzero_client::admin::health(&ep)
        .await
        .map_err(|e| super::request_failed(e, || format!("cannot check the health of the server at {ep}")))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&h)?);
    } else {
        out!("{}", render(&h));
    }
    if h["healthy"] != true {
        let failed: Vec<&str> = checks(&h)
            .filter(|c| c["ok"] != true)
            .filter_map(|c| c["name"].as_str())
            .collect();
        bail!("the server at {ep} is not healthy: {} failed", failed.join(", "));
    }
    Ok(())
}

fn checks(h: &Value) -> impl Iterator<Item = &Value> {
    h["checks"].as_array().into_iter().flatten()
}

/// One line per check: `ok` or `FAIL`, its name, how long it took, and what it found.
pub fn render(h: &Value) -> String {
    checks(h)
        .map(|c| {
            format!(
                "{:<4}  {:<12}  {:>8.1} ms  {}\n",
                if c["ok"] == true { "ok" } else { "FAIL" },
                c["name"].as_str().unwrap_or("?"),
                c["ms"].as_f64().unwrap_or(0.0),
                c["detail"].as_str().unwrap_or("")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_line_per_check_failures_marked() {
        let h = json!({"healthy": false, "checks": [
            {"name": "store", "ok": true, "ms": 0.42, "detail": "a write committed"},
            {"name": "memory", "ok": false, "ms": 1.0, "detail": "1 of 1 blocks cannot be attached"},
        ]});
        assert_eq!(
            super::render(&h),
            "ok    store              0.4 ms  a write committed\n\
             FAIL  memory             1.0 ms  1 of 1 blocks cannot be attached\n"
        );
    }
}
