//! `latzero mem ...`: memory blocks from the command line.

use std::io::BufRead;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use latzero_client::{BlockEvent, BlockOptions, Client, ClientOptions, EncryptedPool, MemoryBlock};
use serde_json::{Value, json};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::cli::{MemBlockArgs, MemCmd, MemCreateArgs, MemLockArgs, MemReadArgs, MemWatchArgs, MemWriteArgs};

async fn connect(b: &MemBlockArgs) -> Result<Client> {
    Ok(connect_sealed(b).await?.0)
}

/// Connects to the block's pool, by proving its SigilKey with `--keys` (then with the pool's
/// handle, to seal and open).
async fn connect_sealed(b: &MemBlockArgs) -> Result<(Client, Option<EncryptedPool>)> {
    connect_to(&b.target, b.app.as_deref(), &b.pool, b.keys.as_deref()).await
}

async fn connect_to(
    t: &crate::cli::TargetArgs,
    app: Option<&str>,
    pool: &str,
    keys: Option<&std::path::Path>,
) -> Result<(Client, Option<EncryptedPool>)> {
    let opts = ClientOptions::new().reconnect(false);
    match keys {
        Some(keys) => {
            let (c, v) = super::connect_sealed(t, app, pool, keys, opts).await?;
            Ok((c, Some(v)))
        }
        None => Ok((
            super::connect(t, app, std::slice::from_ref(&pool.to_owned()), opts).await?,
            None,
        )),
    }
}

/// A flag that does not apply to a sealed block's record, which is read and written whole.
fn whole_record(flags: &[(&str, bool)]) -> Result<()> {
    if let Some((flag, _)) = flags.iter().find(|(_, given)| *given) {
        bail!("{flag} does not apply with --keys: a sealed block's record is read and written whole");
    }
    Ok(())
}

/// Ctrl-C (SIGINT) or SIGTERM, listened for from the moment it is made: one that comes before
/// the first wait ends that wait, rather than the process by the signal's default action (a
/// test that signals a holder as soon as it says `locked` relies on it).
struct Interrupt {
    int: Signal,
    term: Signal,
}

impl Interrupt {
    fn new() -> Result<Interrupt> {
        let listen = |kind| signal(kind).context("cannot listen for SIGINT and SIGTERM");
        Ok(Interrupt {
            int: listen(SignalKind::interrupt())?,
            term: listen(SignalKind::terminate())?,
        })
    }

    /// Waits for either.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

fn line(v: Value) {
    outln!("{v}");
}

pub async fn run(cmd: MemCmd) -> Result<()> {
    match cmd {
        MemCmd::Create(a) => create(a).await,
        MemCmd::List(a) => {
            let (c, _) = connect_to(&a.target, a.app.as_deref(), &a.pool, a.keys.as_deref()).await?;
            let blocks = c.list_blocks(&a.pool).await?;
            if a.json {
                outln!("{}", serde_json::to_string_pretty(&blocks)?);
            } else {
                let mut rows = vec![
                    ["BLOCK", "TYPE", "SIZE", "VERSION", "PERSISTENT", "OWNER"]
                        .map(String::from)
                        .to_vec(),
                ];
                for b in &blocks {
                    rows.push(
                        ["block_id", "type", "size", "version", "persistent", "owner"]
                            .map(|k| super::view::cell(&b[k]))
                            .to_vec(),
                    );
                }
                out!("{}", super::view::table("", &rows));
            }
            Ok(())
        }
        MemCmd::Stat(a) => {
            let c = connect(&a.block).await?;
            let blk = c.attach_block_with(&a.block.pool, &a.block.block, None, false).await?;
            print_block(&blk.stat().await?, a.json)
        }
        MemCmd::Read(a) => read(a).await,
        MemCmd::Write(a) => write(a).await,
        MemCmd::Watch(a) => watch(a).await,
        MemCmd::Lock(a) => lock(a).await,
        MemCmd::Checksum(b) => {
            let c = connect(&b).await?;
            let blk = c.attach_block(&b.pool, &b.block).await?;
            if !blk.is_mapped() {
                bail!(
                    "block '{}' cannot be mapped from this process (is the server on another machine?)",
                    b.block
                );
            }
            let (hash, version) = blk.read_with(0, blk.size(), fnv1a64)?;
            line(
                json!({ "block_id": b.block, "size": blk.size(), "version": version, "mapped": true, "fnv1a64": format!("{hash:016x}") }),
            );
            Ok(())
        }
        MemCmd::Delete(b) => {
            let c = connect(&b).await?;
            c.delete_block(&b.pool, &b.block).await?;
            line(json!({ "deleted": b.block }));
            Ok(())
        }
    }
}

/// FNV-1a over the bytes, eight at a time (fast enough to hash 64 MiB in a blink; not for
/// security).
pub fn fnv1a64(d: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut chunks = d.chunks_exact(8);
    for c in &mut chunks {
        h ^= u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    for &b in chunks.remainder() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

async fn create(a: MemCreateArgs) -> Result<()> {
    let c = connect(&a.block).await?;
    let opts = match a.kind.as_str() {
        "binary" => BlockOptions::binary(a.size),
        "json" => BlockOptions::json(a.size),
        "stream" => BlockOptions::stream(a.size),
        other => bail!("--type must be binary, json or stream, not '{other}'"),
    };
    if a.overwrite && a.kind != "stream" {
        bail!("--overwrite applies to stream blocks only");
    }
    let mut opts = opts.readers(a.readers).writers(a.writers);
    if a.persistent {
        opts = opts.persistent();
    }
    if a.overwrite {
        opts = opts.overwrite();
    }
    let blk = c.create_block(&a.block.pool, &a.block.block, opts).await?;
    print_block(&blk.stat().await?, a.json)
}

/// A block's description: in words, or as JSON with `--json`.
fn print_block(info: &Value, json: bool) -> Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(info)?);
    } else {
        out!("{}", super::view::block(info));
    }
    Ok(())
}

/// The block's type, once the flags given are known to apply to it: a flag for another type
/// is refused rather than ignored.
fn kind_taking(stat: &Value, block: &str, flags: &[(&str, bool, &str)]) -> Result<String> {
    let kind = stat["type"].as_str().unwrap_or("binary");
    if let Some((flag, _, only)) = flags.iter().find(|(_, given, only)| *given && *only != kind) {
        bail!("{flag} applies to {only} blocks only; '{block}' is a {kind} block");
    }
    Ok(kind.to_owned())
}

async fn read(a: MemReadArgs) -> Result<()> {
    let (c, vault) = connect_sealed(&a.block).await?;
    let blk = c.attach_block(&a.block.pool, &a.block.block).await?;
    let stat = blk.stat().await?;
    if let Some(vault) = vault {
        return read_sealed(&a, &vault, &blk, &stat).await;
    }
    let flags = [
        ("--offset", a.offset.is_some(), "binary"),
        ("--length", a.length.is_some(), "binary"),
        ("--out", a.out.is_some(), "binary"),
        ("--consumer", a.consumer.is_some(), "stream"),
        ("--max", a.max.is_some(), "stream"),
    ];
    let offset = a.offset.unwrap_or(0);
    match kind_taking(&stat, &a.block.block, &flags)?.as_str() {
        "json" => {
            let (doc, version) = blk.read_json::<Value>().await?;
            line(json!({ "version": version, "document": doc }));
        }
        "stream" => {
            let consumer = a.consumer.context("reading a stream needs --consumer NAME")?;
            let r = blk.consume(&consumer, a.max.unwrap_or(1000)).await?;
            print_records(r.skipped, r.records.iter().map(Vec::as_slice));
        }
        _ => {
            let len = a.length.unwrap_or_else(|| blk.size().saturating_sub(offset));
            let (bytes, version) = blk.read(offset, len).await?;
            print_bytes(a.out.as_deref(), &bytes, version)?;
        }
    }
    Ok(())
}

async fn write(a: MemWriteArgs) -> Result<()> {
    let (c, vault) = connect_sealed(&a.block).await?;
    let blk = c.attach_block(&a.block.pool, &a.block.block).await?;
    let stat = blk.stat().await?;
    let data = match (&a.data, &a.file) {
        (Some(d), _) => Some(d.clone().into_bytes()),
        (None, Some(f)) => Some(super::read_file_arg(f)?),
        (None, None) => None,
    };
    if let Some(vault) = vault {
        return write_sealed(&a, &vault, &blk, &stat, data).await;
    }
    let flags = [
        ("--offset", a.offset.is_some(), "binary"),
        ("--fill", a.fill.is_some(), "binary"),
        ("--length", a.length.is_some(), "binary"),
        ("--lines", a.lines, "stream"),
    ];
    let offset = a.offset.unwrap_or(0);
    match kind_taking(&stat, &a.block.block, &flags)?.as_str() {
        "json" => {
            let bytes = data.context("give the JSON document as DATA or --file")?;
            let doc: Value = match &a.data {
                Some(d) => super::json_arg(Some(d), "DATA")?,
                None => serde_json::from_slice(&bytes).context("the file is not valid JSON")?,
            };
            let version = blk.write_json(&doc).await?;
            line(json!({ "version": version }));
        }
        "stream" => {
            if a.lines {
                let blk = &blk;
                append_lines(|l| async move { blk.append(&l).await }).await?;
            } else {
                let bytes = data.context("give the record as DATA or --file, or use --lines")?;
                let (index, version) = blk.append(&bytes).await?;
                line(json!({ "index": index, "version": version }));
            }
        }
        _ => {
            let version = if let Some(byte) = a.fill {
                let len = a.length.unwrap_or_else(|| blk.size().saturating_sub(offset));
                if blk.is_mapped() && blk.is_writable() {
                    blk.write_with(offset, len, |d| d.fill(byte)).await?
                } else {
                    blk.write(offset, &vec![byte; len as usize]).await?
                }
            } else {
                if a.length.is_some() {
                    bail!("--length goes with --fill (a write's length is its data's)");
                }
                let bytes = data.context("give the bytes as DATA or --file, or use --fill BYTE")?;
                blk.write(offset, &bytes).await?
            };
            line(json!({ "version": version, "mapped": blk.is_mapped() }));
        }
    }
    // A mapped write's notice is fire-and-forget: make sure it left before the process exits.
    c.flush().await?;
    Ok(())
}

/// Appends each line of standard input (its bytes, without the line end) with `append`, and
/// prints the last one's index and version. A failure says which lines went in, so a caller
/// knows what to send again.
async fn append_lines<F, Fut>(mut append: F) -> Result<()>
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = Result<(u64, u64), latzero_client::ClientError>>,
{
    let stdin = std::io::stdin();
    let mut last = json!(null);
    let (mut done, mut span) = (0u64, None);
    for (n, l) in stdin.lock().split(b'\n').enumerate() {
        let so_far = || match span {
            None => "no line appended before it".to_owned(),
            Some((a, b)) => format!("the {done} before it appended, as records {a} to {b}"),
        };
        let mut l = l.with_context(|| format!("reading line {} of stdin ({})", n + 1, so_far()))?;
        if l.last() == Some(&b'\r') {
            l.pop();
        }
        let (index, version) = append(l)
            .await
            .with_context(|| format!("line {} not appended ({})", n + 1, so_far()))?;
        span = Some((span.map_or(index, |(a, _)| a), index));
        done += 1;
        last = json!({ "index": index, "version": version });
    }
    line(last);
    Ok(())
}

/// A stream's records read: one a line, its bytes as they are (as `mem write --lines` takes
/// them), after a note on stderr of those overwritten before the consumer read them.
fn print_records<'a>(skipped: u64, records: impl Iterator<Item = &'a [u8]>) {
    if skipped > 0 {
        eprintln!("note: {skipped} records were overwritten before this consumer read them");
    }
    let mut out = Vec::new();
    for rec in records {
        out.extend_from_slice(rec);
        out.push(b'\n');
    }
    crate::out::bytes(&out);
}

/// A binary block's bytes read: to `--out`'s file (and a line saying so), else to stdout.
fn print_bytes(out: Option<&std::path::Path>, bytes: &[u8], version: u64) -> Result<()> {
    match out {
        Some(path) => {
            std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
            line(json!({ "version": version, "bytes": bytes.len(), "out": path }));
        }
        None => crate::out::bytes(bytes),
    }
    Ok(())
}

/// `mem read --keys`: a binary block's sealed record opened, or a stream's records opened in
/// turn (one refused — not sealed by a holder of the OblivionSeal, altered, or a replay — is said
/// on stderr in its place, and the command fails once the others are out).
async fn read_sealed(a: &MemReadArgs, vault: &EncryptedPool, blk: &MemoryBlock, stat: &Value) -> Result<()> {
    let flags = [
        ("--out", a.out.is_some(), "binary"),
        ("--consumer", a.consumer.is_some(), "stream"),
        ("--max", a.max.is_some(), "stream"),
    ];
    whole_record(&[("--offset", a.offset.is_some()), ("--length", a.length.is_some())])?;
    match kind_taking(stat, &a.block.block, &flags)?.as_str() {
        "stream" => {
            let consumer = a
                .consumer
                .as_deref()
                .context("reading a stream needs --consumer NAME")?;
            let r = vault.consume(blk, consumer, a.max.unwrap_or(1000)).await?;
            let first = r.next_index - r.records.len() as u64;
            let mut refused = 0;
            for (i, e) in r
                .records
                .iter()
                .enumerate()
                .filter_map(|(i, rec)| Some((i, rec.as_ref().err()?)))
            {
                refused += 1;
                eprintln!("record {} refused: {e}", first + i as u64);
            }
            print_records(r.skipped, r.records.iter().filter_map(|rec| rec.as_deref().ok()));
            if refused > 0 {
                bail!(
                    "{refused} of {} records refused (the consumer has moved past them)",
                    r.records.len()
                );
            }
        }
        _ => {
            let (bytes, version) = vault.read_block(blk).await?;
            print_bytes(a.out.as_deref(), &bytes, version)?;
        }
    }
    Ok(())
}

/// `mem write --keys`: a binary block's record sealed and written whole, or records sealed and
/// appended to a stream.
async fn write_sealed(
    a: &MemWriteArgs,
    vault: &EncryptedPool,
    blk: &MemoryBlock,
    stat: &Value,
    data: Option<Vec<u8>>,
) -> Result<()> {
    let flags = [("--lines", a.lines, "stream")];
    whole_record(&[
        ("--offset", a.offset.is_some()),
        ("--fill", a.fill.is_some()),
        ("--length", a.length.is_some()),
    ])?;
    match kind_taking(stat, &a.block.block, &flags)?.as_str() {
        "stream" if a.lines => append_lines(|l| async move { vault.append(blk, &l).await }).await?,
        "stream" => {
            let bytes = data.context("give the record as DATA or --file, or use --lines")?;
            let (index, version) = vault.append(blk, &bytes).await?;
            line(json!({ "index": index, "version": version }));
        }
        _ => {
            let bytes = data.context("give the bytes as DATA or --file")?;
            let version = vault.write_block(blk, &bytes).await?;
            line(json!({ "version": version }));
        }
    }
    Ok(())
}

async fn watch(a: MemWatchArgs) -> Result<()> {
    let c = connect(&a.block).await?;
    let blk = c.attach_block_with(&a.block.pool, &a.block.block, None, false).await?;
    let mut w = blk.watch(a.since).await?;
    let mut interrupt = Interrupt::new()?;
    let mut changes = 0u64;
    loop {
        let ev = tokio::select! {
            e = w.next() => e,
            _ = interrupt.recv() => return Ok(()),
        };
        let Some(ev) = ev else {
            bail!("the connection to the server closed");
        };
        let v = match ev {
            BlockEvent::Changed {
                version,
                offset,
                length,
            } => {
                changes += 1;
                json!({ "event": "changed", "version": version, "offset": offset, "length": length })
            }
            BlockEvent::Synced { version } => json!({ "event": "synced", "version": version }),
            BlockEvent::Deleted { version } => {
                line(json!({ "event": "deleted", "version": version }));
                return Ok(());
            }
            BlockEvent::Unwatched { version, reason } => {
                line(json!({ "event": "unwatched", "version": version, "reason": reason }));
                bail!("the watch ended: {reason}");
            }
            BlockEvent::LockExpired => json!({ "event": "lock_expired" }),
            BlockEvent::Lagged => json!({ "event": "lagged" }),
            // A kind of event this build does not know yet: said, not dropped.
            other => json!({ "event": "other", "debug": format!("{other:?}") }),
        };
        line(v);
        if a.count.is_some_and(|n| changes >= n) {
            return Ok(());
        }
    }
}

async fn lock(a: MemLockArgs) -> Result<()> {
    let c = connect(&a.block).await?;
    let blk = c.attach_block_with(&a.block.pool, &a.block.block, None, false).await?;
    let mut interrupt = Interrupt::new()?;
    // A lease that ends under us (the connection dropped, a policy took the right away) is told
    // at once, not at the next renewal.
    let mut events = c.events();
    let lease = blk
        .lock_with(
            !a.shared,
            a.lease_ms.map(Duration::from_millis),
            Duration::from_millis(a.wait_ms),
        )
        .await?
        .lease;
    line(
        json!({ "event": "locked", "mode": if a.shared { "shared" } else { "exclusive" }, "pid": std::process::id() }),
    );
    let hold = async {
        match a.hold_ms {
            Some(ms) => tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                _ = interrupt.recv() => {}
            },
            None => interrupt.recv().await,
        }
    };
    tokio::pin!(hold);
    // Held as long as asked, the lease renewed at each half: the lease only ends the lock of a
    // holder that stops answering (a stopped or wedged process whose socket stays open).
    let every = (lease / 2).max(Duration::from_millis(1));
    let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // A renewal that is due goes first (a holder held up past its lease usually learns it
            // there; the server's word that the lease expired may come in first, and says so).
            biased;
            _ = &mut hold => break,
            _ = renew.tick() => {
                let grant = blk
                    .lock_with(!a.shared, Some(lease), Duration::ZERO)
                    .await
                    .context("the lock's lease could not be renewed; it is no longer held")?;
                if !grant.renewed {
                    // Locked afresh: the lock was not held throughout, so it is not held on.
                    let _ = blk.unlock().await;
                    bail!(
                        "the lock's lease ({} ms) lapsed before it was renewed: this process was held up for more than half of it, and others could have locked the block in between; lock released",
                        lease.as_millis()
                    );
                }
            }
            ev = events.recv() => match ev {
                Ok(latzero_client::ClientEvent::LockExpired { pool, block_id, reason, .. })
                    if pool == a.block.pool && block_id == a.block.block =>
                {
                    bail!("the lock is no longer held ({reason}): others could have locked the block since");
                }
                // Events dropped for lagging: the next renewal still finds out.
                _ => {}
            },
        }
    }
    blk.unlock().await?;
    line(json!({ "event": "unlocked" }));
    Ok(())
}
