//! # celeriac-protocol
//!
//! The Celery wire format, with no IO: kombu's JSON (big integers, bare `NaN`, the `__type__`
//! markers), the virtual-transport envelope, protocol-v2 headers and the `[args, kwargs, embed]`
//! body (protocol 1 is read too). Decoding is total: any byte string yields a [`TaskMessage`] or a
//! [`DecodeError`] naming the field at fault, never a panic, and bounded: [`Limits`] caps the
//! inflated body and the size of the decoded values. Encoding reproduces the bytes Celery
//! 5.7 writes, so Python clients and workers cannot tell celeriac's messages from their own.
//!
//! ```
//! use celeriac_protocol::{encode_task, Accept, Map, TaskMessage, TaskOptions, Value};
//!
//! let now = chrono::Utc::now();
//! let sent = encode_task("tasks.add", &[Value::Int(2), Value::Int(2)], &Map::new(), &TaskOptions::default(), now)?;
//! let received = TaskMessage::decode(&sent.payload, &Accept::default())?;
//! let (a, b): (i64, i64) = Value::List(received.args.clone()).deserialize_into()?;
//! assert_eq!(a + b, 4);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Modules depend on each other one way, lowest first: `isoformat` (Python's date and time
//! text) ← [`value`] (the data model, its serde `Serialize`/`Deserialize` and marker text) ←
//! [`de`] (typed reads) and [`limits`] ← [`json`], [`msgpack`], [`pyrepr`] ← [`error`] ←
//! [`message`]. [`state`] (task states) and `rate` (rate limits) stand alone.

pub mod de;
pub mod error;
mod isoformat;
pub mod json;
pub mod limits;
pub mod message;
pub mod msgpack;
pub mod pickle;
pub mod pidbox;
pub mod pyrepr;
mod rate;
mod reason;
pub mod state;
pub mod value;

pub use error::{DecodeError, EncodeError};
pub use limits::{Budget, Limits};
pub use message::{
    encode_task, Accept, DeliveryInfo, Embed, EncodedTask, Envelope, Expires, ProtocolVersion, TaskHeaders,
    TaskMessage, TaskOptions, TimeLimit, CONTENT_TYPE_JSON, DEFAULT_QUEUE,
};
pub use rate::{Rate, RateError};
pub use reason::{DeadLetterReason, UnknownReason};
pub use state::TaskState;
pub use value::{Map, Value};
