//! The one error type of this crate.

use std::path::PathBuf;

/// Why an object could not be fetched into the cache.
///
/// Every variant names the URL or the cache folder (or both); those about the object's bytes name
/// the absolute byte offset in the object, and block mismatches the tensor and block. `Display`
/// reads as a sentence fragment, so callers can prefix context.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL does not parse, or names a scheme this crate does not serve, or an option given in
    /// [`CacheOptions::store_options`](crate::CacheOptions::store_options) is unknown.
    #[error("{url}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The object does not exist (HTTP 404). Where the store can list, the message says what is
    /// there instead: no bucket, nothing under the prefix, or a dataset without its manifest.
    #[error("{url}: no such object{}", .note.as_deref().map(|n| format!(": {n}")).unwrap_or_default())]
    NotFound {
        /// The URL.
        url: String,
        /// What a listing found instead, when it tells more than the 404.
        note: Option<String>,
    },
    /// The server refused the credentials (HTTP 401 or 403).
    #[error(
        "{url}: access denied: check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
         GOOGLE_SERVICE_ACCOUNT, AZURE_STORAGE_ACCOUNT_KEY, ...): {source}"
    )]
    AccessDenied {
        /// The URL.
        url: String,
        /// object_store's error, with the server's message.
        #[source]
        source: object_store::Error,
    },
    /// A request failed for a reason of the client's setup, which no retry changes: an `http://`
    /// endpoint without permission to use plain HTTP. The message says what to set.
    #[error("{url}: {action} failed: {hint}: {source}")]
    Setup {
        /// The URL.
        url: String,
        /// What was being done.
        action: String,
        /// What to change.
        hint: &'static str,
        /// object_store's error (boxed: it is large, and this variant is rare).
        #[source]
        source: Box<object_store::Error>,
    },
    /// Any other failure of a request, after object_store's retries and this crate's part retries.
    /// The message holds object_store's error and its causes (the refused connection, the body
    /// that ended short), which its own message leaves out. One that reached the EC2 instance
    /// metadata service for credentials says so.
    #[error("{url}: {action} failed: {}{}", chain(source), request_note(source))]
    Request {
        /// The URL.
        url: String,
        /// What was being done ("HEAD", "GET bytes 0..1048576").
        action: String,
        /// object_store's error.
        #[source]
        source: object_store::Error,
    },
    /// A dataset's manifest (`manifest.mmtm` under the dataset's URL) is not a valid manifest.
    #[error("{url}: {source}")]
    Manifest {
        /// The manifest's URL.
        url: String,
        /// The format crate's exact error.
        #[source]
        source: mmtensor_format::Error,
    },
    /// A fetched dataset could not be opened from the cache (a shard that differs from the
    /// manifest, say, or an order the rank split refuses); the loader's error names the cached
    /// file.
    #[error("{url}: {source}")]
    Open {
        /// The shard's URL when one shard could not be opened, else the dataset's.
        url: String,
        /// The loader's error (boxed: it is large, and rare).
        #[source]
        source: Box<mmtensor::Error>,
    },
    /// The object changed on the server while it was being downloaded (its ETag no longer
    /// matches). The partial download was discarded; fetching again downloads the new object.
    #[error("{url}: the object changed on the server during the download; fetch it again")]
    Changed {
        /// The URL.
        url: String,
    },
    /// The server sent fewer or more bytes than the range asked for.
    #[error("{url}: asked for bytes {start}..{end}, the server sent {got} bytes")]
    ShortRead {
        /// The URL.
        url: String,
        /// Start of the range.
        start: u64,
        /// End of the range.
        end: u64,
        /// Bytes received.
        got: u64,
    },
    /// The object is not a valid `.mmt` file: its preamble, header or checksum table is wrong.
    /// Nothing was left in the cache.
    #[error("{url}: not a valid .mmt file: {source}")]
    Format {
        /// The URL.
        url: String,
        /// The format crate's error (field, tensor, absolute byte offset).
        #[source]
        source: mmtensor_format::Error,
    },
    /// The checksum table does not match the hash stored in the header. Nothing was left in the cache.
    #[error(
        "{url}: the checksum table at byte {offset} is corrupt (xxh3 {computed:016x}, the header says {stored:016x})"
    )]
    TableChecksum {
        /// The URL.
        url: String,
        /// Absolute offset of the table.
        offset: u64,
        /// The hash in the header.
        stored: u64,
        /// The hash of the bytes received.
        computed: u64,
    },
    /// A block's bytes do not match its checksum: the object is corrupt on the server (or was
    /// corrupted in transit). Nothing was left in the cache.
    #[error(
        "{url}: tensor {tensor:?} block {block} (bytes {offset}..{end}) is corrupt: xxh3 {computed:016x}, \
         the checksum table says {stored:016x}"
    )]
    BlockChecksum {
        /// The URL.
        url: String,
        /// The tensor's name.
        tensor: String,
        /// The block's index within the tensor.
        block: u64,
        /// Absolute offset of the block's first byte.
        offset: u64,
        /// Absolute offset just past the block.
        end: u64,
        /// The checksum in the table.
        stored: u64,
        /// The checksum of the bytes received.
        computed: u64,
    },
    /// A padding byte (between the header, the tensors and the checksum table) is not zero.
    /// Nothing was left in the cache.
    #[error("{url}: padding byte {offset} is {value:#04x}, not zero")]
    Padding {
        /// The URL.
        url: String,
        /// Absolute offset of the byte.
        offset: u64,
        /// The byte.
        value: u8,
    },
    /// The object alone is larger than the cache's capacity.
    #[error(
        "{url}: the object is {size} bytes, larger than the capacity of the cache {} ({capacity} bytes)",
        .dir.display()
    )]
    TooLarge {
        /// The URL.
        url: String,
        /// The object's size.
        size: u64,
        /// The cache folder.
        dir: PathBuf,
        /// Its capacity.
        capacity: u64,
    },
    /// The shards of a dataset to open are together larger than the cache's capacity: opening it
    /// would evict its own shards. Nothing was fetched.
    #[error(
        "{url}: the {shards} shards to open{} hold {} ({size} bytes), more than the capacity of \
         the cache {} ({}): stream it instead (stream=True fetches parts as batches need \
         them, within the cache), or give the cache at least that much room (cache_size){}",
        rank.map(|(r, w)| format!(" for rank {r} of {w}")).unwrap_or_default(),
        mmtensor_format::format_size(*size),
        .dir.display(),
        mmtensor_format::format_size(*capacity),
        if rank.is_none() { ", or open only one rank's shards (whole shards per rank)" } else { "" }
    )]
    DatasetTooLarge {
        /// The dataset's URL.
        url: String,
        /// Shards selected.
        shards: usize,
        /// Their total size in bytes.
        size: u64,
        /// The cache folder.
        dir: PathBuf,
        /// Its capacity.
        capacity: u64,
        /// `(rank, world_size)` when one rank's shards were to be opened.
        rank: Option<(u64, u64)>,
    },
    /// A streamed dataset's batch needs more bytes of parts at once than the cache holds.
    #[error(
        "{url}: batch {batch} needs {} of parts at once (with the file system's slack), more \
         than the cache in {} holds ({}); give the cache more room, or read smaller batches \
         (or a block shuffle, whose batches read fewer parts)",
        mmtensor_format::format_size(*need),
        .dir.display(),
        mmtensor_format::format_size(*capacity)
    )]
    CacheTooSmall {
        /// The dataset's URL.
        url: String,
        /// The batch (of the epoch, on this rank).
        batch: usize,
        /// Bytes of the parts it reads (whole pages), and the slack room-making keeps free.
        need: u64,
        /// The cache folder.
        dir: PathBuf,
        /// Its capacity.
        capacity: u64,
    },
    /// A streamed dataset's batch found no room in the cache for a bounded time: other
    /// processes or datasets sharing the folder hold it, and let none of it go.
    #[error(
        "{url}: batch {batch} waited {waited:?} for room in the cache {} ({} of {} taken by \
         other processes or datasets sharing it): give it more room, or stream through a folder \
         of its own",
        .dir.display(),
        mmtensor_format::format_size(*usage),
        mmtensor_format::format_size(*capacity)
    )]
    NoRoom {
        /// The dataset's URL.
        url: String,
        /// The batch (of the epoch, on this rank).
        batch: usize,
        /// The cache folder.
        dir: PathBuf,
        /// Its capacity.
        capacity: u64,
        /// Bytes the folder held when the wait was given up.
        usage: u64,
        /// How long the batch waited.
        waited: std::time::Duration,
    },
    /// The cache folder's file system is full (`ENOSPC`). The partial download was removed.
    #[error(
        "{url}: the disk holding the cache {} is full (needed {size} bytes for this object): \
         free space or give the cache a smaller capacity",
        .dir.display()
    )]
    DiskFull {
        /// The URL.
        url: String,
        /// The cache folder.
        dir: PathBuf,
        /// The object's size.
        size: u64,
    },
    /// The cache folder holds files the cache did not make, and no marker saying it is an
    /// mmtensor cache. A cache deletes its entries to stay under its capacity, so it keeps a
    /// folder of its own rather than risk a user's files; nothing was changed in the folder.
    #[error(
        "{}: this folder holds files a cache did not make ({}{}), and a cache deletes what it \
         holds to stay under its size: give the cache a folder of its own, new or empty (such as \
         {})",
        .dir.display(),
        .foreign.join(", "),
        if *.more > 0 { format!(" and {} more", .more) } else { String::new() },
        .dir.join("mmt-cache").display()
    )]
    NotACacheFolder {
        /// The folder.
        dir: PathBuf,
        /// The first few files (or folders) in it that are not the cache's, sorted.
        foreign: Vec<String>,
        /// How many more there are.
        more: usize,
    },
    /// The object on the server is not the one its dataset's manifest lists (its length or its
    /// header checksum differs): the object or the manifest changed on the server since they were
    /// written together, or the manifest is wrong. Checked before the object's data is fetched;
    /// nothing of it stays in the cache.
    #[error(
        "{url}: the object on the server is not the one the manifest lists: {what}; the dataset \
         changed on the server (open it again) or its manifest is wrong"
    )]
    NotAsListed {
        /// The object's URL.
        url: String,
        /// What differs.
        what: Listed,
    },
    /// A file operation in the cache folder failed.
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done, as a verb phrase ("create", "write", "rename").
        action: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A [`Cache`](crate::Cache) method was called from inside a tokio runtime. The cache runs its
    /// own runtime and blocks on it; call it from a plain thread (`tokio::task::spawn_blocking`).
    #[error("mmtensor-remote: Cache methods block; call them outside async code (e.g. in spawn_blocking)")]
    InsideAsyncRuntime,
    /// A write to object storage lost a race, or cannot be made safely: its manifest was not put
    /// and nothing of it is visible (the shards it uploaded are deleted).
    #[error("{url}: {reason}; nothing of this write is visible")]
    Conflict {
        /// The manifest's (or the dataset's) URL.
        url: String,
        /// What happened, and what to do.
        reason: String,
    },
    /// Writing the rows (cutting, checking, staging shards) failed: the converter's error (boxed:
    /// it is large, and rare).
    #[error(transparent)]
    Write(Box<mmtensor_convert::Error>),
}

impl From<mmtensor_convert::Error> for Error {
    fn from(e: mmtensor_convert::Error) -> Self {
        Error::Write(Box::new(e))
    }
}

/// What of an object differs from what a manifest lists ([`Error::NotAsListed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Listed {
    /// Its length in bytes (from the HEAD, before any GET).
    Length {
        /// The server's.
        found: u64,
        /// The manifest's.
        listed: u64,
    },
    /// The header checksum in its preamble (from the first GET, before any tensor byte).
    HeaderChecksum {
        /// The object's.
        found: u64,
        /// The manifest's.
        listed: u64,
    },
}

impl std::fmt::Display for Listed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listed::Length { found, listed } => {
                write!(f, "it is {found} bytes long, the manifest says {listed}")
            }
            Listed::HeaderChecksum { found, listed } => write!(
                f,
                "its header checksum is {found:016x}, the manifest says {listed:016x}"
            ),
        }
    }
}

/// An error's message followed by those of its sources (object_store keeps the cause, such as
/// reqwest's "URL scheme is not allowed" or hyper's "Connection refused", below a generic "HTTP
/// error: builder error" or "error sending request"), but for a source whose message the text
/// already holds (object_store's retry error repeats its inner error's).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        next = cause.source();
    }
    text
}

/// What to set when object_store's message shows a setup problem rather than a failed request:
/// plain http:// refused by the client. No retry changes that.
fn setup_hint(message: &str) -> Option<&'static str> {
    if message.contains("URL scheme is not allowed") {
        return Some(
            "the endpoint is plain http://, which the client refuses unless allowed: set \
             AWS_ALLOW_HTTP=true (S3; in Rust also the store option allow_http=true)",
        );
    }
    None
}

/// A note on a failed request whose cause may be a missing credential: with no credentials in
/// the environment, object_store's S3 client asks the EC2 instance metadata service
/// (169.254.169.254) last, and its refusal or absence is all the error says. On an EC2 instance
/// with a role the same address is the right source and a failure may pass, so the request stays
/// retried; the note only says where to look.
fn request_note(source: &object_store::Error) -> &'static str {
    if chain(source).contains("169.254.169.254") {
        " (the credentials were looked up at the EC2 instance metadata service, which is where \
         object_store looks when the environment has none: outside EC2, set AWS_ACCESS_KEY_ID \
         and AWS_SECRET_ACCESS_KEY, and AWS_SESSION_TOKEN for temporary ones)"
    } else {
        ""
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Maps an object_store error of a request on `url` to the variant a caller can act on.
    pub(crate) fn request(
        url: &str,
        action: impl Into<String>,
        source: object_store::Error,
    ) -> Self {
        match source {
            object_store::Error::NotFound { .. } => Error::NotFound {
                url: url.into(),
                note: None,
            },
            object_store::Error::Precondition { .. } => Error::Changed { url: url.into() },
            e @ (object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }) => Error::AccessDenied {
                url: url.into(),
                source: e,
            },
            e => match setup_hint(&chain(&e)) {
                Some(hint) => Error::Setup {
                    url: url.into(),
                    action: action.into(),
                    hint,
                    source: Box::new(e),
                },
                None => Error::Request {
                    url: url.into(),
                    action: action.into(),
                    source: e,
                },
            },
        }
    }

    /// Whether retrying the same request may succeed: transport failures and server errors, not
    /// corruption, a missing or changed object, or refused credentials.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, Error::Request { .. } | Error::ShortRead { .. })
    }

    /// Whether a download that failed with this error keeps its verified parts for the next
    /// fetch: not when the object is corrupt or changed (resuming cannot help), nor when the disk
    /// is full (the space is wanted back).
    pub(crate) fn keeps_partial(&self) -> bool {
        !matches!(
            self,
            Error::Format { .. }
                | Error::TableChecksum { .. }
                | Error::BlockChecksum { .. }
                | Error::Padding { .. }
                | Error::Changed { .. }
                | Error::NotAsListed { .. }
                | Error::DiskFull { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_lookup_that_reached_the_metadata_service_says_where_to_look() {
        // What object_store reports when the environment has no AWS keys (as a user saw it).
        let source = object_store::Error::Generic {
            store: "S3",
            source: "Error performing PUT http://169.254.169.254/latest/api/token in 1ms: 403"
                .into(),
        };
        let e = Error::request("s3://b/train/manifest.mmtm", "HEAD", source);
        // Still retried: on EC2 with a role, the metadata service is the right source.
        assert!(
            matches!(e, Error::Request { .. }) && e.is_transient(),
            "{e}"
        );
        let text = e.to_string();
        assert!(
            text.contains("instance metadata service") && text.contains("AWS_ACCESS_KEY_ID"),
            "{text}"
        );
        // Anything else has no note.
        let other = object_store::Error::Generic {
            store: "S3",
            source: "connection reset".into(),
        };
        let e = Error::request("s3://b/x", "GET", other);
        assert!(e.is_transient() && !e.to_string().contains("AWS_ACCESS_KEY_ID"));
    }

    /// A cause under object_store's message, as reqwest nests "Connection refused" under "error
    /// sending request".
    #[derive(Debug)]
    struct Nested(&'static str, Option<Box<Nested>>);

    impl std::fmt::Display for Nested {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Nested {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn a_failed_request_names_the_cause_object_store_leaves_out_of_its_message() {
        // Seen with the server down: "GET bytes 1052672..1314816 failed: Generic S3 error: ...
        // HTTP error: error sending request", with nothing of the refused connection.
        let source = object_store::Error::Generic {
            store: "S3",
            source: Box::new(Nested(
                "HTTP error: error sending request",
                Some(Box::new(Nested(
                    "HTTP error: error sending request",
                    Some(Box::new(Nested(
                        "tcp connect error: Connection refused (os error 111)",
                        None,
                    ))),
                ))),
            )),
        };
        let text = Error::request("s3://b/x.mmt", "GET bytes 0..10", source).to_string();
        assert!(
            text.starts_with("s3://b/x.mmt: GET bytes 0..10 failed: ")
                && text.ends_with(
                    "error sending request: tcp connect error: Connection refused (os error 111)"
                )
                && text.matches("error sending request").count() == 1,
            "{text}"
        );
    }
}
