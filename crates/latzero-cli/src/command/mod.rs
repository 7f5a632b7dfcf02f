//! One file per verb. Shared here: finding the running server and building app URLs.

pub mod call;
pub mod emit;
pub mod health;
pub mod inventory;
pub mod keys;
pub mod mem;
pub mod reply;
pub mod start;
pub mod status;
pub mod stop;
pub mod view;

use anyhow::{Context, Result, bail};
use latzero_client::admin::Target;
use latzero_client::{ClientError, Payload};
use latzero_proto::{DEFAULT_HOST, DEFAULT_PORT, Endpoint, ErrorCode, TlsVerify, parse_fingerprint};
use latzero_server::RuntimeInfo;

use crate::cli::TargetArgs;
use crate::config::default_data_dir;

/// Where the target server listens, and whether over TLS: --host/--port, else server.json in
/// the data dir (Unix socket preferred; its TCP port with the recorded TLS fingerprint
/// otherwise), else — for the default data dir only — the default TCP address. A data dir the
/// user named (`--data-dir`, `LATZERO_DATA_DIR`) without a server.json is an error: falling
/// back would reach whatever server has the default port, and `stop` would stop it.
/// --tls-fingerprint/--tls-ca force TLS over TCP.
pub fn target(t: &TargetArgs) -> Result<Target> {
    let mut tls = match (&t.tls_fingerprint, &t.tls_ca) {
        (Some(_), Some(_)) => bail!("give --tls-fingerprint or --tls-ca, not both"),
        (Some(f), None) => Some(TlsVerify::Fingerprint(parse_fingerprint(f)?)),
        (None, Some(ca)) => Some(TlsVerify::Ca(ca.clone())),
        (None, None) => None,
    };
    let default_tcp = || Endpoint::Tcp(format!("{DEFAULT_HOST}:{DEFAULT_PORT}"));
    // The server's own limit when its server.json says it (answers up to it can come back).
    let mut max_frame_len = latzero_proto::DEFAULT_MAX_FRAME_LEN;
    let endpoint = if t.host.is_some() || t.port.is_some() {
        let host = t.host.clone().unwrap_or_else(|| DEFAULT_HOST.to_owned());
        Endpoint::Tcp(format!("{host}:{}", t.port.unwrap_or(DEFAULT_PORT)))
    } else {
        let dir = t.data_dir.clone().unwrap_or_else(default_data_dir);
        match RuntimeInfo::read(&dir) {
            Err(e) if t.data_dir.is_some() && e.kind() == std::io::ErrorKind::NotFound => bail!(
                "no server is running on data directory {} (it has no server.json); start one with \
                 `latzero start -d {}`, or name a server with --host/--port",
                dir.display(),
                dir.display()
            ),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                bail!("cannot read {}: {e}", dir.join("server.json").display())
            }
            Ok(info) => {
                max_frame_len = info.max_frame_len.unwrap_or(max_frame_len);
                match info.unix {
                    Some(p) if p.exists() && tls.is_none() => Endpoint::Unix(p),
                    _ => {
                        if tls.is_none()
                            && let Some(f) = &info.tls_fingerprint
                        {
                            tls = Some(TlsVerify::Fingerprint(parse_fingerprint(f)?));
                        }
                        Endpoint::Tcp(info.tcp.to_string())
                    }
                }
            }
            Err(_) => default_tcp(),
        }
    };
    // Named, it wins over server.json's: the user may want less read, or knows the limit of a
    // server named by --host/--port.
    if let Some(n) = t.max_frame_len {
        if !(1024..=u32::MAX as usize).contains(&n) {
            bail!("--max-frame-len (LATZERO_MAX_FRAME_LEN) must be 1024 to 4294967295 bytes, not {n}");
        }
        max_frame_len = n;
    }
    Ok(Target {
        endpoint,
        tls,
        max_frame_len,
    })
}

/// A `latzero://` URL for `app` at `endpoint`.
fn url(endpoint: &Endpoint, app: Option<&str>, pools: &[String]) -> String {
    let app = app
        .map(str::to_owned)
        .unwrap_or_else(|| format!("latzero-cli-{}", std::process::id()));
    let pools = if pools.is_empty() {
        String::new()
    } else {
        format!("pools={}", pools.join(","))
    };
    match endpoint {
        Endpoint::Tcp(a) => format!(
            "latzero://{app}@{a}{}",
            if pools.is_empty() {
                String::new()
            } else {
                format!("?{pools}")
            }
        ),
        Endpoint::Unix(p) => {
            let path: String = form_urlencoded::byte_serialize(p.display().to_string().as_bytes()).collect();
            format!(
                "latzero://{app}?socket={path}{}",
                if pools.is_empty() {
                    String::new()
                } else {
                    format!("&{pools}")
                }
            )
        }
        Endpoint::Default => format!("latzero://{app}"),
    }
}

/// Connects as `app` (default `latzero-cli-<pid>`) to the target server, joining `pools`.
pub async fn connect(
    t: &TargetArgs,
    app: Option<&str>,
    pools: &[String],
    opts: latzero_client::ClientOptions,
) -> Result<latzero_client::Client> {
    // A generated app id is a one-off: the server need not remember it.
    let mut opts = opts.ephemeral(app.is_none()).credential_from_env();
    // Resolved once: server.json is read here, not again for the URL.
    let target = target(t)?;
    if let Some(tls) = target.tls {
        opts = opts.tls(tls);
    }
    // Without the flag the client follows the server's limit, told at the handshake.
    if t.max_frame_len.is_some() {
        opts = opts.max_frame_len(target.max_frame_len.saturating_add(latzero_proto::ENVELOPE_ROOM));
    }
    opts.connect(&url(&target.endpoint, app, pools))
        .await
        .map_err(with_hint)
}

/// Connects as `app` and joins the encrypted `pool` with the keys in `keys` (`--keys FILE`).
pub async fn connect_sealed(
    t: &TargetArgs,
    app: Option<&str>,
    pool: &str,
    keys: &std::path::Path,
    opts: latzero_client::ClientOptions,
) -> Result<(latzero_client::Client, latzero_client::EncryptedPool)> {
    let keys = keys_file(pool, keys)?;
    let client = connect(t, app, &[], opts).await?;
    let vault = client
        .encrypted_pool(pool, keys)
        .await
        .with_context(|| format!("cannot join encrypted pool '{pool}'"))?;
    Ok((client, vault))
}

/// A pool's keys from a file ([`PoolKeys::from_text`](latzero_client::PoolKeys::from_text)).
/// Warns when other users may read the file.
pub fn keys_file(pool: &str, path: &std::path::Path) -> Result<latzero_client::PoolKeys> {
    use std::os::unix::fs::MetadataExt;
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("cannot read the keys file {}", path.display()))?,
    );
    if let Ok(m) = std::fs::metadata(path)
        && m.is_file()
        && m.mode() & 0o077 != 0
    {
        eprintln!(
            "warning: the keys file {} may be read by other users (mode {:o}); `chmod 600 {}`",
            path.display(),
            m.mode() & 0o777,
            path.display()
        );
    }
    latzero_client::PoolKeys::from_text(pool, &text).with_context(|| format!("in the keys file {}", path.display()))
}

/// A failed request to the target server, with `context` said before it — unless the server was
/// not reached: that error names the address and says what to do, so it stands alone.
pub fn request_failed(e: ClientError, context: impl FnOnce() -> String) -> anyhow::Error {
    match e {
        e @ (ClientError::Connect { .. } | ClientError::Tls { .. }) => e.into(),
        e => with_hint(e).context(context()),
    }
}

/// The error, with how to give a credential when the server asked for one and none was given,
/// or how to read a longer answer.
fn with_hint(e: ClientError) -> anyhow::Error {
    if e.code() == Some(ErrorCode::AuthFailed) && !latzero_client::admin::has_env_credential() {
        anyhow::anyhow!(
            "{e}; the command-line tools send the token in $LATZERO_TOKEN (or a JWT in $LATZERO_JWT), which is not set"
        )
    } else if e.code() == Some(ErrorCode::PermissionDenied) && e.to_string().contains("is an encrypted pool") {
        anyhow::anyhow!(
            "{e}; the command-line tools join an encrypted pool with --keys FILE, a file of the keys `latzero keys generate` printed"
        )
    } else if let ClientError::AnswerTooLarge { .. } = e {
        anyhow::anyhow!(
            "{e}; the command-line tools read up to the server's max_frame_len when they find the server through \
             its data dir (-d, whose server.json gives it), and 16 MiB when it is named by --host/--port: \
             --max-frame-len (or LATZERO_MAX_FRAME_LEN) sets it"
        )
    } else {
        e.into()
    }
}

/// Parses a JSON argument; a refusal quotes at most the argument's first 60 characters.
pub fn json_arg(s: Option<&str>, what: &str) -> Result<serde_json::Value> {
    match s {
        None => Ok(serde_json::Value::Null),
        Some(s) => serde_json::from_str(s).with_context(|| not_json(s, what)),
    }
}

fn not_json(s: &str, what: &str) -> String {
    let shown: String = s.chars().take(60).collect();
    let more = if shown.len() < s.len() { "..." } else { "" };
    // `-` is stdin for many tools; here it is --file's (where DATA has one beside it).
    let hint = if s == "-" && what == "DATA" {
        "; to read standard input, give --file -"
    } else {
        ""
    };
    format!("{what} is not valid JSON: {shown}{more}{hint}")
}

/// A file's bytes, `-` meaning stdin.
pub fn read_file_arg(path: &std::path::Path) -> Result<Vec<u8>> {
    if path == std::path::Path::new("-") {
        let mut b = vec![];
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut b).context("cannot read stdin")?;
        Ok(b)
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

/// A JSON argument kept as the text given (checked to be one value), to be sent as written.
pub fn json_text_arg(s: &str, what: &str) -> Result<Payload> {
    Payload::from_text(s.to_owned()).with_context(|| not_json(s, what))
}

/// A command's JSON payload: DATA, or the file `--file` names (`-`: stdin); `null` if neither.
/// Kept as the JSON text given (checked to be one value), so it is sent as written: read into a
/// value, an integer past 64 bits or a decimal past a double's precision came out changed.
pub fn payload_arg(data: Option<&str>, file: Option<&std::path::Path>) -> Result<Payload> {
    match file {
        None => match data {
            None => Ok(Payload::null()),
            Some(s) => json_text_arg(s, "DATA"),
        },
        Some(f) => {
            let bytes = read_file_arg(f)?;
            Payload::from_text(bytes).with_context(|| format!("{} does not hold valid JSON", f.display()))
        }
    }
}
