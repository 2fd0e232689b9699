//! `mmt convert` of token streams: a Megatron indexed dataset (`PREFIX.idx`) or a flat token file
//! (`--raw-dtype`, `--eot`, `--row-tokens`) into a dataset with a ragged `tokens` column, through
//! `mmtensor_convert::tokens`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use mmtensor_convert::tokens::{import_tokens, TokenSource, DEFAULT_ROW_TOKENS};
use mmtensor_convert::{ConvertOptions, DEFAULT_SHARD_SIZE};
use mmtensor_format::Dtype;

use crate::write::{ctrl_c_cancels, write_dataset};

/// How `mmt convert` reads a token stream.
#[derive(clap::Args, Debug, Default)]
pub(crate) struct TokenArgs {
    /// The input is a raw file of little-endian token ids of this dtype (nanoGPT's train.bin:
    /// u16); it becomes a dataset with a ragged `tokens` column
    #[arg(long, value_name = "DT")]
    raw_dtype: Option<String>,
    /// Split the token stream into documents (rows) after each token of this id (the
    /// end-of-text token, e.g. 50256 for GPT-2)
    #[arg(long, value_name = "ID")]
    eot: Option<u64>,
    /// Without --eot, rows of at most N tokens (the stream has no documents to keep; default
    /// 1048576)
    #[arg(long, value_name = "N")]
    row_tokens: Option<u64>,
}

impl TokenArgs {
    /// Whether these flags ask for a token import.
    fn given(&self) -> bool {
        self.raw_dtype.is_some() || self.eot.is_some() || self.row_tokens.is_some()
    }
}

/// The token source `inputs` and `args` describe, or `None` for an ordinary conversion: a single
/// `.idx` input is a Megatron indexed dataset; the token flags make a single input a flat stream.
pub(crate) fn source(inputs: &[String], args: &TokenArgs) -> Result<Option<TokenSource>> {
    let megatron = inputs.len() == 1
        && Path::new(&inputs[0])
            .extension()
            .is_some_and(|e| e == "idx");
    if !megatron && !args.given() {
        return Ok(None);
    }
    let [input] = inputs else {
        bail!("a token stream is converted from one input (a Megatron PREFIX.idx, a raw .bin or a 1-D .npy), not {}", inputs.len());
    };
    let path = PathBuf::from(input);
    if megatron {
        if args.given() {
            bail!("--raw-dtype, --eot and --row-tokens are for flat token files; a Megatron index ({input}) says its dtype and documents itself");
        }
        return Ok(Some(TokenSource::Megatron { idx: path }));
    }
    let dtype =
        match &args.raw_dtype {
            Some(d) => Some(Dtype::parse_loose(d).with_context(|| {
                format!("--raw-dtype: unknown dtype `{d}` (u16, u32, i32, ...)")
            })?),
            None => None,
        };
    if dtype.is_none() && path.extension().is_none_or(|e| e != "npy") {
        bail!("{input}: a flat token file is a raw file (say its dtype with --raw-dtype) or a 1-D .npy");
    }
    if args.eot.is_some() && args.row_tokens.is_some() {
        bail!(
            "--row-tokens cuts a stream without documents; with --eot the rows are the documents"
        );
    }
    Ok(Some(TokenSource::Flat {
        path,
        dtype,
        eot: args.eot,
        row_tokens: args.row_tokens.unwrap_or(DEFAULT_ROW_TOKENS),
    }))
}

/// Appends `source`'s documents to the dataset folder `dir`.
pub(crate) fn append(
    source: &TokenSource,
    dir: &Path,
    shard_size: Option<u64>,
    options: &ConvertOptions,
    quiet: bool,
) -> Result<ExitCode> {
    let cancel = ctrl_c_cancels()?;
    write_dataset(quiet, false, &cancel, |progress| {
        mmtensor_convert::tokens::append_tokens(source, dir, shard_size, options, progress, &cancel)
    })
}

/// Imports `source` into the dataset folder `output`.
pub(crate) fn run(
    source: &TokenSource,
    output: &Path,
    shard_size: Option<u64>,
    options: &ConvertOptions,
    quiet: bool,
) -> Result<ExitCode> {
    if output.extension().is_some_and(|e| e == "mmt") {
        bail!(
            "{}: a token stream is written as a dataset folder (shards and a manifest); name a folder, not an .mmt file",
            output.display()
        );
    }
    let cancel = ctrl_c_cancels()?;
    write_dataset(quiet, false, &cancel, |progress| {
        import_tokens(
            source,
            output,
            shard_size.unwrap_or(DEFAULT_SHARD_SIZE),
            options,
            progress,
            &cancel,
        )
    })
}
