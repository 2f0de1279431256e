//! Frames between the worker and its pool children, over a Unix socket pair.
//!
//! A frame is a `u32` little-endian length of what follows, a `u32` little-endian length of the
//! JSON metadata, the metadata (one [`ToChild`] or [`FromChild`]), then raw bytes (the stored
//! envelope of a job, exactly as claimed).

use std::io::{self, Read, Write};

use celeriac_protocol::TaskState;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Largest frame accepted (a stored envelope is bounded by the database's `bytea`, 1 GiB).
const MAX_FRAME: usize = 1 << 30;
/// What a reader sets aside for a frame before its bytes arrive: the length prefix is not
/// trusted for allocation (four bytes claiming 1 GiB must not allocate 1 GiB), so larger frames
/// grow their buffer as they are read.
const PREALLOC: usize = 64 * 1024;

/// Worker → child.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ToChild {
    /// Run this delivery (the envelope follows as raw bytes).
    Job {
        /// Matches the [`FromChild::Result`].
        seq: u64,
        /// The queue it was claimed from.
        queue: String,
        /// Whether an earlier delivery was lost.
        redelivered: bool,
        /// Its task id is revoked: Celery's code discards it as revoked.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        revoked: bool,
    },
    /// Settle a delivery whose child died; envelope follows.
    PostMortem {
        /// Matches the [`FromChild::Result`].
        seq: u64,
        /// The queue it was claimed from.
        queue: String,
        /// Whether an earlier delivery was lost.
        redelivered: bool,
        /// How the child died.
        cause: DeathCause,
        /// How the process ended, e.g. `signal 11 (SIGSEGV)`.
        detail: String,
        /// The hard time limit that was exceeded (for `timeout`).
        hard_limit: f64,
    },
    /// The broker's full URL, password included: the first frame a child reads when its
    /// environment says one comes (`CELERIAC_BROKER_URL_FRAME=1`), before it loads the app, so the
    /// password never sits in an environment (which `/proc/<pid>/environ` shows for good).
    BrokerUrl {
        /// The connection string.
        url: String,
    },
    /// All children are up: send `worker_ready`.
    Ready,
    /// Finish, send the shutdown signals (`worker_shutdown` too if `announce_worker`), exit.
    Shutdown {
        /// Whether this child sends the worker-level `worker_shutdown`.
        announce_worker: bool,
    },
}

/// Child → worker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FromChild {
    /// The app is loaded; what `celeriac._worker.init` returned.
    Hello {
        /// The hello document.
        hello: serde_json::Value,
    },
    /// The app could not be loaded; the child exits.
    InitError {
        /// What to tell the user.
        message: String,
    },
    /// A job or post-mortem finished.
    Result {
        /// The job's sequence number.
        seq: u64,
        /// What Celery's code did with the message.
        decision: Decision,
        /// What became of the task: `SUCCESS`, `FAILURE`, `RETRY`, `REJECTED`, `IGNORED`,
        /// `REVOKED`, `UNDECODABLE` or `INTERNAL_ERROR`.
        state: TaskState,
        /// Why, for a `reject`.
        detail: String,
        /// The child's peak RSS in KiB after the job.
        max_rss_kib: u64,
    },
}

/// What Celery's ack/reject callbacks did with a delivery's message (the `Request` callbacks
/// acknowledge or reject it; celeriac applies that to the row). On the wire: `ack`, `reject`,
/// `requeue`, `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Acknowledged: the message is done with.
    Ack,
    /// Rejected without requeue (`Reject(requeue=False)`, a failed `acks_late` task, …).
    Reject,
    /// Rejected with requeue (`Reject(requeue=True)`, `reject_on_worker_lost`).
    Requeue,
    /// Neither acknowledged nor rejected (`none`).
    #[serde(rename = "none")]
    Undecided,
}

/// Why a delivery needs a post-mortem. On the wire (and as `celeriac._worker.post_mortem`'s
/// `cause`): `lost`, `timeout`, `in_process`, `terminated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeathCause {
    /// The child process exited with the task (crash, `os._exit`, a signal).
    Lost,
    /// The child was killed at the task's hard time limit.
    Timeout,
    /// A threads or solo pool task raised `SystemExit`: the child settles it itself (never
    /// sent by the worker).
    InProcess,
    /// The child was killed by a revoke with `terminate=True` (the detail is the signal number).
    Terminated,
}

impl DeathCause {
    /// The wire name, e.g. `"timeout"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            DeathCause::Lost => "lost",
            DeathCause::Timeout => "timeout",
            DeathCause::InProcess => "in_process",
            DeathCause::Terminated => "terminated",
        }
    }
}

fn encode<M: Serialize>(meta: &M, raw: &[u8]) -> io::Result<Vec<u8>> {
    let meta = serde_json::to_vec(meta).map_err(io::Error::other)?;
    let len = 4 + meta.len() + raw.len();
    let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "frame too large");
    if len > MAX_FRAME {
        return Err(too_big());
    }
    let mut buf = Vec::with_capacity(4 + len);
    buf.extend_from_slice(&u32::try_from(len).map_err(|_| too_big())?.to_le_bytes());
    buf.extend_from_slice(&u32::try_from(meta.len()).map_err(|_| too_big())?.to_le_bytes());
    buf.extend_from_slice(&meta);
    buf.extend_from_slice(raw);
    Ok(buf)
}

fn decode<M: DeserializeOwned>(mut body: Vec<u8>) -> io::Result<(M, Vec<u8>)> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_owned());
    let meta_len = body.get(..4).ok_or_else(|| bad("short frame"))?;
    let meta_len = u32::from_le_bytes(meta_len.try_into().map_err(|_| bad("short frame"))?) as usize;
    let end = 4usize.checked_add(meta_len).filter(|&e| e <= body.len()).ok_or_else(|| bad("bad metadata length"))?;
    let meta = serde_json::from_slice(&body[4..end]).map_err(|e| bad(&format!("bad frame metadata: {e}")))?;
    let raw = body.split_off(end);
    Ok((meta, raw))
}

fn check_len(len: u32) -> io::Result<usize> {
    let len = len as usize;
    if !(4..=MAX_FRAME).contains(&len) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad frame length {len}")));
    }
    Ok(len)
}

/// The frame body's buffer, and the error for one that ended early.
fn body_buffer(len: usize) -> Vec<u8> {
    Vec::with_capacity(len.min(PREALLOC))
}

fn check_complete(body: &[u8], len: usize) -> io::Result<()> {
    if body.len() == len {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("frame of {len} bytes ends after {}", body.len())))
    }
}

/// Writes one frame (blocking).
///
/// # Errors
/// I/O errors of the socket.
pub fn write_sync<M: Serialize>(w: &mut impl Write, meta: &M, raw: &[u8]) -> io::Result<()> {
    w.write_all(&encode(meta, raw)?)
}

/// Reads one frame (blocking); `None` at a clean end of stream.
///
/// # Errors
/// I/O errors, or a malformed frame.
pub fn read_sync<M: DeserializeOwned>(r: &mut impl Read) -> io::Result<Option<(M, Vec<u8>)>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = check_len(u32::from_le_bytes(len))?;
    let mut body = body_buffer(len);
    r.take(len as u64).read_to_end(&mut body)?;
    check_complete(&body, len)?;
    decode(body).map(Some)
}

/// Writes one frame.
///
/// # Errors
/// I/O errors of the socket.
pub async fn write<M: Serialize>(w: &mut (impl tokio::io::AsyncWrite + Unpin), meta: &M, raw: &[u8]) -> io::Result<()> {
    w.write_all(&encode(meta, raw)?).await
}

/// Reads one frame; `None` at a clean end of stream.
///
/// # Errors
/// I/O errors, or a malformed frame.
pub async fn read<M: DeserializeOwned>(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
) -> io::Result<Option<(M, Vec<u8>)>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = check_len(u32::from_le_bytes(len))?;
    let mut body = body_buffer(len);
    r.take(len as u64).read_to_end(&mut body).await?;
    check_complete(&body, len)?;
    decode(body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_reject_garbage() {
        let job = ToChild::Job { seq: 7, queue: "celery".into(), redelivered: true, revoked: false };
        let mut buf = Vec::new();
        write_sync(&mut buf, &job, b"{\"body\": 1}").unwrap();
        write_sync(&mut buf, &ToChild::Ready, b"").unwrap();
        let mut r = io::Cursor::new(buf.clone());
        let (meta, raw): (ToChild, _) = read_sync(&mut r).unwrap().unwrap();
        assert_eq!(meta, job);
        assert_eq!(raw, b"{\"body\": 1}");
        let (meta, raw): (ToChild, _) = read_sync(&mut r).unwrap().unwrap();
        assert_eq!(meta, ToChild::Ready);
        assert!(raw.is_empty());
        assert!(read_sync::<ToChild>(&mut r).unwrap().is_none());

        // Truncated, oversized and nonsense frames are errors, not panics.
        assert!(read_sync::<ToChild>(&mut io::Cursor::new(&buf[..10])).is_err());
        assert!(read_sync::<ToChild>(&mut io::Cursor::new(u32::MAX.to_le_bytes())).is_err());
        let mut nonsense = 8u32.to_le_bytes().to_vec();
        nonsense.extend_from_slice(&[0xff; 8]);
        assert!(read_sync::<ToChild>(&mut io::Cursor::new(nonsense)).is_err());
    }

    #[test]
    fn decisions_states_and_causes_keep_their_wire_names() {
        let reply = FromChild::Result {
            seq: 3,
            decision: Decision::Undecided,
            state: TaskState::InternalError,
            detail: String::new(),
            max_rss_kib: 1,
        };
        assert_eq!(
            serde_json::to_string(&reply).unwrap(),
            r#"{"kind":"result","seq":3,"decision":"none","state":"INTERNAL_ERROR","detail":"","max_rss_kib":1}"#
        );
        for (decision, wire) in [
            (Decision::Ack, "ack"),
            (Decision::Reject, "reject"),
            (Decision::Requeue, "requeue"),
            (Decision::Undecided, "none"),
        ] {
            assert_eq!(serde_json::to_value(decision).unwrap(), wire);
        }
        for cause in [DeathCause::Lost, DeathCause::Timeout, DeathCause::InProcess] {
            assert_eq!(serde_json::to_value(cause).unwrap(), cause.as_str());
        }
    }

    #[test]
    fn an_unknown_decision_or_state_is_an_error_naming_it() {
        for (json, unknown) in [
            (r#"{"kind":"result","seq":1,"decision":"maybe","state":"SUCCESS","detail":"","max_rss_kib":0}"#, "maybe"),
            (r#"{"kind":"result","seq":1,"decision":"ack","state":"DONE","detail":"","max_rss_kib":0}"#, "DONE"),
        ] {
            let mut buf = Vec::new();
            buf.extend_from_slice(&u32::try_from(4 + json.len()).unwrap().to_le_bytes());
            buf.extend_from_slice(&u32::try_from(json.len()).unwrap().to_le_bytes());
            buf.extend_from_slice(json.as_bytes());
            let err = read_sync::<FromChild>(&mut io::Cursor::new(buf)).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(err.to_string().contains(&format!("unknown variant `{unknown}`")), "{err}");
        }
    }

    /// Hands out at most `left` bytes (then end of stream), and fails the test if asked to fill
    /// a buffer larger than 1 MiB: what a frame reader allocates up front.
    struct Stingy {
        left: usize,
    }

    impl Read for Stingy {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            assert!(buf.len() <= 1 << 20, "asked to fill {} bytes", buf.len());
            let n = buf.len().min(self.left);
            buf[..n].fill(b' ');
            self.left -= n;
            Ok(n)
        }
    }

    #[test]
    fn a_length_prefix_is_not_trusted_for_allocation() {
        // Four bytes claiming a 1 GiB frame, then 100 bytes: an early end, not a 1 GiB buffer.
        let mut r = io::Read::chain(io::Cursor::new(((1u32 << 30) - 2).to_le_bytes()), Stingy { left: 100 });
        let err = read_sync::<ToChild>(&mut r).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        // A real frame larger than the up-front buffer still reads whole.
        let raw = vec![7u8; 3 * PREALLOC + 5];
        let mut buf = Vec::new();
        write_sync(&mut buf, &ToChild::Ready, &raw).unwrap();
        let (meta, got): (ToChild, _) = read_sync(&mut io::Cursor::new(&buf)).unwrap().unwrap();
        assert_eq!((meta, got), (ToChild::Ready, raw.clone()));
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (meta, got): (ToChild, _) = rt.block_on(read(&mut &buf[..])).unwrap().unwrap();
        assert_eq!((meta, got), (ToChild::Ready, raw));
        let err = rt.block_on(read::<ToChild>(&mut &buf[..buf.len() - 1])).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }

    /// What the `frame` fuzz target does with one input (fuzz/fuzz_targets/frame.rs).
    fn read_all<M: Serialize + DeserializeOwned>(data: &[u8]) {
        let mut r = io::Cursor::new(data);
        while let Ok(Some((meta, raw))) = read_sync::<M>(&mut r) {
            let mut buf = Vec::new();
            write_sync(&mut buf, &meta, &raw).expect("a frame that was read can be written");
            let again = read_sync::<M>(&mut io::Cursor::new(buf));
            assert!(matches!(again, Ok(Some((_, ref raw_again))) if *raw_again == raw), "a written frame reads back");
        }
    }

    #[test]
    fn frames_replay_the_fuzz_corpus() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/frame");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            read_all::<ToChild>(&data);
            read_all::<FromChild>(&data);
            count += 1;
        }
        assert!(count >= 3, "the corpus in {} has {count} inputs", dir.display());
    }
}
