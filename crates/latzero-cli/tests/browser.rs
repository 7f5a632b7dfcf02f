//! End-to-end: the JavaScript client in a real browser page. Headless Chromium opens
//! `clients/js/test/browser.html` from a small HTTP server here; the page runs the client's
//! checks (`clients/js/test/checks.mjs`, the same the Node test runs) against the real `latzero`
//! binary's WebSocket port, which lets the page's origin in (`--ws-origin`), with a `latzero
//! reply` worker and a server restart the page must come back from; then the encrypted-pool
//! checks (`clients/js/test/sealed.mjs`, on the browser's WebCrypto) with a Rust SDK app in the
//! pool (`sealed/mod.rs`). Then it goes to a page of another origin, which the server must
//! refuse.
//!
//! The page reports each line by POSTing it to `/line`, in order; this test reads them as a
//! script and answers `restart` once the server is back. It needs Chromium (`chromium`, or the
//! binary named by `LATZERO_CHROMIUM`): `scripts/test.sh` installs Debian's.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use anyhow::{Context, Result, bail};
use latzero_testkit::{EVENT_TIMEOUT, ServerProc, free_port};

mod sealed;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_latzero"))
}

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/js")
}

/// The browser: `LATZERO_CHROMIUM`, else the first of the usual names that runs.
fn chromium() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("LATZERO_CHROMIUM") {
        return Ok(p.into());
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        let runs = Command::new(name)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if runs {
            return Ok(name.into());
        }
    }
    bail!("the browser test needs Chromium (chromium, or LATZERO_CHROMIUM); scripts/test.sh installs Debian's")
}

/// A line the page sent, and where to say it was handled (with text for the page).
type Line = (String, mpsc::Sender<String>);

/// Serves `root`'s files (GET) and takes the page's lines (POST /line) on `l`, one request per
/// connection, each on a thread of its own (a connection the browser opens ahead and leaves
/// idle holds up no other). A line's response waits until the test has handled it, and carries
/// the test's answer; the page sends the next only then. A request it cannot read is dropped: the page then fails to
/// report, and the test says what it saw.
fn serve(l: TcpListener, root: PathBuf, lines: mpsc::Sender<Line>) {
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let (root, lines) = (root.clone(), lines.clone());
            std::thread::spawn(move || answer(s, &root, &lines));
        }
    });
}

fn answer(mut s: TcpStream, root: &Path, lines: &mpsc::Sender<Line>) -> Result<()> {
    s.set_read_timeout(Some(EVENT_TIMEOUT))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut head = String::new();
    r.read_line(&mut head)?;
    let mut parts = head.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut len = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse()?;
        }
    }
    let path = target.split('?').next().unwrap_or("");
    let (status, kind, body) = if method == "POST" && path == "/line" {
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        let (done_tx, done) = mpsc::channel();
        lines.send((String::from_utf8(body)?, done_tx))?;
        let reply = done.recv_timeout(EVENT_TIMEOUT * 2)?;
        ("200 OK", "text/plain", reply.into_bytes())
    } else {
        let file = path.trim_start_matches('/');
        let kind = match file.rsplit_once('.').map(|(_, ext)| ext) {
            Some("html") => "text/html; charset=utf-8",
            Some("mjs") => "text/javascript; charset=utf-8",
            _ => "application/octet-stream",
        };
        match std::fs::read(root.join(file)) {
            Ok(b) if method == "GET" && !file.contains("..") => ("200 OK", kind, b),
            _ => ("404 Not Found", "text/plain", b"not found".to_vec()),
        }
    };
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(&body)?;
    Ok(())
}

/// Chromium and every process it started, killed as a group when the test ends.
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

#[test]
fn the_javascript_client_runs_in_a_browser_page_and_other_origins_are_refused() -> Result<()> {
    use std::os::unix::process::CommandExt;

    let browser = chromium()?;
    let page = TcpListener::bind("127.0.0.1:0")?;
    let elsewhere = TcpListener::bind("127.0.0.1:0")?;
    let origin = format!("http://{}", page.local_addr()?);
    let other = format!("http://{}/test/refused.html", elsewhere.local_addr()?);

    let dir = tempfile::tempdir()?;
    let port = free_port().to_string();
    let args = ["--ws-port", port.as_str(), "--ws-origin", origin.as_str()];
    let mut s = ServerProc::start_in(bin(), dir.path(), &args)?;
    let _worker = s.reply(&["--app", "worker", "--pool", "demo", "echo"])?;

    let (tx, lines) = mpsc::channel();
    serve(page, js_dir(), tx.clone());
    serve(elsewhere, js_dir(), tx);

    let profile = tempfile::tempdir()?;
    let ws = format!("ws://127.0.0.1:{port}");
    let url = format!("{origin}/test/browser.html?ws={ws}&other={other}");
    let _chromium = Browser(
        Command::new(&browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(&url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", browser.display()))?,
    );

    let mut seen = vec![];
    // The encrypted pool's Rust app, started once the checks' restart is behind them; the page
    // gets the pool's keys in the answer to the line that says so.
    let mut rust = None;
    loop {
        let (line, handled) = lines
            .recv_timeout(EVENT_TIMEOUT)
            .with_context(|| format!("the page went quiet; it said {seen:?}"))?;
        seen.push(line.clone());
        if line == "restart" {
            // Stopped and started again on the same ports: the page must come back by itself.
            s.restart(&args)?;
        }
        let mut reply = String::new();
        if line == "ok the checks ran in a browser page" {
            let app = sealed::RustApp::start(&s)?;
            reply = serde_json::json!({"keys": app.keys, "printed": app.printed}).to_string();
            rust = Some(app);
        }
        if line == "ready" {
            rust.as_ref()
                .context("ready before the keys")?
                .check_peer("javascript")?;
        }
        let _ = handled.send(reply);
        if line.starts_with("FAIL") {
            bail!("the page failed: {seen:?}");
        }
        if line == "done" {
            break;
        }
    }
    for want in [
        "ok reconnected with its handlers",
        "ok the checks ran in a browser page",
        "ok re-joined after the server restarted",
        "ok the encrypted-pool checks ran in a browser page",
        "ok a page of another origin is refused",
    ] {
        assert!(seen.iter().any(|l| l == want), "{want:?} not in {seen:?}");
    }
    Ok(())
}
