//! Errors of decoding and encoding Celery messages. Each names the offending field.

use crate::json::JsonError;

/// Why a stored message could not be turned into a task.
///
/// Every variant names the part of the message at fault (`headers.eta`, `body`, …) so the
/// dead-letter row says exactly what a producer got wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The envelope is not JSON.
    #[error("envelope: {0}")]
    EnvelopeJson(#[source] JsonError),
    /// A field is missing or has the wrong type or value.
    #[error("{field}: {problem}")]
    Field {
        /// Dotted path of the field, e.g. `headers.task`.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// `properties.body_encoding` says base64 but the body is not.
    #[error("body: not valid base64 ({0})")]
    BodyBase64(String),
    /// The body names a compression celeriac cannot undo.
    #[error("headers.compression: unsupported compression {0:?} (supported: application/x-gzip, gzip, zlib)")]
    UnsupportedCompression(String),
    /// The compressed body is corrupt.
    #[error("body: decompression failed: {0}")]
    Decompress(String),
    /// The message is beyond the decoder's [`crate::Limits`]: a body that inflates beyond
    /// `max_inflated_body`, or an envelope or body whose values exceed `max_decoded_size`.
    #[error("{part}: too large: {problem}")]
    TooLarge {
        /// `envelope` or `body`.
        part: &'static str,
        /// Which limit, and its value.
        problem: String,
    },
    /// The content type is not in the worker's accept list (Celery's `ContentDisallowed`).
    #[error(
        "content-type: refusing to deserialize disallowed content of type {content_type:?} (accepted: {accepted})"
    )]
    ContentDisallowed {
        /// The message's content type.
        content_type: String,
        /// The accept list, comma separated.
        accepted: String,
    },
    /// The content type is accepted but this process has no decoder for it.
    #[error("content-type: no decoder for {0:?} in this worker (application/json and application/x-msgpack are decoded natively; pickle needs the embedded Python runtime)")]
    UnsupportedContentType(String),
    /// The body is not valid JSON.
    #[error("body: {0}")]
    BodyJson(#[source] JsonError),
}

impl DecodeError {
    pub(crate) fn field(field: impl Into<String>, problem: impl Into<String>) -> Self {
        DecodeError::Field { field: field.into(), problem: problem.into() }
    }

    /// A short machine-readable reason, stored in the dead-letter table's `reason_code`.
    #[must_use]
    pub fn reason_code(&self) -> crate::DeadLetterReason {
        match self {
            DecodeError::ContentDisallowed { .. } | DecodeError::UnsupportedContentType(_) => {
                crate::DeadLetterReason::ContentDisallowed
            }
            DecodeError::TooLarge { .. } => crate::DeadLetterReason::TooLarge,
            _ => crate::DeadLetterReason::Undecodable,
        }
    }
}

/// Why a message could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// An option is outside what Celery accepts.
    #[error("{option}: {problem}")]
    Option {
        /// The option's name, e.g. `priority`.
        option: &'static str,
        /// What is wrong with its value.
        problem: String,
    },
}
