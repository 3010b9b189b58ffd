//! A `GOCACHEPROG` program (Go ≥ 1.24): Go's build cache in a directory, every object's bytes
//! checked against its OutputID.
//!
//! The protocol (`cmd/go/internal/cacheprog`): the program first answers with the commands it
//! knows; then each request is one JSON line (`get`, `put`, `close`, with `ID`, `ActionID`,
//! `OutputID` as base64), a `put` with a body followed by one more line, the body as a JSON
//! base64 string. Answers are JSON lines with the request's `ID`.
//!
//! An OutputID is the SHA-256 of the object's bytes. A `put` whose body does not hash to its
//! OutputID is rejected (an error to Go, which then builds without caching it); the entry keeps
//! the BLAKE3 of the bytes that passed, and a `get` whose stored object no longer hashes to it
//! (truncated, corrupted) is a miss: the object is dropped and Go rebuilds it. Rejections are
//! counted. (A rebuild after a one-line edit gets about 90 MB of objects: BLAKE3 proves them
//! several times faster than SHA-256 would, with the same guarantee, since the BLAKE3 was taken
//! of bytes whose SHA-256 was their OutputID.) This keeps corruption out, not
//! poisoning: whoever may write the directory can store any bytes under a right OutputID (the
//! owner rule of `hook::volume` keeps other users out).
//!
//! The store: `o/<2 hex>/<OutputID hex>` (object bytes) and `a/<2 hex>/<ActionID hex>` (a line
//! `<OutputID hex> <size> <BLAKE3 hex>`), each written to a new file and renamed into place, so concurrent
//! builds sharing the directory see a whole entry or none.

use std::fs;
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The store's directory inside a partition of the volume.
pub const DIR_IN_PARTITION: &str = "go-prog";

/// Where `srcstore gocacheprog` stores by default: in the volume inside a sandbox that has one,
/// else in the cache home.
pub fn default_dir() -> Option<PathBuf> {
    let volume = Path::new(super::STABLE_CACHE);
    match volume.is_dir() {
        true => Some(volume.join(DIR_IN_PARTITION)),
        false => crate::daemon::paths::cache_home().map(|h| h.join("go")),
    }
}

/// The largest body a `put` may carry; Go's objects are compiled packages and test outputs.
pub const MAX_BODY: u64 = 1 << 30;
/// The longest request line (bodies come on their own line).
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Request {
    #[serde(rename = "ID")]
    id: i64,
    command: String,
    #[serde(default, rename = "ActionID", with = "b64")]
    action_id: Vec<u8>,
    #[serde(default, rename = "OutputID", with = "b64")]
    output_id: Vec<u8>,
    #[serde(default)]
    body_size: u64,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Response {
    #[serde(rename = "ID")]
    id: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    err: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    known_commands: Vec<&'static str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    miss: bool,
    #[serde(
        rename = "OutputID",
        skip_serializing_if = "Vec::is_empty",
        with = "b64"
    )]
    output_id: Vec<u8>,
    #[serde(skip_serializing_if = "is_zero")]
    size: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    disk_path: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = Option::<String>::deserialize(d)?.unwrap_or_default();
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

/// What one run did, for `srcstore cache stats`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub hits: u64,
    pub misses: u64,
    pub puts: u64,
    pub rejected: u64,
}

/// A cache directory serving one Go process.
pub struct Store {
    dir: PathBuf,
    counts: Mutex<Counts>,
}

impl Store {
    /// The store in `dir`, made (mode 0700) if missing.
    pub fn open(dir: &Path) -> io::Result<Store> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            counts: Mutex::default(),
        })
    }

    /// What this store has done so far.
    pub fn counts(&self) -> Counts {
        *self.counts.lock().unwrap()
    }

    fn count(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut self.counts.lock().unwrap());
    }

    fn place(&self, kind: &str, id: &[u8]) -> PathBuf {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(kind).join(&hex[..2]).join(hex)
    }

    /// Writes `bytes` to `path` whole or not at all (no fsync: a torn entry fails its proof).
    fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
        fs::create_dir_all(path.parent().expect("a place has a parent"))?;
        crate::atomic::write_whole(path, bytes)
    }

    fn get(&self, action: &[u8]) -> Response {
        let miss = |s: &Store| {
            s.count(|c| c.misses += 1);
            Response {
                miss: true,
                ..Default::default()
            }
        };
        let entry = self.place("a", action);
        let Ok(line) = fs::read_to_string(&entry) else {
            return miss(self);
        };
        let Some((output, size, sum)) = parse_entry(&line) else {
            let _ = fs::remove_file(&entry);
            self.count(|c| c.rejected += 1);
            return miss(self);
        };
        let object = self.place("o", &output);
        // Proven on every get: a truncated or corrupted object is dropped, never handed on.
        match digest_of(&object) {
            Ok((len, digest)) if len == size && digest == sum => {
                self.count(|c| c.hits += 1);
                Response {
                    output_id: output,
                    size,
                    disk_path: object.display().to_string(),
                    ..Default::default()
                }
            }
            Ok(_) => {
                tracing::warn!(
                    "{}: does not hash to its OutputID; dropped",
                    object.display()
                );
                let _ = fs::remove_file(&object);
                let _ = fs::remove_file(&entry);
                self.count(|c| c.rejected += 1);
                miss(self)
            }
            Err(_) => miss(self),
        }
    }

    fn put(&self, action: &[u8], output: &[u8], body: &[u8]) -> Response {
        if Sha256::digest(body)[..] != output[..] {
            self.count(|c| c.rejected += 1);
            return Response {
                err: "the body does not hash to its OutputID; not stored".into(),
                ..Default::default()
            };
        }
        let object = self.place("o", output);
        let sum = blake3::hash(body);
        // An object already there is handed on only once it is proven to be these bytes; one
        // corrupted in place is written again.
        let stored = match digest_of(&object) {
            Ok((len, digest)) if len == body.len() as u64 && digest == sum => Ok(()),
            _ => Self::write_atomically(&object, body),
        };
        let hex: String = output.iter().map(|b| format!("{b:02x}")).collect();
        let entry = format!("{hex} {} {}\n", body.len(), sum.to_hex());
        match stored
            .and_then(|()| Self::write_atomically(&self.place("a", action), entry.as_bytes()))
        {
            Ok(()) => {
                self.count(|c| c.puts += 1);
                Response {
                    disk_path: object.display().to_string(),
                    ..Default::default()
                }
            }
            Err(e) => Response {
                err: format!("{}: {e}", object.display()),
                ..Default::default()
            },
        }
    }
}

/// The size and BLAKE3 of the file at `path`, read through a buffer each thread keeps (an
/// object is often megabytes; a fresh allocation per get would fault in its pages each time).
fn digest_of(path: &Path) -> io::Result<(u64, blake3::Hash)> {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 256 * 1024]);
    }
    let mut file = fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut len = 0u64;
    BUF.with_borrow_mut(|buf| loop {
        match file.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                hasher.update(&buf[..n]);
                len += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    })?;
    Ok((len, hasher.finalize()))
}

/// An entry's line: the OutputID, the size, and the BLAKE3 of the bytes that hashed to the
/// OutputID when they were put.
fn parse_entry(line: &str) -> Option<(Vec<u8>, u64, blake3::Hash)> {
    let mut fields = line.split_ascii_whitespace();
    let (hex, size, sum) = (fields.next()?, fields.next()?, fields.next()?);
    if hex.len() != 64 || fields.next().is_some() {
        return None;
    }
    let output = (0..32)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some((
        output,
        size.parse().ok()?,
        blake3::Hash::from_hex(sum).ok()?,
    ))
}

/// Why a stream ended badly.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Serves Go's requests from `input` until `close` or the end of the stream, answering on
/// `output`. A malformed request ends the stream with an error; nothing waits for input that
/// cannot come. Go sends requests without waiting for answers, and takes them in any order:
/// gets and puts are answered by a few threads at once, as a disk cache would serve them.
pub fn serve(
    store: &mut Store,
    mut input: impl BufRead,
    output: impl Write + Send,
) -> Result<(), StreamError> {
    let store = &*store;
    let output = Mutex::new(output);
    let failed: Mutex<Option<io::Error>> = Mutex::new(None);
    let send = |r: &Response| {
        let mut out = output.lock().unwrap();
        let sent = serde_json::to_writer(&mut *out, r)
            .map_err(io::Error::from)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush());
        if let Err(e) = sent {
            failed.lock().unwrap().get_or_insert(e);
        }
    };
    send(&Response {
        known_commands: vec!["get", "put", "close"],
        ..Default::default()
    });
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(8));
    let (jobs, queue) = mpsc::sync_channel::<(Request, Vec<u8>)>(workers * 4);
    let queue = Mutex::new(queue);
    let closed = std::thread::scope(|scope| -> Result<Option<i64>, StreamError> {
        // Owned here: the workers stop when the reader returns and drops it.
        let jobs = jobs;
        for _ in 0..workers {
            scope.spawn(|| loop {
                let Ok((req, body)) = queue.lock().unwrap().recv() else {
                    return;
                };
                let mut answer = store.put(&req.action_id, &req.output_id, &body);
                answer.id = req.id;
                send(&answer);
            });
        }
        let mut line = Vec::new();
        loop {
            line.clear();
            if read_line(&mut input, &mut line, MAX_LINE)? == 0 {
                return Ok(None);
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let req: Request =
                serde_json::from_slice(&line).map_err(|e| StreamError::Malformed(e.to_string()))?;
            let body = match req.command.as_str() {
                // Answered here: a get is quick, and Go often waits on one before the next, so
                // a hand-off to a worker would only add a wake-up to every round trip.
                "get" => {
                    check_id("ActionID", &req.action_id)?;
                    let mut answer = store.get(&req.action_id);
                    answer.id = req.id;
                    send(&answer);
                    continue;
                }
                "put" => {
                    check_id("ActionID", &req.action_id)?;
                    check_id("OutputID", &req.output_id)?;
                    read_body(&mut input, req.body_size)?
                }
                // Answered once every request before it is.
                "close" => return Ok(Some(req.id)),
                other => {
                    send(&Response {
                        id: req.id,
                        err: format!("unknown command {other:?}"),
                        ..Default::default()
                    });
                    continue;
                }
            };
            if jobs.send((req, body)).is_err() {
                return Ok(None);
            }
        }
    })?;
    if let Some(id) = closed {
        send(&Response {
            id,
            ..Default::default()
        });
    }
    match failed.into_inner().unwrap() {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

fn check_id(what: &str, id: &[u8]) -> Result<(), StreamError> {
    match id.len() {
        32 => Ok(()),
        n => Err(StreamError::Malformed(format!(
            "{what} of {n} bytes, not 32"
        ))),
    }
}

/// A put's body: none when its size is 0, else one line holding a JSON string of its base64.
fn read_body(input: &mut impl BufRead, size: u64) -> Result<Vec<u8>, StreamError> {
    if size == 0 {
        return Ok(Vec::new());
    }
    if size > MAX_BODY {
        return Err(StreamError::Malformed(format!(
            "a body of {size} bytes, more than the {MAX_BODY} taken"
        )));
    }
    let encoded_len = size.div_ceil(3) * 4;
    let mut line = Vec::new();
    // Go ends each request with an empty line too: the body is the next line with bytes in it.
    while line.trim_ascii().is_empty() {
        line.clear();
        if read_line(input, &mut line, encoded_len as usize + 8)? == 0 {
            return Err(StreamError::Malformed(
                "the stream ends before a body".into(),
            ));
        }
    }
    let text = line.trim_ascii();
    let inner = text
        .strip_prefix(b"\"")
        .and_then(|t| t.strip_suffix(b"\""))
        .ok_or_else(|| StreamError::Malformed("a body that is not a JSON string".into()))?;
    let body = base64::engine::general_purpose::STANDARD
        .decode(inner)
        .map_err(|e| StreamError::Malformed(format!("a body that is not base64: {e}")))?;
    if body.len() as u64 != size {
        return Err(StreamError::Malformed(format!(
            "a body of {} bytes where BodySize says {size}",
            body.len()
        )));
    }
    Ok(body)
}

/// Reads up to and including a newline into `buf`, at most `max` bytes; 0 at the end.
fn read_line(
    input: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<usize, StreamError> {
    let n = input.take(max as u64 + 1).read_until(b'\n', buf)?;
    if n > max {
        return Err(StreamError::Malformed(format!(
            "a line longer than {max} bytes"
        )));
    }
    Ok(n)
}

/// Adds `counts` to the totals kept in `dir/counts` (under a lock: builds share the directory).
pub fn add_counts(dir: &Path, counts: Counts) -> io::Result<Counts> {
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("counts.lock"))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)?;
    let path = dir.join(COUNTS);
    let mut total = read_counts(dir);
    total.hits += counts.hits;
    total.misses += counts.misses;
    total.puts += counts.puts;
    total.rejected += counts.rejected;
    Store::write_atomically(&path, serde_json::to_string(&total)?.as_bytes())?;
    Ok(total)
}

/// The file in a store's directory that keeps the totals of its runs.
pub const COUNTS: &str = "counts";

/// The totals in `dir/counts`, zero if none.
fn read_counts(dir: &Path) -> Counts {
    parse_counts(&fs::read(dir.join(COUNTS)).unwrap_or_default())
}

/// The totals a `counts` file holds; zero for anything else.
pub fn parse_counts(bytes: &[u8]) -> Counts {
    serde_json::from_slice(bytes).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    /// Serves `input`; the capabilities answer first, then the answers by ID (Go takes them
    /// in any order).
    fn run(store: &mut Store, input: &str) -> (Result<(), StreamError>, Vec<serde_json::Value>) {
        let mut out = Vec::new();
        let r = serve(store, input.as_bytes(), &mut out);
        let mut answers: Vec<serde_json::Value> = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        answers[1..].sort_by_key(|a| a["ID"].as_i64());
        (r, answers)
    }

    #[test]
    fn a_put_object_is_got_back_and_a_corrupted_one_is_a_miss() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::open(tmp.path()).unwrap();
        let body = b"compiled package";
        let (action, output) = ([7u8; 32], Sha256::digest(body));
        // A put, then (in a later run: answers of one run may come in any order) a get.
        let put = format!(
            "{{\"ID\":1,\"Command\":\"put\",\"ActionID\":\"{a}\",\"OutputID\":\"{o}\",\"BodySize\":{n}}}\n\n\"{b}\"\n\
             {{\"ID\":2,\"Command\":\"close\"}}\n",
            a = b64(&action),
            o = b64(&output),
            n = body.len(),
            b = b64(body)
        );
        let (r, answers) = run(&mut store, &put);
        r.unwrap();
        assert_eq!(
            answers[0]["KnownCommands"],
            serde_json::json!(["get", "put", "close"])
        );
        let path = answers[1]["DiskPath"].as_str().unwrap().to_owned();
        assert_eq!(fs::read(&path).unwrap(), body);
        assert_eq!(answers[2]["ID"], 2, "close is answered last");
        let get = format!(
            "{{\"ID\":3,\"Command\":\"get\",\"ActionID\":\"{}\"}}\n",
            b64(&action)
        );
        let (r, answers) = run(&mut store, &get);
        r.unwrap();
        assert_eq!(answers[1]["OutputID"], b64(&output));
        assert_eq!(answers[1]["Size"], body.len());
        assert_eq!(answers[1]["DiskPath"], path);

        fs::write(&path, b"compiled packagf").unwrap();
        let get = format!(
            "{{\"ID\":4,\"Command\":\"get\",\"ActionID\":\"{}\"}}\n",
            b64(&action)
        );
        let (_, answers) = run(&mut store, &get);
        assert_eq!(answers[1]["Miss"], true);
        assert!(
            !Path::new(&path).exists(),
            "the corrupted object is dropped"
        );
        assert_eq!(store.counts().rejected, 1);
    }

    #[test]
    fn a_put_never_hands_go_an_object_corrupted_in_place_even_of_the_same_size() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::open(tmp.path()).unwrap();
        let body = b"export data of a package";
        let (action, output) = ([9u8; 32], Sha256::digest(body));
        let put = |id: i64| {
            format!(
                "{{\"ID\":{id},\"Command\":\"put\",\"ActionID\":\"{a}\",\"OutputID\":\"{o}\",\"BodySize\":{n}}}\n\n\"{b}\"\n",
                a = b64(&action),
                o = b64(&output),
                n = body.len(),
                b = b64(body)
            )
        };
        let (r, answers) = run(&mut store, &put(1));
        r.unwrap();
        let path = answers[1]["DiskPath"].as_str().unwrap().to_owned();
        let mut corrupt = body.to_vec();
        corrupt[0] ^= 1;
        fs::write(&path, &corrupt).unwrap();

        let (r, answers) = run(&mut store, &put(2));
        r.unwrap();
        assert_eq!(answers[1]["DiskPath"], path);
        assert_eq!(
            fs::read(&path).unwrap(),
            body,
            "the path handed on holds the put's bytes"
        );
    }

    #[test]
    fn a_body_that_does_not_hash_to_its_output_id_is_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::open(tmp.path()).unwrap();
        let input = format!(
            "{{\"ID\":1,\"Command\":\"put\",\"ActionID\":\"{a}\",\"OutputID\":\"{o}\",\"BodySize\":3}}\n\"{b}\"\n",
            a = b64(&[1; 32]),
            o = b64(&[2; 32]),
            b = b64(b"abc")
        );
        let (r, answers) = run(&mut store, &input);
        r.unwrap();
        assert!(answers[1]["Err"].as_str().unwrap().contains("OutputID"));
        assert_eq!((store.counts().rejected, store.counts().puts), (1, 0));
    }

    #[test]
    fn a_malformed_stream_is_an_error_not_a_hang() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::open(tmp.path()).unwrap();
        for bad in [
            "{",
            "{\"ID\":1,\"Command\":\"get\",\"ActionID\":\"AAAA\"}\n",
            "{\"ID\":1,\"Command\":\"put\",\"ActionID\":\"%%\"}\n",
            &format!(
                "{{\"ID\":1,\"Command\":\"put\",\"ActionID\":\"{a}\",\"OutputID\":\"{a}\",\"BodySize\":10}}\n\"AAAA\"\n",
                a = b64(&[1; 32])
            ),
            &format!(
                "{{\"ID\":1,\"Command\":\"put\",\"ActionID\":\"{a}\",\"OutputID\":\"{a}\",\"BodySize\":5}}\n",
                a = b64(&[1; 32])
            ),
        ] {
            assert!(run(&mut store, bad).0.is_err(), "{bad}");
        }
    }
}
