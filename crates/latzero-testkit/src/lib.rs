//! Dev-only helpers for end-to-end tests and benches: a temp data dir, the real `latzero`
//! binary as a child process (ready when it prints "listening on"), child peers whose stdout is
//! read line by line, and a blocking raw-frame client.
//!
//! Synchronisation is on events — a line on stdout, a frame on a socket, a process exit — with
//! generous timeouts only as a safety net so a broken build fails instead of hanging.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

pub mod damage;
pub mod protocol_doc;

/// The key texts `latzero keys generate|rotate` printed (its non-comment lines' last word).
pub fn printed_keys(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .collect()
}

/// The safety-net timeout for waiting on an event.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A child process whose stdout lines are collected by a thread.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// Everything read so far, for failure messages.
    pub seen: Vec<String>,
}

impl Proc {
    /// Spawns `cmd` with stdout piped (stderr piped too, collected on exit).
    pub fn spawn(mut cmd: Command) -> Result<Proc> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
        let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let out = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            child,
            lines: rx,
            seen: Vec::new(),
        })
    }

    /// The next stdout line, or an error at EOF or after the timeout.
    pub fn next_line(&mut self) -> Result<String> {
        match self.lines.recv_timeout(EVENT_TIMEOUT) {
            Ok(l) => {
                self.seen.push(l.clone());
                Ok(l)
            }
            Err(e) => bail!("no line from {:?} ({e}); seen: {:#?}", self.child.id(), self.seen),
        }
    }

    /// Reads lines until one satisfies `pred`, returning it.
    pub fn wait_line(&mut self, pred: impl Fn(&str) -> bool) -> Result<String> {
        loop {
            let l = self.next_line()?;
            if pred(&l) {
                return Ok(l);
            }
        }
    }

    /// Follows a client test script (`clients/*/test…`) to its end: it prints `ok NAME` per
    /// check, `FAIL …` on a failure, and `done` at the end; every other line goes to
    /// `on_line` (a request to the test, such as `restart`). Fails with everything the script
    /// printed if it fails or ends without `done`, or does not exit cleanly.
    pub fn follow_script(&mut self, mut on_line: impl FnMut(&str) -> Result<()>) -> Result<()> {
        loop {
            let line = self.next_line()?;
            if line == "done" {
                break;
            }
            if line.starts_with("FAIL") {
                let (_, err) = self.wait_exit()?;
                bail!("{line}\n{}\nstderr: {err}", self.seen.join("\n"));
            }
            if !line.starts_with("ok ") {
                on_line(&line)?;
            }
        }
        let (status, err) = self.wait_exit()?;
        if !status.success() {
            bail!("the script exited with {status:?}: {err}\n{}", self.seen.join("\n"));
        }
        Ok(())
    }

    /// The next stdout line that is a JSON object with `"event": event`.
    pub fn wait_event(&mut self, event: &str) -> Result<Value> {
        loop {
            let l = self.next_line()?;
            if let Ok(v) = serde_json::from_str::<Value>(&l)
                && v["event"] == event
            {
                return Ok(v);
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // The workspace denies unsafe code, so signals go through kill(1) instead of libc.
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits for exit; returns the status and everything on stderr.
    pub fn wait_exit(&mut self) -> Result<(ExitStatus, String)> {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            if let Some(st) = self.child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                // Drain remaining stdout lines for the record.
                while let Ok(l) = self.lines.try_recv() {
                    self.seen.push(l);
                }
                return Ok((st, err));
            }
            if Instant::now() > deadline {
                bail!("process {} did not exit within {EVENT_TIMEOUT:?}", self.child.id());
            }
            // Polling a child's exit status: there is no portable exit event to block on
            // together with a deadline.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real server as a child process in its own data directory.
#[derive(Debug)]
pub struct ServerProc {
    pub proc: Proc,
    pub tcp: SocketAddr,
    pub unix: Option<PathBuf>,
    pub data_dir: PathBuf,
    bin: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl ServerProc {
    /// Starts `bin start --port 0` in a fresh temp data dir.
    pub fn start(bin: &Path, extra: &[&str]) -> Result<ServerProc> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().to_path_buf();
        let mut s = Self::start_in(bin, &dir, extra)?;
        s._tmp = Some(tmp);
        Ok(s)
    }

    /// Starts the server in `data_dir` and waits for its "listening on" line.
    pub fn start_in(bin: &Path, data_dir: &Path, extra: &[&str]) -> Result<ServerProc> {
        let mut cmd = Command::new(bin);
        cmd.args(["start", "--port", "0", "--data-dir"])
            .arg(data_dir)
            .args(extra);
        cmd.env_remove("LATZERO_PORT")
            .env_remove("LATZERO_HOST")
            .env_remove("LATZERO_DATA_DIR")
            .env("NO_COLOR", "1");
        // Non-persistent blocks in the temp data dir rather than /dev/shm: a test server killed
        // with -9 cannot clean up after itself, and its temp dir goes with the test.
        if std::env::var_os("LATZERO_VOLATILE_MEMORY_DIR").is_none() {
            cmd.env("LATZERO_VOLATILE_MEMORY_DIR", data_dir);
        }
        Self::spawn(bin, cmd, data_dir)
    }

    /// Spawns a prepared `start` command and waits for its "listening on" line.
    pub fn spawn(bin: &Path, cmd: Command, data_dir: &Path) -> Result<ServerProc> {
        let mut proc = Proc::spawn(cmd)?;
        let ready = proc.wait_line(|l| l.starts_with("latzero ") && l.contains(" listening on "));
        if let Err(e) = ready {
            let (st, err) = proc
                .wait_exit()
                .unwrap_or_else(|_| (ExitStatus::default(), String::new()));
            bail!("server did not become ready: {e}; exit {st:?}; stderr: {err}");
        }
        let info: Value = serde_json::from_str(&std::fs::read_to_string(data_dir.join("server.json"))?)?;
        let tcp = info["tcp"]
            .as_str()
            .ok_or_else(|| anyhow!("server.json without tcp"))?
            .parse()?;
        let unix = info["unix"].as_str().map(PathBuf::from);
        Ok(ServerProc {
            proc,
            tcp,
            unix,
            data_dir: data_dir.to_path_buf(),
            bin: bin.to_path_buf(),
            _tmp: None,
        })
    }

    /// The server's `server.json` (its addresses, TLS fingerprint, metrics port, ...).
    pub fn info(&self) -> Result<Value> {
        Ok(serde_json::from_str(&std::fs::read_to_string(
            self.data_dir.join("server.json"),
        )?)?)
    }

    /// A `latzero://` URL over TCP for "APP[?QUERY]".
    pub fn url(&self, app_query: &str) -> String {
        let (app, q) = app_query.split_once('?').unwrap_or((app_query, ""));
        let q = if q.is_empty() { String::new() } else { format!("?{q}") };
        format!("latzero://{app}@{}{q}", self.tcp)
    }

    /// A command for the same binary pointed at this server's data dir (e.g. `call`, `reply`).
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env("NO_COLOR", "1");
        cmd.env_remove("LATZERO_PORT")
            .env_remove("LATZERO_HOST")
            .env_remove("LATZERO_DATA_DIR")
            .env_remove("LATZERO_TOKEN")
            .env_remove("LATZERO_JWT")
            .env_remove("LATZERO_MAX_FRAME_LEN");
        cmd
    }

    /// Starts `latzero reply` and waits until it is ready.
    pub fn reply(&self, args: &[&str]) -> Result<Proc> {
        let mut p = Proc::spawn(self.cli(&[&["reply"], args].concat()))?;
        p.wait_event("ready")
            .with_context(|| format!("reply {args:?} never became ready"))?;
        Ok(p)
    }

    /// Stops the server with `latzero stop`, waits for it to exit, and starts it again in the
    /// same data dir with `extra` (on a new TCP port unless `extra` names one; the same Unix
    /// socket path).
    pub fn restart(&mut self, extra: &[&str]) -> Result<()> {
        let (ok, _, err) = self.run(&["stop"])?;
        if !ok {
            bail!("latzero stop failed: {err}");
        }
        self.proc.wait_exit()?;
        *self = ServerProc::start_in(&self.bin, &self.data_dir, extra)?;
        Ok(())
    }

    /// Runs a CLI command to completion with `input` on its stdin: (success, stdout, stderr).
    pub fn run_with_stdin(&self, args: &[&str], input: &[u8]) -> Result<(bool, String, String)> {
        let mut cmd = self.cli(args);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        child.stdin.take().expect("piped").write_all(input)?;
        let out = child.wait_with_output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Runs a CLI command to completion: (success, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let out = self.cli(args).output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        ))
    }

    /// A raw TCP protocol client.
    pub fn raw(&self) -> Result<RawClient> {
        RawClient::connect(self.tcp)
    }
}

/// A blocking raw-frame client for exact wire assertions.
#[derive(Debug)]
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub fn connect(addr: SocketAddr) -> Result<RawClient> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(EVENT_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(RawClient {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends one JSON frame with exactly these bytes as payload.
    pub fn send_text(&mut self, json: &str) -> Result<()> {
        self.stream
            .write_all(&latzero_proto::frame::encode_json(json.as_bytes()))?;
        Ok(())
    }

    pub fn send(&mut self, v: &Value) -> Result<()> {
        self.send_text(&v.to_string())
    }

    pub fn send_bytes(&mut self, b: &[u8]) -> Result<()> {
        self.stream.write_all(b)?;
        Ok(())
    }

    /// The next frame's JSON, or `None` at end of stream.
    pub fn recv(&mut self) -> Result<Option<Value>> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
                if self.buf.len() >= 4 + len {
                    let payload: Vec<u8> = self.buf.drain(..4 + len).skip(4).collect();
                    return Ok(Some(serde_json::from_slice(&payload)?));
                }
            }
            let mut chunk = [0u8; 65536];
            let n = match self.stream.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
                Err(e) => return Err(e).context("reading a frame"),
            };
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn expect(&mut self) -> Result<Value> {
        self.recv()?
            .ok_or_else(|| anyhow!("connection closed while a frame was expected"))
    }

    pub fn handshake(&mut self, app: &str, pools: &[&str], triggers: &[&str]) -> Result<Value> {
        self.send(&serde_json::json!({"action":"handshake","app_id":app,"pools":pools,"triggers":triggers}))?;
        let ack = self.expect()?;
        if ack["action"] != "handshake_ack" {
            bail!("handshake refused: {ack}");
        }
        Ok(ack)
    }

    /// Ping round trip; returns the frames that arrived before the pong.
    pub fn sync(&mut self) -> Result<Vec<Value>> {
        self.send(&serde_json::json!({"action":"ping","id":"sync"}))?;
        let mut before = vec![];
        loop {
            let f = self.expect()?;
            if f["action"] == "pong" && f["in_reply_to"] == "sync" {
                return Ok(before);
            }
            before.push(f);
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound then released; for config-layering tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A tmpfs of a given size mounted on a temp dir (to stage a full or read-only disk), unmounted
/// on drop.
#[derive(Debug)]
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts one (`options` e.g. "size=1m" or "size=1m,ro"); `None` when this process may not
    /// mount (not root), after saying so on stderr — the caller then skips its checks.
    pub fn mount(options: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: cannot mount a tmpfs here (not root?)");
            return None;
        }
        Some(Tmpfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}
