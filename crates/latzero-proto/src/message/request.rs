//! Client → server requests: the typed [`Request`] and [`parse_request`], which turns a frame
//! into one or into an error frame's code and message (with the request's id when it can be read).

use serde::Deserialize;

use super::block::{BLOCK_ACTIONS, BlockRequest, parse_block};
use super::pool::{POOL_ACTIONS, PoolRequest, parse_pool};
use super::{Envelope, MAX_ID_LEN, RawValue, Status, Str};
use crate::error::ErrorCode;
use crate::name::{AppId, NameError, PoolName, TriggerName};
use crate::{PROTOCOL_MAJOR, PROTOCOL_VERSION};

/// A request a client sends, validated.
#[derive(Debug)]
pub enum Request<'a> {
    /// Identify the connection as an app and join pools.
    Handshake(Handshake),
    /// Register triggers for this app.
    Register(Vec<TriggerName>),
    /// Unregister triggers.
    Unregister(Vec<TriggerName>),
    /// Join pools (created on first join).
    Join(Vec<PoolName>),
    /// Leave pools.
    Leave(Vec<PoolName>),
    /// Call a trigger (RPC).
    Trigger(Trigger<'a>),
    /// A handler's answer to a delivered trigger.
    Response(Response<'a>),
    /// Fire-and-forget to every handler of a trigger in a pool.
    Emit(Emit<'a>),
    /// Ask for presence events of a pool.
    PresenceSubscribe(PoolName),
    /// Stop presence events of a pool.
    PresenceUnsubscribe(PoolName),
    /// Server introspection; with `limit`, at most that many pools and apps listed (the first by
    /// name), their totals always given.
    Status {
        /// At most this many pools and this many apps (at least 1); `None`: all.
        limit: Option<usize>,
    },
    /// Liveness check.
    Ping,
    /// Health check (admin): the store, the data directory and the memory blocks' files.
    Health,
    /// Ask the server to shut down gracefully.
    Shutdown,
    /// A memory-block action (docs/PROTOCOL.md §7).
    Block(BlockRequest<'a>),
    /// A pool management action or listing (docs/PROTOCOL.md §4.4).
    Pool(PoolRequest),
    /// The stored app registrations, by app id — a page of them with `limit` (admin).
    AppList(super::pool::Page),
    /// Forget an app's stored registration (admin; the app must not be connected).
    AppRemove(AppId),
    /// Back the database up now, with progress (admin).
    Backup,
}

/// The handshake.
#[derive(Debug)]
pub struct Handshake {
    /// Who the connection is.
    pub app_id: AppId,
    /// Pools to join.
    pub pools: Vec<PoolName>,
    /// Triggers to register.
    pub triggers: Vec<TriggerName>,
    /// Opaque application metadata, stored as sent.
    pub meta: Option<Box<RawValue>>,
    /// Whether to take over a live connection with the same app id.
    pub takeover: bool,
    /// Restore the stored pools, triggers and meta even though some were given (they are
    /// restored anyway when none are).
    pub rehydrate: bool,
    /// Do not store this app's registration (command-line tools, throwaway clients).
    pub ephemeral: bool,
    /// The client's protocol version, if it said.
    pub protocol_version: Option<String>,
    /// Admit the app with the pools and triggers that can be had: one the server would refuse
    /// (its credential, a pool's policy, an encrypted pool, a limit) is left out and named in
    /// the ack's `refused`, rather than the whole handshake refused. SDKs reconnect this way.
    pub partial: bool,
}

/// A call.
#[derive(Debug)]
pub struct Trigger<'a> {
    /// The caller's id for the call, echoed verbatim in the terminal frame.
    pub id: &'a RawValue,
    /// The trigger to run.
    pub process: Str<'a>,
    /// The pool it runs in.
    pub pool: Str<'a>,
    /// Its argument (absent means `null`).
    pub data: Option<&'a RawValue>,
    /// A specific app to run it.
    pub destination: Option<Str<'a>>,
    /// Deadline in milliseconds.
    pub ttl_ms: Option<u64>,
    /// A third app that receives the response.
    pub reply_to: Option<Str<'a>>,
    /// Fan out to every handler in the pool.
    pub broadcast: bool,
}

/// A handler's response.
#[derive(Debug)]
pub struct Response<'a> {
    /// The delivered trigger's id.
    pub in_reply_to: &'a RawValue,
    /// Ok or error.
    pub status: Status,
    /// `response` for ok, `error` for error; absent means `null`.
    pub body: Option<&'a RawValue>,
}

/// A fire-and-forget event.
#[derive(Debug)]
pub struct Emit<'a> {
    /// Its trigger.
    pub process: Str<'a>,
    /// Its pool.
    pub pool: Str<'a>,
    /// Its payload.
    pub data: Option<&'a RawValue>,
}

/// A request that could not be parsed: the error frame to send, with the id when one was read.
#[derive(Debug)]
pub struct ParseError<'a> {
    /// The request's id, if it could be read, so the error is correlated.
    pub id: Option<&'a RawValue>,
    /// The code.
    pub code: ErrorCode,
    /// What is wrong, for a human.
    pub message: String,
}

/// A parsed request and its optional id.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// The request's id (any JSON string or integer), echoed in replies.
    pub id: Option<&'a RawValue>,
    /// The request.
    pub request: Request<'a>,
    /// The credential it carried (`auth`), if any.
    pub auth: Option<super::Credential>,
}

pub(crate) fn invalid<'a>(id: Option<&'a RawValue>, message: impl Into<String>) -> ParseError<'a> {
    ParseError {
        id,
        code: ErrorCode::InvalidMessage,
        message: message.into(),
    }
}

pub(crate) fn bad_name<'a>(id: Option<&'a RawValue>, field: &str, e: NameError) -> ParseError<'a> {
    ParseError {
        id,
        code: ErrorCode::InvalidName,
        message: format!("{field}: {e}"),
    }
}

/// Parses one request. Errors carry the request's id whenever it could be read.
///
/// It is [`parse_sdk_call`], and the general parse when that says `None`. A caller that reads
/// the frames of the call path where they lie can call `parse_sdk_call` first, and this only
/// for the rest: the conversion of its `Option` into this `Result` moves the request (a copy
/// of its ~300 bytes).
pub fn parse_request(json: &[u8]) -> Result<Parsed<'_>, ParseError<'_>> {
    match parse_sdk_call(json) {
        Some(p) => Ok(p),
        None => parse_general(json),
    }
}

/// [`parse_request`] for any frame, without trying [`parse_sdk_call`] first.
fn parse_general(json: &[u8]) -> Result<Parsed<'_>, ParseError<'_>> {
    let mut env = match Envelope::parse(json) {
        Ok(env) => env,
        Err(e) => return Err(explain_bad_json(json, e)),
    };
    let auth = env.auth.take();
    let id = env.id;
    if let Some(raw) = id {
        check_id(raw).map_err(|m| invalid(None, m))?;
    }
    // The fast paths refuse a payload nested too deep (it comes here); serde's raw values and
    // ignored fields take any depth, so the whole frame is measured: its payloads sit one level
    // inside it.
    if !super::scan::nests_within(json, super::MAX_NESTING + 1) {
        return Err(invalid(
            id,
            format!(
                "a field of the message nests arrays and objects more than {} levels deep; a payload may nest at most {} (PROTOCOL.md §3)",
                super::MAX_NESTING,
                super::MAX_NESTING
            ),
        ));
    }
    let Some(action) = env.action() else {
        return Err(invalid(id, "missing field `action` (or its alias `type`)"));
    };
    let request = match action {
        "handshake" => Request::Handshake(handshake(&env, id)?),
        "register" => Request::Register(names(env.triggers.as_deref(), "triggers", id)?),
        "unregister" => Request::Unregister(names(env.triggers.as_deref(), "triggers", id)?),
        "join" => Request::Join(pool_list(&env, id)?),
        "leave" => Request::Leave(pool_list(&env, id)?),
        "trigger" => Request::Trigger(trigger(env, id)?),
        "response" => Request::Response(response(&env, id)?),
        "emit" => Request::Emit(Emit {
            process: required_name(env.process, "process", id, TriggerName::check)?,
            pool: required_name(env.pool, "pool", id, PoolName::check)?,
            data: env.data,
        }),
        "presence_subscribe" => Request::PresenceSubscribe(one_pool(&env, id)?),
        "presence_unsubscribe" => Request::PresenceUnsubscribe(one_pool(&env, id)?),
        "status" => Request::Status {
            limit: super::pool::Page::new(None, env.limit, id)?.limit,
        },
        "ping" => Request::Ping,
        "health" => Request::Health,
        "shutdown" => Request::Shutdown,
        "app_list" => Request::AppList(super::pool::Page::new(
            env.after.as_deref().map(str::to_owned),
            env.limit,
            id,
        )?),
        "app_remove" => {
            let app = env
                .app_id
                .as_ref()
                .ok_or_else(|| invalid(id, "missing field `app_id`"))?;
            Request::AppRemove(AppId::try_from(&**app).map_err(|e| bad_name(id, "app_id", e))?)
        }
        "backup" => Request::Backup,
        other if POOL_ACTIONS.contains(&other) => Request::Pool(parse_pool(other, json, id)?),
        other => match BLOCK_ACTIONS.iter().find(|a| **a == other) {
            Some(a) => Request::Block(parse_block(a, json, id)?),
            None => {
                return Err(ParseError {
                    id,
                    code: ErrorCode::UnknownAction,
                    message: format!("unknown action '{}'; see docs/PROTOCOL.md", truncate(other)),
                });
            }
        },
    };
    Ok(Parsed { id, request, auth })
}

/// The two frames of every call, and an emit, in exactly the layout the Rust SDK writes them — a
/// `trigger` with an integer id and a ttl and nothing optional, a `response` to a hop id, an
/// `emit` without an id — read by
/// matching that layout instead of walking the object (the server's counterpart of the SDK's
/// `ForwardResponse::read`). `None` for anything else, or anything the general parse would
/// refuse or read differently (a name that fails its check, a zero ttl, a payload that is not
/// exactly one value, a leading zero): that then reads it, with the same result for every
/// frame this accepts (a test compares the two).
pub fn parse_sdk_call(json: &[u8]) -> Option<Parsed<'_>> {
    use super::reply::{plain, take};
    use super::scan::{Kind, one_value};
    /// The JSON text of an integer without a leading zero, taken from the front of `s`.
    fn integer<'a>(s: &mut &'a str) -> Option<&'a str> {
        let n = s.bytes().take_while(u8::is_ascii_digit).count();
        let (d, rest) = s.split_at(n);
        (n > 0 && (n == 1 || !d.starts_with('0'))).then(|| {
            *s = rest;
            d
        })
    }
    /// A name up to its closing quote, plain (no escape, no control character).
    fn name<'a>(s: &mut &'a str) -> Option<Str<'a>> {
        plain(s).map(|v| Str(std::borrow::Cow::Borrowed(v)))
    }
    // A payload of `null` reads as absent, as the general path's `Option` does.
    let payload = |text| one_value(text).map(|(raw, kind)| (kind != Kind::Null).then_some(raw));
    // Checked for UTF-8 only once a layout's prefix matched (with simdutf8, as in
    // `scan::object`).
    let after = |prefix: &str| simdutf8::basic::from_utf8(json.strip_prefix(prefix.as_bytes())?).ok();
    if let Some(mut s) = after(r#"{"action":"trigger","id":"#) {
        let id_text = integer(&mut s)?;
        if id_text.len() > MAX_ID_LEN {
            return None;
        }
        take(&mut s, r#","process":""#)?;
        let process = name(&mut s)?;
        take(&mut s, r#","pool":""#)?;
        let pool = name(&mut s)?;
        take(&mut s, r#","data":"#)?;
        // The ttl closes the frame: read it from the end, and the payload is what lies between.
        let rest = s.strip_suffix('}')?;
        let digits = rest.len() - rest.bytes().rev().take_while(u8::is_ascii_digit).count();
        let mut ttl_text = &rest[digits..];
        let ttl = super::parse_u64(integer(&mut ttl_text)?).filter(|&t| t > 0)?;
        let data = payload(rest[..digits].strip_suffix(r#","ttl":"#)?)?;
        TriggerName::check(&process).ok()?;
        PoolName::check(&pool).ok()?;
        // Digits without a leading zero: a JSON number, already checked.
        let id = super::checked_raw_value(id_text)?;
        return Some(Parsed {
            id: Some(id),
            request: Request::Trigger(Trigger {
                id,
                process,
                pool,
                data,
                destination: None,
                ttl_ms: Some(ttl),
                reply_to: None,
                broadcast: false,
            }),
            auth: None,
        });
    }
    if let Some(mut s) = after(r#"{"action":"emit","process":""#) {
        let process = name(&mut s)?;
        take(&mut s, r#","pool":""#)?;
        let pool = name(&mut s)?;
        let data = payload(s.strip_prefix(r#","data":"#)?.strip_suffix('}')?)?;
        TriggerName::check(&process).ok()?;
        PoolName::check(&pool).ok()?;
        return Some(Parsed {
            id: None,
            request: Request::Emit(Emit { process, pool, data }),
            auth: None,
        });
    }
    let mut s = after(r#"{"action":"response","in_reply_to":"#)?;
    let quoted = s;
    take(&mut s, "\"")?;
    let hop = integer(&mut s)?;
    take(&mut s, "\"")?;
    // Digits between quotes: a JSON string, already checked.
    let in_reply_to = super::checked_raw_value(&quoted[..hop.len() + 2])?;
    let (status, body) = if let Some(rest) = s.strip_prefix(r#","status":"ok","response":"#) {
        (Status::Ok, rest)
    } else {
        (Status::Error, s.strip_prefix(r#","status":"error","error":"#)?)
    };
    Some(Parsed {
        id: None,
        request: Request::Response(Response {
            in_reply_to,
            status,
            body: payload(body.strip_suffix('}')?)?,
        }),
        auth: None,
    })
}

/// A clear message for JSON that did not fit the envelope, with the id if it can be salvaged.
fn explain_bad_json(json: &[u8], e: serde_json::Error) -> ParseError<'_> {
    #[derive(Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
    }
    let id = serde_json::from_slice::<IdOnly<'_>>(json)
        .ok()
        .and_then(|x| x.id)
        .filter(|raw| check_id(raw).is_ok());
    if id.is_none() && serde_json::from_slice::<serde::de::IgnoredAny>(json).is_err() {
        return invalid(id_before_damage(json), format!("frame is not valid JSON: {e}"));
    }
    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return invalid(
            None,
            "a message must be a JSON object with an `action`; see docs/PROTOCOL.md",
        );
    }
    // Valid JSON with an ill-typed field: find the field's name for the message.
    let mut de = serde_json::Deserializer::from_slice(json);
    let message = match serde_path_to_error::deserialize::<_, Envelope<'_>>(&mut de) {
        Err(pe) if !pe.path().to_string().is_empty() && pe.path().to_string() != "." => {
            format!("field `{}`: {}", pe.path(), pe.inner())
        }
        _ => format!("message is not a valid LatZero message: {e}"),
    };
    invalid(id, message)
}

/// The `id` of a frame that is not valid JSON, when its top object's outline holds up to it:
/// the members are walked from the start, each value only measured (a string to its closing
/// quote past escapes, an object or array to its balancing bracket, a scalar such as `NaN` to the
/// next delimiter), and the walk stops where the outline breaks (a missing colon or comma, a
/// string or bracket left open). A member `id` found on the way lies at the object's top level,
/// not inside a payload: it is the request's own, so the sender's call can fail at once with the
/// error rather than wait out its deadline. An id given twice, or not plainly (§3: a string or an
/// integer, its key written without escapes), is `None`.
fn id_before_damage(json: &[u8]) -> Option<&RawValue> {
    /// Past the string that starts at `at` (its opening quote).
    fn string_end(b: &[u8], mut at: usize) -> Option<usize> {
        at += 1;
        loop {
            match *b.get(at)? {
                b'"' => return Some(at + 1),
                b'\\' => at += 2,
                _ => at += 1,
            }
        }
    }
    /// Past the value that starts at `at`: a string, an object or array (brackets balanced
    /// outside strings), or a scalar up to the next delimiter.
    fn value_end(b: &[u8], at: usize) -> Option<usize> {
        match *b.get(at)? {
            b'"' => string_end(b, at),
            b'{' | b'[' => {
                let (mut depth, mut i) = (0usize, at);
                loop {
                    match *b.get(i)? {
                        b'"' => {
                            i = string_end(b, i)?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return Some(i + 1);
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
            _ => {
                let n = b[at..]
                    .iter()
                    .take_while(|c| !matches!(c, b',' | b'}' | b']') && !c.is_ascii_whitespace())
                    .count();
                (n > 0).then_some(at + n)
            }
        }
    }
    let space = |at: usize| {
        at + json[at.min(json.len())..]
            .iter()
            .take_while(|c| c.is_ascii_whitespace())
            .count()
    };
    let mut at = space(0);
    if json.get(at) != Some(&b'{') {
        return None;
    }
    let mut found: Option<&RawValue> = None;
    loop {
        at = space(at + 1);
        if json.get(at) != Some(&b'"') {
            return found;
        }
        let key_end = string_end(json, at)?;
        let key = &json[at..key_end];
        at = space(key_end);
        if json.get(at) != Some(&b':') {
            return found;
        }
        let start = space(at + 1);
        let Some(end) = value_end(json, start) else {
            return found;
        };
        if key == b"\"id\"" {
            // Read as a value too: a raw value takes an escape such as a lone `\ud800`, which
            // a client's typed read of the error would not.
            let raw = std::str::from_utf8(&json[start..end])
                .ok()
                .filter(|t| serde_json::from_str::<serde_json::Value>(t).is_ok())
                .and_then(|t| serde_json::from_str::<&RawValue>(t).ok())
                .filter(|raw| check_id(raw).is_ok());
            match (found, raw) {
                // Given twice, or not plainly: no guess.
                (Some(_), _) | (None, None) => return None,
                (None, Some(raw)) => found = Some(raw),
            }
        }
        at = space(end);
        if json.get(at) != Some(&b',') {
            return found;
        }
    }
}

/// The hop id a `response` the server refuses still names, when it names one plainly: a frame
/// that is not valid JSON, or holds an ill-typed field, can still say which call it answers, and
/// that call can then fail at once rather than at its deadline. The frame must say
/// `"action":"response"` and hold `"in_reply_to"` once, followed by a hop id as the server writes
/// it (a string of 1 to 19 digits) or as a number; anything less plain is `None`, since a guess
/// in a broken frame could name another call.
pub fn refused_response_hop(json: &[u8]) -> Option<&RawValue> {
    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }
    fn skip_space(b: &[u8]) -> &[u8] {
        let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
        &b[n..]
    }
    /// `"key"`, optional spaces and a colon, then optional spaces: what follows.
    fn value_of<'j>(json: &'j [u8], key: &[u8]) -> Option<&'j [u8]> {
        let at = find(json, key)?;
        let after = skip_space(&json[at + key.len()..]);
        Some(skip_space(after.strip_prefix(b":")?))
    }
    if !value_of(json, b"\"action\"")?.starts_with(b"\"response\"") {
        return None;
    }
    const KEY: &[u8] = b"\"in_reply_to\"";
    let at = find(json, KEY)?;
    if find(&json[at + KEY.len()..], KEY).is_some() {
        return None;
    }
    let v = value_of(&json[at..], KEY)?;
    let quoted = v.first() == Some(&b'"');
    let digits = v[usize::from(quoted)..]
        .iter()
        .take_while(|c| c.is_ascii_digit())
        .count();
    let end = usize::from(quoted) + digits;
    if !(1..=19).contains(&digits) || (quoted && v.get(end) != Some(&b'"')) {
        return None;
    }
    let token = std::str::from_utf8(&v[..end + usize::from(quoted)]).ok()?;
    serde_json::from_str::<&RawValue>(token).ok()
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Ids are JSON strings or integers of at most [`MAX_ID_LEN`] bytes.
fn check_id(raw: &RawValue) -> Result<(), String> {
    let s = raw.get();
    if s.len() > MAX_ID_LEN {
        return Err(format!("field `id` is {} bytes; the limit is {MAX_ID_LEN}", s.len()));
    }
    let first = s.as_bytes()[0];
    let integer = (first == b'-' || first.is_ascii_digit()) && s[1..].bytes().all(|b| b.is_ascii_digit());
    if first == b'"' || integer {
        Ok(())
    } else {
        Err(format!(
            "field `id` must be a string or an integer, got {}",
            truncate(s)
        ))
    }
}

fn required_name<'a>(
    value: Option<Str<'a>>,
    field: &str,
    id: Option<&'a RawValue>,
    check: fn(&str) -> Result<(), NameError>,
) -> Result<Str<'a>, ParseError<'a>> {
    let v = value.ok_or_else(|| invalid(id, format!("missing field `{field}`")))?;
    check(&v).map_err(|e| bad_name(id, field, e))?;
    Ok(v)
}

fn optional_name<'a>(
    value: Option<Str<'a>>,
    field: &str,
    id: Option<&'a RawValue>,
    check: fn(&str) -> Result<(), NameError>,
) -> Result<Option<Str<'a>>, ParseError<'a>> {
    value.map(|v| required_name(Some(v), field, id, check)).transpose()
}

fn names<'a, T: for<'s> TryFrom<&'s str, Error = NameError>>(
    list: Option<&[Str<'_>]>,
    field: &str,
    id: Option<&'a RawValue>,
) -> Result<Vec<T>, ParseError<'a>> {
    let Some(list) = list else {
        return Err(invalid(id, format!("missing field `{field}` (a list of names)")));
    };
    list.iter()
        .map(|s| T::try_from(&**s).map_err(|e| bad_name(id, field, e)))
        .collect()
}

fn pool_list<'a>(env: &Envelope<'_>, id: Option<&'a RawValue>) -> Result<Vec<PoolName>, ParseError<'a>> {
    match (&env.pools, &env.pool) {
        (Some(list), _) => names(Some(list), "pools", id),
        (None, Some(p)) => Ok(vec![PoolName::try_from(&**p).map_err(|e| bad_name(id, "pool", e))?]),
        (None, None) => Err(invalid(id, "missing field `pools` (or `pool`)")),
    }
}

fn one_pool<'a>(env: &Envelope<'_>, id: Option<&'a RawValue>) -> Result<PoolName, ParseError<'a>> {
    let p = env.pool.as_ref().ok_or_else(|| invalid(id, "missing field `pool`"))?;
    PoolName::try_from(&**p).map_err(|e| bad_name(id, "pool", e))
}

fn handshake<'a>(env: &Envelope<'_>, id: Option<&'a RawValue>) -> Result<Handshake, ParseError<'a>> {
    if let Some(v) = &env.protocol_version {
        check_version(v).map_err(|(code, message)| ParseError { id, code, message })?;
    }
    let app_id = env
        .app_id
        .as_ref()
        .ok_or_else(|| invalid(id, "missing field `app_id`"))?;
    let app_id = AppId::try_from(&**app_id).map_err(|e| bad_name(id, "app_id", e))?;
    let pools = names(Some(env.pools.as_deref().unwrap_or_default()), "pools", id)?;
    let triggers = names(Some(env.triggers.as_deref().unwrap_or_default()), "triggers", id)?;
    Ok(Handshake {
        app_id,
        pools,
        triggers,
        meta: env.meta.map(|m| m.to_owned()),
        takeover: env.takeover.unwrap_or(false),
        rehydrate: env.rehydrate.unwrap_or(false),
        ephemeral: env.ephemeral.unwrap_or(false),
        protocol_version: env.protocol_version.as_deref().map(str::to_owned),
        partial: env.partial.unwrap_or(false),
    })
}

/// Checks a peer's `MAJOR[.MINOR[.PATCH]]` against ours.
pub fn check_version(v: &str) -> Result<(), (ErrorCode, String)> {
    let major = v.split('.').next().and_then(|m| m.parse::<u32>().ok());
    match major {
        Some(PROTOCOL_MAJOR) => Ok(()),
        Some(m) => Err((
            ErrorCode::UnsupportedVersion,
            format!("protocol version {v} (major {m}) is not supported; this server speaks {PROTOCOL_VERSION}"),
        )),
        None => Err((
            ErrorCode::InvalidMessage,
            format!(
                "field `protocol_version` must look like \"MAJOR.MINOR\", got \"{}\"",
                truncate(v)
            ),
        )),
    }
}

fn trigger<'a>(env: Envelope<'a>, id: Option<&'a RawValue>) -> Result<Trigger<'a>, ParseError<'a>> {
    let call_id = id.ok_or_else(|| {
        invalid(
            None,
            "a trigger needs an `id` (string or integer); use `emit` for fire-and-forget",
        )
    })?;
    if env.ttl == Some(0) {
        return Err(invalid(id, "field `ttl` must be at least 1 (milliseconds)"));
    }
    let broadcast = env.broadcast.unwrap_or(false);
    if broadcast && (env.destination.is_some() || env.reply_to.is_some()) {
        return Err(invalid(
            id,
            "a broadcast call cannot have a `destination` or a `reply_to`",
        ));
    }
    Ok(Trigger {
        id: call_id,
        process: required_name(env.process, "process", id, TriggerName::check)?,
        pool: required_name(env.pool, "pool", id, PoolName::check)?,
        data: env.data,
        destination: optional_name(env.destination, "destination", id, AppId::check)?,
        ttl_ms: env.ttl,
        reply_to: optional_name(env.reply_to, "reply_to", id, AppId::check)?,
        broadcast,
    })
}

fn response<'a>(env: &Envelope<'a>, id: Option<&'a RawValue>) -> Result<Response<'a>, ParseError<'a>> {
    let in_reply_to = env
        .in_reply_to
        .ok_or_else(|| invalid(id, "missing field `in_reply_to`"))?;
    let status = match env.status.as_deref() {
        Some("ok") => Status::Ok,
        Some("error") => Status::Error,
        Some(other) => {
            return Err(invalid(
                id,
                format!(
                    "field `status` must be \"ok\" or \"error\", got \"{}\"",
                    truncate(other)
                ),
            ));
        }
        None => return Err(invalid(id, "missing field `status` (\"ok\" or \"error\")")),
    };
    let body = match status {
        Status::Ok => env.response,
        Status::Error => env.error,
    };
    Ok(Response {
        in_reply_to,
        status,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Status;
    use crate::seed::{HANDSHAKE as SEED_HANDSHAKE, RESPONSE as SEED_RESPONSE, TRIGGER as SEED_TRIGGER};

    #[test]
    fn a_refused_response_still_names_its_call_when_it_names_it_plainly() {
        let hop = |t: &str| refused_response_hop(t.as_bytes()).map(|r| r.get().to_owned());
        // Broken JSON in the body, an ill-typed field, another key order, spaces, a number.
        assert_eq!(
            hop(r#"{"action":"response","in_reply_to":"17","status":"ok","response":"\q"}"#).as_deref(),
            Some(r#""17""#)
        );
        assert_eq!(
            hop(r#"{"status":"okay","in_reply_to" : 17 ,"action": "response"}"#).as_deref(),
            Some("17")
        );
        // Not a response, no id, an id that is not a hop id, two ids, a cut-off id.
        for t in [
            r#"{"action":"trigger","in_reply_to":"17"}"#,
            r#"{"action":"response","status":"ok"}"#,
            r#"{"action":"response","in_reply_to":"x17"}"#,
            r#"{"action":"response","in_reply_to":"17","in_reply_to":"18"}"#,
            r#"{"action":"response","in_reply_to":"17"#,
            r#"{"action":"response","in_reply_to":"12345678901234567890"}"#,
            r#"{"action":"response","in_reply_to":}"#,
        ] {
            assert_eq!(hop(t), None, "{t}");
        }
    }

    /// A frame that is not valid JSON keeps its id when its top object's outline holds up to the
    /// `id` member: the sender's call fails at once, not at its deadline.
    #[test]
    fn a_frame_that_is_not_json_keeps_a_plain_top_level_id() {
        let id = |t: &str| match parse_request(t.as_bytes()) {
            Err(e) => {
                assert!(e.message.contains("not valid JSON"), "{t}: {}", e.message);
                e.id.map(|r| r.get().to_owned())
            }
            Ok(_) => panic!("{t} parsed"),
        };
        for (t, want) in [
            // Python's NaN; damage after the id; damage in a string; nested ids and brackets
            // inside strings before it; spaces; a string id; a negative one.
            (
                r#"{"action":"trigger","id":5,"process":"f","pool":"p","data":NaN}"#,
                "5",
            ),
            (r#"{"action":"trigger","data":NaN,"id":5}"#, "5"),
            (r#"{"action":"trigger","id":"a-1","data":{"x":}}"#, r#""a-1""#),
            (r#"{"action":"trigger","pool":"p\q","id":6,"data":1}"#, "6"),
            (
                r#"{"data":{"id":1,"s":"}]\"{"},"tags":[{"id":2}],"id":7,"action":"trigger","x":tru}"#,
                "7",
            ),
            (r#" { "action" : "emit" , "id" : -8 , "data" : Infinity } "#, "-8"),
            (r#"{"action":"trigger","id":9,"data":"x"#, "9"),
        ] {
            assert_eq!(id(t).as_deref(), Some(want), "{t}");
        }
        // No id; only nested ones; after the outline breaks; twice; not plain (an object, a
        // float, too long, an escaped key); not an object.
        let long = format!(r#"{{"id":"{}","data":NaN}}"#, "x".repeat(MAX_ID_LEN));
        for t in [
            r#"{"action":"trigger","data":NaN}"#,
            r#"{"action":"trigger","data":{"id":5,"x":NaN}}"#,
            r#"{"action":"trigger","data":{"x":1]"id":5}"#,
            r#"{"action":"trigger" "id":5,"data":NaN}"#,
            r#"{"action":"trigger","data":"open,"id":5}"#,
            r#"{"id":5,"action":"trigger","id":6,"data":NaN}"#,
            r#"{"id":{"n":5},"data":NaN}"#,
            r#"{"id":5.5,"data":NaN}"#,
            long.as_str(),
            r#"{"i\u0064":5,"data":NaN}"#,
            r#"{"id":"\ud800","data":NaN}"#,
            r#"[{"id":5},NaN]"#,
            "NaN",
        ] {
            assert_eq!(id(t), None, "{t}");
        }
    }

    /// A payload nested past MAX_NESTING is refused in every message that carries one, in the
    /// SDK's layout or any other, with the request's id; one at the limit is taken.
    #[test]
    fn a_payload_nested_too_deep_is_refused_with_its_id() {
        use crate::message::MAX_NESTING;
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        for n in [MAX_NESTING, MAX_NESTING + 1, 100_000] {
            let p = deep(n);
            for frame in [
                format!(r#"{{"action":"trigger","id":7,"process":"f","pool":"p","data":{p}}}"#),
                format!(r#"{{"id":7,"action":"trigger","process":"f","pool":"p","data":{p}}}"#),
                format!(r#"{{"action":"emit","id":7,"process":"f","pool":"p","data":{p}}}"#),
                format!(r#"{{"action":"response","id":7,"in_reply_to":"3","status":"ok","response":{p}}}"#),
                format!(r#"{{"action":"response","id":7,"in_reply_to":"3","status":"error","error":{p}}}"#),
                format!(r#"{{"action":"handshake","id":7,"app_id":"a","meta":{p}}}"#),
            ] {
                match parse_request(frame.as_bytes()) {
                    Ok(_) => assert!(n <= MAX_NESTING, "{n}: {}", &frame[..60]),
                    Err(e) => {
                        assert!(n > MAX_NESTING, "{n}: {}", e.message);
                        assert_eq!(e.id.map(RawValue::get), Some("7"));
                        assert!(e.message.contains("levels deep"), "{}", e.message);
                    }
                }
            }
        }
    }

    /// Edited copies of the call path's frames: whatever the SDK's layout reads, the general
    /// parse reads the same.
    #[test]
    fn edited_frames_in_the_sdk_layout_read_as_the_general_parse_does() {
        let mut fast = 0;
        for json in crate::message::edited(crate::message::CALL_PATH, 10000) {
            if let Some(p) = parse_sdk_call(&json) {
                fast += 1;
                let general = format!("{:?}", parse_general(&json));
                let text = String::from_utf8_lossy(&json);
                assert_eq!(format!("{:?}", Ok::<_, ParseError<'_>>(p)), general, "{text}");
            }
        }
        assert!(fast > 100, "{fast} edited frames read in the SDK's layout");
    }

    #[test]
    fn the_sdk_layout_reads_as_the_general_parse_does() {
        let payloads = [
            r#""x""#,
            "null",
            "0",
            "-1.5e3",
            "true",
            r#"{"a":[1,"}"]}"#,
            r#"[]"#,
            r#""a\"b""#,
            r#""\u00e9""#,
            // Not exactly one value, or not JSON.
            "",
            "1 ",
            "01",
            r#"{"a":1"#,
            r#""x","ttl":5"#,
            "nul",
            "\"\u{1}\"",
            r#""\q""#,
        ];
        let mut frames = vec![];
        for d in payloads {
            for (id, name, ttl) in [
                ("7", "echo", "30000"),
                ("0", "a.b", "1"),
                ("07", "echo", "5"),
                ("7", "a b", "5"),
                ("7", "echo", "0"),
                ("7", "echo", "05"),
                ("-1", "echo", "5"),
                ("7", "e\\u0063ho", "5"),
                ("99999999999999999999999", "echo", "99999999999999999999999"),
            ] {
                frames.push(format!(
                    r#"{{"action":"trigger","id":{id},"process":"{name}","pool":"p","data":{d},"ttl":{ttl}}}"#
                ));
            }
            frames.push(format!(
                r#"{{"action":"trigger","id":7,"process":"e","pool":"p","data":{d},"ttl":5,"x":1}}"#
            ));
            frames.push(format!(
                r#"{{"action":"trigger","id":7,"process":"e","pool":"p","data":{d},"ttl":5}} "#
            ));
            for (hop, status, key) in [
                (r#""17""#, "ok", "response"),
                (r#""17""#, "error", "error"),
                (r#""017""#, "ok", "response"),
                ("17", "ok", "response"),
                (r#""17""#, "ok", "error"),
                (r#""""#, "ok", "response"),
            ] {
                frames.push(format!(
                    r#"{{"action":"response","in_reply_to":{hop},"status":"{status}","{key}":{d}}}"#
                ));
            }
            frames.push(format!(
                r#"{{"action":"response","in_reply_to":"1","status":"ok","response":{d},"response":1}}"#
            ));
            for (name, pool) in [("ev", "p"), ("e v", "p"), ("ev", ""), ("e\\u0076", "p")] {
                frames.push(format!(
                    r#"{{"action":"emit","process":"{name}","pool":"{pool}","data":{d}}}"#
                ));
            }
            frames.push(format!(
                r#"{{"action":"emit","process":"ev","pool":"p","data":{d},"id":1}}"#
            ));
        }
        let mut fast = 0;
        for f in &frames {
            let general = format!("{:?}", parse_general(f.as_bytes()));
            assert_eq!(format!("{:?}", parse_request(f.as_bytes())), general, "{f}");
            if let Some(p) = parse_sdk_call(f.as_bytes()) {
                assert_eq!(format!("{:?}", Ok::<_, ParseError<'_>>(p)), general, "{f}");
                fast += 1;
            }
        }
        // The layout the SDK writes does take the fast path.
        assert!(fast >= 30, "{fast} of {} frames read on the fast path", frames.len());
        assert!(
            parse_sdk_call(br#"{"action":"trigger","id":7,"process":"echo","pool":"p","data":"x","ttl":30000}"#)
                .is_some()
        );
        assert!(parse_sdk_call(br#"{"action":"response","in_reply_to":"17","status":"ok","response":"x"}"#).is_some());
        assert!(parse_sdk_call(br#"{"action":"emit","process":"ev","pool":"p","data":"x"}"#).is_some());
        // Not UTF-8, in the payload or in a name, in a short frame and in one long enough for
        // the vectorised check: the layout refuses it, and so does the general path.
        for pad in [0, 200] {
            let x = "x".repeat(pad);
            for (head, bad, tail) in [
                (
                    r#"{"action":"trigger","id":7,"process":"echo","pool":"p","data":""#,
                    &b"\xff"[..],
                    r#"","ttl":30000}"#,
                ),
                (
                    r#"{"action":"response","in_reply_to":"17","status":"ok","response":""#,
                    b"\xc3(",
                    r#""}"#,
                ),
                (
                    r#"{"action":"emit","process":"e"#,
                    b"\xff",
                    r#"v","pool":"p","data":1}"#,
                ),
            ] {
                let frame = [head.as_bytes(), x.as_bytes(), bad, tail.as_bytes()].concat();
                assert!(parse_sdk_call(&frame).is_none(), "{head}");
                let e = parse_request(&frame).unwrap_err();
                assert_eq!(e.code, ErrorCode::InvalidMessage, "{head}");
            }
        }
    }

    #[test]
    fn parses_the_seed_examples() {
        let p = parse_request(SEED_HANDSHAKE.as_bytes()).unwrap();
        let Request::Handshake(h) = p.request else { panic!() };
        assert_eq!(h.app_id.as_str(), "myApp");
        assert_eq!(h.pools.len(), 1);
        assert_eq!(h.triggers.len(), 2);
        assert_eq!(h.meta.unwrap().get(), r#"{ "version": "1.0.0" }"#);

        let p = parse_request(SEED_TRIGGER.as_bytes()).unwrap();
        let Request::Trigger(t) = p.request else { panic!() };
        assert_eq!(t.id.get(), "\"uuid-v4\"");
        assert_eq!(&*t.process, "foo");
        assert_eq!(&*t.pool, "alpha");
        assert_eq!(t.data.unwrap().get(), r#"{ "x": 42 }"#);
        assert_eq!(t.destination.as_deref(), Some("targetApp"));

        let p = parse_request(SEED_RESPONSE.as_bytes()).unwrap();
        let Request::Response(r) = p.request else { panic!() };
        assert_eq!(r.in_reply_to.get(), "\"uuid-v4\"");
        assert_eq!(r.status, Status::Ok);
        assert_eq!(r.body.unwrap().get(), r#"{ "result": 84 }"#);
    }

    #[test]
    fn type_is_an_alias_for_action() {
        let p = parse_request(br#"{"type":"ping","id":1}"#).unwrap();
        assert!(matches!(p.request, Request::Ping));
        assert_eq!(p.id.unwrap().get(), "1");
    }

    #[test]
    fn errors_name_the_problem_and_keep_the_id() {
        let e = parse_request(br#"{"action":"trigger","id":"a","pool":"p"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidMessage);
        assert_eq!(e.id.unwrap().get(), "\"a\"");
        assert!(e.message.contains("`process`"), "{}", e.message);

        let e = parse_request(br#"{"action":"trigger","id":"a","pool":"p","process":"f","ttl":"x"}"#).unwrap_err();
        assert_eq!(e.id.unwrap().get(), "\"a\"");
        assert!(e.message.contains("`ttl`"), "{}", e.message);

        let e = parse_request(br#"{"action":"nope","id":7}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownAction);
        assert!(e.message.contains("nope"));

        let e = parse_request(b"{not json").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidMessage);
        assert!(e.message.contains("not valid JSON"), "{}", e.message);

        let e = parse_request(br#"{"id":3}"#).unwrap_err();
        assert!(e.message.contains("`action`"));

        let e = parse_request(br#"{"action":"join","id":"j","pools":["a b"]}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidName);
        assert_eq!(e.id.unwrap().get(), "\"j\"");

        let e = parse_request(br#"{"action":"ping","id":{"x":1}}"#).unwrap_err();
        assert!(e.message.contains("string or an integer"));

        let e = parse_request(br#"{"action":"trigger","process":"f","pool":"p"}"#).unwrap_err();
        assert!(e.message.contains("needs an `id`"));

        let e = parse_request(br#"[1,2]"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidMessage);
        assert!(e.message.contains("must be a JSON object"), "{}", e.message);

        // A field given twice (the fast scan leaves it to serde, which refuses it).
        let e = parse_request(br#"{"action":"trigger","id":1,"process":"f","pool":"p","pool":"q"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidMessage);
        assert!(e.message.contains("duplicate field `pool`"), "{}", e.message);
    }

    #[test]
    fn version_check() {
        assert!(check_version("1.0").is_ok());
        assert!(check_version("1.7.2").is_ok());
        assert_eq!(check_version("2.0").unwrap_err().0, ErrorCode::UnsupportedVersion);
        assert_eq!(check_version("abc").unwrap_err().0, ErrorCode::InvalidMessage);
        let e = parse_request(br#"{"action":"handshake","app_id":"a","protocol_version":"2.0"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedVersion);
    }

    #[test]
    fn escaped_strings_are_accepted() {
        let p = parse_request(br#"{"action":"emit","process":"f\u006fo","pool":"p"}"#).unwrap();
        let Request::Emit(e) = p.request else { panic!() };
        assert_eq!(&*e.process, "foo");
    }
}

#[cfg(test)]
mod protocol_examples {
    use super::*;

    /// PROTOCOL.md's examples of requests (one-line or spread over lines; see
    /// `latzero_testkit::protocol_doc`) are requests the server reads: each parses. A field
    /// misspelt in an example, or renamed in the code alone, fails here.
    #[test]
    fn every_request_example_of_the_protocol_parses() {
        let examples = latzero_testkit::protocol_doc::examples();
        assert!(examples.len() >= 80, "only {} examples found", examples.len());
        let mut requests = 0;
        for e in examples.iter().filter(|e| e.sent_by_client()) {
            if let Err(err) = parse_request(e.text.as_bytes()) {
                panic!("PROTOCOL.md line {}: {}\n{}", e.line, err.message, e.text);
            }
            requests += 1;
        }
        assert!(requests >= 35, "only {requests} of the examples are requests");
    }

    /// Every action's parse, not only the call path's, meets damaged frames without a panic:
    /// each example edited 3,000 ways.
    #[test]
    fn edits_of_every_example_never_panic() {
        let examples = latzero_testkit::protocol_doc::examples();
        let frames: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
        for json in crate::message::edited(&frames, 3000) {
            let _ = parse_request(&json);
        }
    }
}
