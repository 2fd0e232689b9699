//! Arrow IPC files (`.arrow`, Feather v2) and streams: planned from their messages' metadata
//! alone. The messages are walked with bounded positioned reads (a length prefix, then the
//! flatbuffer metadata, checked by arrow-rs's verifier), each body's claimed length checked
//! against the file and skipped: the schema, and each record batch's row count and null counts,
//! come without reading any data. Each column streams record batch by record batch
//! (`source/arrow.rs`).

use std::path::Path;
use std::sync::Arc;

use arrow_ipc::convert::try_fb_to_schema;
use arrow_ipc::{Message, MessageHeader, MetadataVersion};
use arrow_schema::{DataType, Schema};

use crate::plan::PlannedTensor;
use crate::readers::columns::{nulls_refused, plan_table};
use crate::source::{column_type, open_input, pread_exact, ColumnType, Decoder, IpcBlock, Table};
use crate::{DtypeRules, Error, Result};

/// The IPC file format's magic, at its start (padded to 8 bytes) and at its end.
const MAGIC: &[u8; 6] = b"ARROW1";
/// Marks a message's length in the IPC format since Arrow 0.15.
const CONTINUATION: [u8; 4] = [0xff; 4];
/// The longest message metadata accepted: a schema or record batch of a million columns fits.
const MAX_METADATA: u64 = 256 << 20;

/// How many field nodes a column of type `t` has in a record batch message: its own and its
/// children's, depth first (a dictionary's values are in dictionary batches, not here).
fn node_count(t: &DataType) -> usize {
    use DataType as T;
    1 + match t {
        T::List(f)
        | T::LargeList(f)
        | T::ListView(f)
        | T::LargeListView(f)
        | T::FixedSizeList(f, _)
        | T::Map(f, _) => node_count(f.data_type()),
        T::Struct(fields) => fields.iter().map(|f| node_count(f.data_type())).sum(),
        T::Union(fields, _) => fields.iter().map(|(_, f)| node_count(f.data_type())).sum(),
        T::RunEndEncoded(r, v) => node_count(r.data_type()) + node_count(v.data_type()),
        _ => 0,
    }
}

/// What the messages of a file or stream say, gathered as they are read.
#[derive(Default)]
struct Messages {
    schema: Option<(Schema, MetadataVersion)>,
    /// Per column: its first field node, and its tensor type when it makes one.
    types: Vec<(usize, Option<ColumnType>)>,
    /// Per column: the first record batch holding a null, and how many.
    first_null: Vec<Option<(usize, i64)>>,
    blocks: Vec<IpcBlock>,
    groups: Vec<u64>,
}

impl Messages {
    fn schema(&mut self, schema: Schema, version: MetadataVersion) {
        let mut node = 0usize;
        for field in schema.fields() {
            self.types.push((node, column_type(field).ok()));
            node = node.saturating_add(node_count(field.data_type()));
        }
        self.first_null = vec![None; self.types.len()];
        self.schema = Some((schema, version));
    }

    /// A record batch message at `block`: its rows, and the null counts of the columns' nodes.
    fn batch(&mut self, message: &Message, block: IpcBlock) -> std::result::Result<(), String> {
        let batch = message
            .header_as_record_batch()
            .ok_or("a record batch block holds another message")?;
        let rows = u64::try_from(batch.length())
            .map_err(|_| format!("a record batch claims {} rows", batch.length()))?;
        if let Some(nodes) = batch.nodes() {
            for (&(first, ref ty), seen) in self.types.iter().zip(&mut self.first_null) {
                let Some(ty) = ty else { continue };
                if seen.is_some() {
                    continue;
                }
                // The column's own node, then one for each FixedSizeList level.
                let nulls: i64 = (first..first.saturating_add(1 + ty.lists.len()))
                    .filter(|&k| k < nodes.len())
                    .map(|k| nodes.get(k).null_count().max(0))
                    .fold(0i64, i64::saturating_add);
                if nulls > 0 {
                    *seen = Some((self.groups.len(), nulls));
                }
            }
        }
        self.blocks.push(block);
        self.groups.push(rows);
        Ok(())
    }
}

/// Reads the length prefix of the message at `pos` (before `end`): the prefix's length (8 with
/// the continuation marker, 4 without) and the metadata's (0: the end of the stream).
fn message_len(
    read: &dyn Fn(&mut [u8], u64) -> Result<()>,
    pos: u64,
    end: u64,
) -> Result<std::result::Result<(u64, u64), String>> {
    let left = end.saturating_sub(pos);
    let mut word = [0u8; 4];
    if left < 4 {
        return Ok(Err("it ends inside a message's length".into()));
    }
    read(&mut word, pos)?;
    let mut prefix = 4u64;
    if word == CONTINUATION {
        if left < 8 {
            return Ok(Err("it ends inside a message's length".into()));
        }
        read(&mut word, pos + 4)?;
        prefix = 8;
    }
    let meta_len = i32::from_le_bytes(word);
    Ok(u64::try_from(meta_len)
        .ok()
        .filter(|&m| m <= MAX_METADATA && m <= left - prefix)
        .map(|m| (prefix, m))
        .ok_or_else(|| format!("a message claims {meta_len} bytes of metadata")))
}

/// The tensors of the Arrow IPC file or stream at `path`, one per column (only those `columns`
/// names, when it names any), named by column (`prefix`: the input's `NAME=`).
///
/// A file is read through its footer (its schema, and where each record batch is), a stream
/// message by message; each record batch's metadata is read and its body's length checked
/// against the file, its body left alone.
///
/// # Errors
/// [`Error::Arrow`]: a Feather v1 file, a footer or message arrow-rs's verifier refuses, a
/// length or offset that runs past the file, no schema, a column that makes no tensor or holds
/// nulls (named with its record batch); as [`plan_table`].
pub(crate) fn plan_ipc(
    path: &Path,
    prefix: Option<&str>,
    input_dtype: &DtypeRules,
    columns: &[String],
) -> Result<Vec<PlannedTensor>> {
    let bad = |reason: String| Error::Arrow {
        path: path.to_path_buf(),
        column: None,
        reason,
    };
    let (file, file_len) = open_input(path)?;
    let read = |buf: &mut [u8], at: u64| -> Result<()> {
        pread_exact(&file, buf, at).map_err(Error::io("cannot read", path))
    };
    let mut head = [0u8; 8];
    let n = usize::try_from(file_len.min(8)).unwrap_or(8);
    read(&mut head[..n], 0)?;
    if head.starts_with(b"FEA1") {
        return Err(bad(
            "a Feather version 1 file, which is not Arrow IPC: write it again as Feather version 2 (pyarrow: feather.write_feather(table, path), the default)".into(),
        ));
    }
    if !head.starts_with(MAGIC) && !head.starts_with(&CONTINUATION) {
        // Neither format's start (short of the legacy stream format of Arrow before 0.15, which
        // starts with a bare length): say what the file is when its first bytes tell.
        if let Some(kind) = mmtensor_format::looks_like(&head[..n]) {
            return Err(bad(format!(
                "not an Arrow IPC file or stream: it looks like {kind}"
            )));
        }
    }
    let mut found = Messages::default();
    if head.starts_with(MAGIC) {
        read_file(&read, file_len, &mut found).map_err(bad)?;
    } else {
        read_stream(&read, file_len, &mut found)?.map_err(bad)?;
    }
    let Messages {
        schema,
        first_null,
        blocks,
        groups,
        ..
    } = found;
    let Some((schema, version)) = schema else {
        return Err(bad(
            "not an Arrow IPC file or stream: it holds no schema message".into(),
        ));
    };
    let table = Arc::new(Table {
        path: path.to_path_buf(),
        schema: Arc::new(schema),
        groups,
        decoder: Decoder::Ipc { version, blocks },
    });
    let batches = table.clone();
    let nulls = move |i: usize, _: &ColumnType| -> Option<String> {
        let (g, n) = first_null.get(i).copied().flatten()?;
        Some(nulls_refused(n.unsigned_abs(), &batches.group(g)))
    };
    plan_table(table, prefix, input_dtype, columns, &nulls)
}

/// Reads an IPC file (`ARROW1`, padding, messages, footer, its length, `ARROW1`) through its
/// footer: the schema, then each record batch block's metadata, every offset and length checked
/// against the file first. (Writers pad the leading magic to their alignment, so the messages
/// are found through the footer, as the format intends, not by walking from the magic.)
fn read_file(
    read: &dyn Fn(&mut [u8], u64) -> Result<()>,
    file_len: u64,
    found: &mut Messages,
) -> std::result::Result<(), String> {
    let io = |e: Error| e.to_string();
    let damaged = |what: String| format!("{what}: the file is damaged");
    if file_len < 8 + 10 {
        return Err(format!(
            "an Arrow IPC file of {file_len} bytes, too short for its magic and footer: truncated?"
        ));
    }
    let mut tail = [0u8; 10];
    read(&mut tail, file_len - 10).map_err(io)?;
    if &tail[4..] != MAGIC {
        return Err("an Arrow IPC file that does not end with ARROW1: truncated?".into());
    }
    let footer_len = i32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let footer_start = u64::try_from(footer_len)
        .ok()
        .filter(|&f| f <= MAX_METADATA)
        .and_then(|f| (file_len - 10).checked_sub(f))
        .filter(|&start| start >= 8)
        .ok_or_else(|| {
            damaged(format!(
                "the footer claims {footer_len} bytes, more than the file holds"
            ))
        })?;
    let mut footer = vec![0u8; (file_len - 10 - footer_start) as usize];
    read(&mut footer, footer_start).map_err(io)?;
    let footer = arrow_ipc::root_as_footer(&footer)
        .map_err(|e| damaged(format!("arrow-rs cannot read the footer ({e})")))?;
    let fb = footer
        .schema()
        .ok_or_else(|| damaged("the footer holds no schema".into()))?;
    let schema = try_fb_to_schema(fb)
        .map_err(|e| damaged(format!("arrow-rs cannot read the schema ({e})")))?;
    found.schema(schema, footer.version());
    let Some(batches) = footer.recordBatches() else {
        return Ok(());
    };
    for (g, block) in batches.iter().enumerate() {
        let (offset, meta_len, body) = (block.offset(), block.metaDataLength(), block.bodyLength());
        let claim = || {
            damaged(format!(
                "record batch {g} claims {meta_len} bytes of metadata and {body} of data at byte {offset}, past the messages' end at byte {footer_start}"
            ))
        };
        let (Ok(at), Ok(meta), Ok(body)) = (
            u64::try_from(offset),
            u64::try_from(meta_len),
            u64::try_from(body),
        ) else {
            return Err(claim());
        };
        let end = at.checked_add(meta).and_then(|e| e.checked_add(body));
        if !(8..=MAX_METADATA).contains(&meta) || end.is_none_or(|e| e > footer_start) {
            return Err(claim());
        }
        let (prefix, inner) = match message_len(read, at, at + meta).map_err(io)? {
            Ok(lens) => lens,
            Err(what) => return Err(damaged(format!("record batch {g}: {what}"))),
        };
        let mut bytes = vec![0u8; inner as usize];
        read(&mut bytes, at + prefix).map_err(io)?;
        let message = arrow_ipc::root_as_message(&bytes)
            .map_err(|e| damaged(format!("arrow-rs cannot read record batch {g} ({e})")))?;
        if u64::try_from(message.bodyLength()) != Ok(body) {
            return Err(damaged(format!(
                "record batch {g}'s message and the footer disagree on its length"
            )));
        }
        found
            .batch(
                &message,
                IpcBlock {
                    offset: at,
                    // At most MAX_METADATA, far below 2^31.
                    meta_len: meta as u32,
                    body_len: body,
                },
            )
            .map_err(|what| damaged(format!("record batch {g}: {what}")))?;
    }
    Ok(())
}

/// Reads an IPC stream message by message: a length prefix, the metadata (checked by arrow-rs's
/// verifier), a body whose length is checked against the file and skipped; up to the
/// end-of-stream marker or the end of the file.
fn read_stream(
    read: &dyn Fn(&mut [u8], u64) -> Result<()>,
    end: u64,
    found: &mut Messages,
) -> Result<std::result::Result<(), String>> {
    let mut pos = 0u64;
    while pos < end {
        let damaged =
            |what: String| format!("{what} (the message at byte {pos}): the file is damaged");
        let (prefix, meta_len) = match message_len(read, pos, end)? {
            Ok((_, 0)) => break,
            Ok(lens) => lens,
            Err(what) => return Ok(Err(damaged(what))),
        };
        let mut meta = vec![0u8; meta_len as usize];
        read(&mut meta, pos + prefix)?;
        let message = match arrow_ipc::root_as_message(&meta) {
            Ok(m) => m,
            Err(e) => {
                return Ok(Err(damaged(format!(
                    "arrow-rs cannot read a message ({e})"
                ))))
            }
        };
        let body = message.bodyLength();
        let Some(body) = u64::try_from(body)
            .ok()
            .filter(|&b| b <= end - pos - prefix - meta_len)
        else {
            return Ok(Err(damaged(format!(
                "a message claims a body of {body} bytes, past the end of the file"
            ))));
        };
        match message.header_type() {
            MessageHeader::Schema if found.schema.is_some() => {
                return Ok(Err(damaged("a second schema".into())));
            }
            MessageHeader::Schema => {
                let Some(fb) = message.header_as_schema() else {
                    return Ok(Err(damaged("a schema message without a schema".into())));
                };
                match try_fb_to_schema(fb) {
                    Ok(schema) => found.schema(schema, message.version()),
                    Err(e) => {
                        return Ok(Err(damaged(format!(
                            "arrow-rs cannot read the schema ({e})"
                        ))))
                    }
                }
            }
            MessageHeader::RecordBatch if found.schema.is_none() => {
                return Ok(Err(damaged("a record batch before the schema".into())));
            }
            MessageHeader::RecordBatch => {
                let block = IpcBlock {
                    offset: pos,
                    // At most 8 + MAX_METADATA, far below 2^31.
                    meta_len: (prefix + meta_len) as u32,
                    body_len: body,
                };
                if let Err(what) = found.batch(&message, block) {
                    return Ok(Err(damaged(what)));
                }
            }
            // A dictionary batch serves only dictionary-encoded columns, which make no tensor;
            // other messages (tensors, sparse tensors) are not part of a table.
            _ => {}
        }
        pos += prefix + meta_len + body;
    }
    Ok(Ok(()))
}
